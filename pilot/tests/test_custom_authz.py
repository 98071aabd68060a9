"""CUSTOM AuthorizationPolicies: parsed only with meshfed's ``mixer`` provider, translated to a
shadow RBAC filter and a gated, fail-closed ext_authz ahead of every other RBAC filter, one
Check per request with the Mixer data path, fail closed without a node-local client."""

from __future__ import annotations

import textwrap
from pathlib import Path

import attrs
import pytest
import yaml
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2 as http_authz
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from meshfed.pilot.config.authorization import MIXER_PROVIDER, AuthorizationPolicy
from meshfed.pilot.config.store import ConfigSnapshot, parse_config_file
from meshfed.pilot.custom_authz import CUSTOM_AUTHZ
from meshfed.pilot.mixer_plugin import (
    FAIL_OPEN_HEADER,
    HTTP_AUTHZ,
    QUOTAS_HEADER,
    MixerDataPath,
    MixerPlugin,
)
from meshfed.pilot.rbac_plugin import AuthorizationPlugin
from meshfed.security import rbac
from pilot.tests.test_mixer_plugin import WITH_CLIENT, manager_of
from pilot.tests.test_plugins import SIDECAR, WEB, cache_with, listeners

POLICIES = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: default}
spec:
  action: CUSTOM
  provider: {name: mixer}
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: everyone, namespace: default}
spec:
  action: ALLOW
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: nobody-secret, namespace: default}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/secret"]}}]}]
"""
INBOUND = "inbound|10.0.0.5:9080"
ON = MixerDataPath(enabled=True, quotas=("requestcount",))


def policies(tmp_path: Path, text: str = POLICIES) -> tuple[AuthorizationPolicy, ...]:
    path = tmp_path / "authz.yaml"
    path.write_text(textwrap.dedent(text))
    objects, errors = parse_config_file(path)
    assert errors == [] and objects is not None, errors
    return ConfigSnapshot.of(objects).authorization_policies


def inbound_manager(
    plugins: list, node: object = WITH_CLIENT
) -> tuple[hcm.HttpConnectionManager, list[str]]:
    view = cache_with(*plugins).view(node)  # type: ignore[arg-type]
    return manager_of(listeners(view)[INBOUND]), list(view.problems)


def unpack(manager: hcm.HttpConnectionManager, name: str, message: object) -> object:
    (found,) = [f for f in manager.http_filters if f.name == name]
    found.typed_config.Unpack(message)  # type: ignore[arg-type]
    return message


def test_custom_parses_with_the_mixer_provider(tmp_path: Path) -> None:
    ext = next(p for p in policies(tmp_path) if p.name == "ext")
    assert ext.action is rbac.Action.CUSTOM and ext.provider == MIXER_PROVIDER
    assert ext.rules == (rbac.Rule(operations=(rbac.Operation(paths=("/admin*",)),)),)


def test_custom_runs_first_marks_its_requests_and_checks_only_those(tmp_path: Path) -> None:
    manager, problems = inbound_manager([AuthorizationPlugin(policies(tmp_path))])
    assert problems == []
    assert [f.name for f in manager.http_filters] == [
        "envoy.filters.http.rbac.custom",
        CUSTOM_AUTHZ,
        "envoy.filters.http.rbac.deny",
        "envoy.filters.http.rbac.allow",
        "envoy.filters.http.router",
    ]
    shadow = unpack(manager, "envoy.filters.http.rbac.custom", rbac_filter.RBAC())
    assert isinstance(shadow, rbac_filter.RBAC)
    assert not shadow.HasField("rules")  # nothing enforced by the shadow filter
    assert list(shadow.shadow_rules.policies) == [f"{rbac.CUSTOM_POLICY_PREFIX}default/ext[0]"]
    assert 'prefix: "/admin"' in str(shadow.shadow_rules)
    assert shadow.shadow_rules_stat_prefix == rbac.CUSTOM_STAT_PREFIX
    authz = unpack(manager, CUSTOM_AUTHZ, http_authz.ExtAuthz())
    assert isinstance(authz, http_authz.ExtAuthz)
    assert authz.grpc_service.envoy_grpc.cluster_name == "mixer-client"
    assert not authz.failure_mode_allow and authz.status_on_error.code == 403
    gate = authz.filter_enabled_metadata
    assert gate.filter == "envoy.filters.http.rbac" and not gate.invert
    assert [s.key for s in gate.path] == [rbac.CUSTOM_MATCHED_KEY]
    assert gate.value.string_match.prefix == rbac.CUSTOM_POLICY_PREFIX
    meta = {h.key: h.value for h in authz.grpc_service.initial_metadata}
    assert meta == {FAIL_OPEN_HEADER: "false"}  # the data path is off: no quota to charge
    # The destination travels with the CUSTOM Check, as with the data path's.
    route = manager.route_config.virtual_hosts[0].routes[0]
    per = http_authz.ExtAuthzPerRoute()
    route.typed_per_filter_config[CUSTOM_AUTHZ].Unpack(per)
    assert dict(per.check_settings.context_extensions) == {"destination.service": WEB.hostname}
    # The non-CUSTOM policies are what they were without CUSTOM: CUSTOM is no ALLOW policy.
    allow = unpack(manager, "envoy.filters.http.rbac.allow", rbac_filter.RBAC())
    assert isinstance(allow, rbac_filter.RBAC)
    assert list(allow.rules.policies) == ["default/everyone[0]"]


def test_with_the_data_path_each_request_has_one_check(tmp_path: Path) -> None:
    found = policies(tmp_path)
    manager, _ = inbound_manager([AuthorizationPlugin(found, mixer=ON), MixerPlugin(ON)])
    names = [f.name for f in manager.http_filters]
    assert names.index(CUSTOM_AUTHZ) < names.index("envoy.filters.http.rbac.deny")
    assert names.index(HTTP_AUTHZ) > names.index("envoy.filters.http.rbac.allow")
    custom = unpack(manager, CUSTOM_AUTHZ, http_authz.ExtAuthz())
    data = unpack(manager, HTTP_AUTHZ, http_authz.ExtAuthz())
    assert isinstance(custom, http_authz.ExtAuthz) and isinstance(data, http_authz.ExtAuthz)
    # Complementary gates on the same mark: a request goes to exactly one of them.
    assert data.filter_enabled_metadata.invert and not custom.filter_enabled_metadata.invert
    data.filter_enabled_metadata.invert = False
    assert data.filter_enabled_metadata == custom.filter_enabled_metadata
    # The one Check charges the data path's quota whichever filter makes it.
    meta = {h.key: h.value for h in custom.grpc_service.initial_metadata}
    assert meta == {FAIL_OPEN_HEADER: "false", QUOTAS_HEADER: "requestcount"}
    # A destination the data path leaves out: CUSTOM still checks, without the quota.
    out = attrs.evolve(ON, disabled_services=frozenset({WEB.hostname}))
    manager, _ = inbound_manager([AuthorizationPlugin(found, mixer=out), MixerPlugin(out)])
    assert HTTP_AUTHZ not in [f.name for f in manager.http_filters]
    custom = unpack(manager, CUSTOM_AUTHZ, http_authz.ExtAuthz())
    assert isinstance(custom, http_authz.ExtAuthz)
    assert {h.key for h in custom.grpc_service.initial_metadata} == {FAIL_OPEN_HEADER}


def test_a_proxy_without_a_client_refuses_what_custom_matches_and_says_so(
    tmp_path: Path,
) -> None:
    manager, problems = inbound_manager([AuthorizationPlugin(policies(tmp_path))], SIDECAR)
    names = [f.name for f in manager.http_filters]
    assert CUSTOM_AUTHZ not in names and "mixer-client" not in str(manager)
    assert names[0] == "envoy.filters.http.rbac.custom-unreachable"
    deny = unpack(manager, names[0], rbac_filter.RBAC())
    assert isinstance(deny, rbac_filter.RBAC)
    assert deny.rules.action == deny.rules.DENY and list(deny.rules.policies) == ["default/ext[0]"]
    (problem,) = problems
    assert "CUSTOM" in problem and "default/ext" in problem and "--mixer" in problem


def test_without_custom_policies_nothing_changes(tmp_path: Path) -> None:
    plain = [p for p in policies(tmp_path) if p.action is not rbac.Action.CUSTOM]
    manager, problems = inbound_manager([AuthorizationPlugin(plain)], SIDECAR)
    assert problems == []
    assert [f.name for f in manager.http_filters][:2] == [
        "envoy.filters.http.rbac.deny",
        "envoy.filters.http.rbac.allow",
    ]
    assert rbac.custom_shadow_filter([]) is None and rbac.custom_deny_filter([]) is None


def test_the_plugin_version_moves_with_the_data_path_it_composes_with(tmp_path: Path) -> None:
    found = policies(tmp_path)
    assert AuthorizationPlugin(found).version() != AuthorizationPlugin(found, ON).version()
    assert AuthorizationPlugin((), ON).version() == ""


def _doc(spec: object) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "x", "namespace": "shop"},
            "spec": spec,
        }
    )


hostile = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(provider=hostile, action=st.sampled_from(["CUSTOM", "ALLOW", "DENY", "AUDIT", None]))
def test_hostile_providers_are_refused_by_name_never_crash(
    tmp_path_factory: object, provider: object, action: str | None
) -> None:
    spec: dict[str, object] = {"provider": provider, "rules": [{}]}
    if action is not None:
        spec["action"] = action
    good = action == "CUSTOM" and provider == {"name": MIXER_PROVIDER}
    folder = tmp_path_factory.mktemp("h")  # type: ignore[attr-defined]
    path = folder / "authz.yaml"
    path.write_text(_doc(spec))
    objects, errors = parse_config_file(path)
    if good:
        assert errors == []
        return
    assert objects is None
    lines = [str(e) for e in errors]
    assert any(
        line.startswith(f"{path}: AuthorizationPolicy shop/x: spec.provider") for line in lines
    ), lines
    assert all("Traceback" not in line and len(line) < 2000 for line in lines)


def test_mesh_config_extension_providers_are_refused_by_name(tmp_path: Path) -> None:
    from meshfed.config import load_mesh_config
    from meshfed.core.resources import ConfigErrors

    path = tmp_path / "mesh.yaml"
    path.write_text(
        "apiVersion: meshfed.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec:\n"
        "  extensionProviders:\n  - {name: opa, envoyExtAuthzGrpc: {service: opa, port: 9191}}\n"
    )
    try:
        load_mesh_config(path)
    except ConfigErrors as exc:
        lines = [str(e) for e in exc.errors]
    else:
        raise AssertionError("extensionProviders was accepted")
    assert any("spec.extensionProviders" in line and "'mixer'" in line for line in lines), lines


def test_the_hub_gives_custom_and_the_data_path_the_same_settings() -> None:
    from meshfed.config import MeshConfig
    from meshfed.hub import default_components
    from meshfed.mixer.settings import DataPathSettings, MixerSettings
    from meshfed.pilot.server import PilotServer

    mesh = MeshConfig(
        mixer=MixerSettings(enabled=True, data_path=DataPathSettings(quotas=("requestcount",)))
    )
    pilot = next(c for c in default_components(mesh) if isinstance(c, PilotServer))
    assert pilot.plugins is not None
    authz = next(p for p in pilot.plugins if isinstance(p, AuthorizationPlugin))
    mixer = next(p for p in pilot.plugins if isinstance(p, MixerPlugin))
    assert authz.mixer == mixer.config and authz.mixer.quotas == ("requestcount",)


def test_validate_warns_of_custom_in_a_mesh_without_mixer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from meshfed.cli import main

    mesh = tmp_path / "mesh.yaml"
    head = "apiVersion: meshfed.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec:\n"
    mesh.write_text(head + "  configPaths: [.]\n")
    policy = tmp_path / "authz.yaml"
    policy.write_text(textwrap.dedent(POLICIES))
    assert main(["validate", "--config", str(mesh), str(policy)]) == 0
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("warning:")]
    assert "AuthorizationPolicy default/ext" in line and "spec.mixer.enabled" in line
    mesh.write_text(head + "  mixer: {enabled: true, listen: '127.0.0.1:9091'}\n")
    assert main(["validate", "--config", str(mesh), str(policy)]) == 0
    assert "warning:" not in capsys.readouterr().err
