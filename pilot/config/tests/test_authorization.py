"""AuthorizationPolicy: parsed into rules, refused naming the field, selected per workload,
and turned into RBAC filters in the order that makes DENY beat ALLOW."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter
from google.protobuf import json_format

from meshfed.pilot.config.store import ConfigSnapshot, parse_config_file
from meshfed.registry.model import Labels
from meshfed.security import rbac

DOCS = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: [cluster.local/ns/default/sa/client]}
    - source: {namespaces: [ops], ipBlocks: [127.0.0.0/8]}
    to:
    - operation: {methods: [GET], paths: ["/api/*"]}
    when:
    - {key: "request.headers[x-tenant]", values: [blue]}
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: admin, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/api/admin*"], notPorts: ["9090"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit, namespace: istio-system}
spec:
  action: AUDIT
  rules: [{}]
"""


def load(tmp_path: Path, text: str) -> tuple[Path, ConfigSnapshot | None, list[str]]:
    path = tmp_path / "authz.yaml"
    path.write_text(textwrap.dedent(text))
    objects, errors = parse_config_file(path)
    return path, None if objects is None else ConfigSnapshot.of(objects), [str(e) for e in errors]


def test_policies_parse_and_select_workloads(tmp_path: Path) -> None:
    _, snap, errors = load(tmp_path, DOCS)
    assert errors == [] and snap is not None
    admin, api, audit = sorted(snap.authorization_policies, key=lambda p: p.name)
    assert api.action is rbac.Action.ALLOW and admin.action is rbac.Action.DENY
    (rule,) = api.rules
    assert rule.sources[0].principals == ("cluster.local/ns/default/sa/client",)
    assert rule.sources[1] == rbac.Source(namespaces=("ops",), ip_blocks=("127.0.0.0/8",))
    assert rule.operations == (rbac.Operation(methods=("GET",), paths=("/api/*",)),)
    assert rule.conditions == (rbac.Condition("request.headers[x-tenant]", ("blue",)),)
    web, other = Labels({"app": "web"}), Labels({"app": "db"})
    assert api.applies_to("shop", web) and not api.applies_to("shop", other)
    assert not api.applies_to("default", web)
    assert admin.applies_to("shop", other) and not admin.applies_to("default", other)
    assert audit.applies_to("anything", other)  # root namespace: mesh-wide


def test_filters_run_audit_then_deny_then_allow(tmp_path: Path) -> None:
    _, snap, _ = load(tmp_path, DOCS)
    assert snap is not None
    policies = [rbac.Policy(p.name, p.action, p.rules) for p in snap.authorization_policies]
    filters = rbac.http_filters(policies)
    assert [f.name for f in filters] == [
        "envoy.filters.http.rbac.audit",
        "envoy.filters.http.rbac.deny",
        "envoy.filters.http.rbac.allow",
    ]
    allow = rbac_filter.RBAC()
    filters[2].typed_config.Unpack(allow)
    as_json = json_format.MessageToDict(allow)
    assert list(as_json["rules"]["policies"]) == ["api[0]"]
    text = str(allow)
    assert "spiffe://cluster.local/ns/default/sa/client" in text
    assert "^spiffe://[^/]+/ns/ops/sa/[^/]+$" in text
    assert 'prefix: "/api/"' in text and "x-tenant" in text
    # An ALLOW policy without rules allows nothing: an ALLOW filter with no policies.
    (empty,) = rbac.http_filters([rbac.Policy("none", rbac.Action.ALLOW, ())])
    config = rbac_filter.RBAC()
    empty.typed_config.Unpack(config)
    assert config.rules.action == config.rules.ALLOW and not config.rules.policies
    assert rbac.http_filters([]) == []


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ("{action: CUSTOM, provider: {name: x}}", "spec.provider.name"),
        ("{action: CUSTOM, provider: {name: mixer, port: 9}}", "spec.provider.port"),
        ("{action: CUSTOM, provider: mixer}", "spec.provider"),
        ("{action: CUSTOM}", "spec.provider"),
        ("{action: DENY, provider: {name: mixer}}", "spec.provider"),
        ("{action: PERMIT}", "spec.action"),
        ("{rules: [{from: [{source: {requestPrincipals: ['*']}}]}]}", "spec.rules[0].from[0]"),
        ("{rules: [{from: [{source: {ipBlocks: [300.1.1.1]}}]}]}", "spec.rules[0].from[0]"),
        ("{rules: [{to: [{operation: {ports: ['http']}}]}]}", "spec.rules[0].to[0].operation"),
        ("{rules: [{to: [{operation: {verbs: [GET]}}]}]}", "spec.rules[0].to[0].operation.verbs"),
        ("{rules: [{when: [{key: 'request.auth.claims[iss]', values: [x]}]}]}", "spec.rules[0]"),
        ("{rules: [{when: [{key: source.ip}]}]}", "spec.rules[0].when[0].values"),
        ("{selector: {labels: {app: a}}}", "spec.selector.labels"),
    ],
)
def test_unimplemented_or_bad_fields_are_refused_by_name(
    tmp_path: Path, spec: str, field: str
) -> None:
    text = (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: x, namespace: shop}}\nspec: {spec}\n"
    )
    path, snap, errors = load(tmp_path, text)
    assert snap is None
    assert any(e.startswith(f"{path}: AuthorizationPolicy shop/x: {field}") for e in errors), errors
