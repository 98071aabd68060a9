"""``meshfed analyze`` on a corpus of wrong configs: each finding's code, severity and object."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from meshfed.cli import main
from meshfed.cli_analyze import analyze_documents
from meshfed.core.resources import load_bytes
from meshfed.pilot.analysis import Catalog, analyze
from meshfed.pilot.config.store import ConfigSnapshot
from meshfed.registry import AggregateRegistry, Endpoint, Port, Service

SERVICES = """
apiVersion: networking.meshfed.io/v1alpha1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints:
    - {address: 127.0.0.11, ports: {http: 9080}, labels: {version: v1}}
    - {address: 127.0.0.12, ports: {http: 9080}, labels: {version: v2}}
---
apiVersion: networking.meshfed.io/v1alpha1
kind: ServiceEntry
metadata: {name: ratings, namespace: default}
spec:
  hosts: [ratings.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.13, ports: {http: 9080}}]
"""

GOOD = """
apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {name: reviews-v2, namespace: default}
spec:
  destination: {name: reviews}
  route: [{labels: {version: v2}}]
"""

CORPUS = {
    # a rule for a service no registry has
    "unknown-service": ("""
apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {name: to-nowhere, namespace: default}
spec:
  destination: {name: nowhere}
  route: [{labels: {version: v1}}]
""", "MF0101", "error", "RouteRule default/to-nowhere"),
    # a VirtualService subset that no DestinationRule defines
    "unknown-subset": ("""
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subset: v9}}]}]
""", "MF0102", "error", "VirtualService default/reviews.http[0]"),
    # a subset whose labels no endpoint carries
    "empty-subset": ("""
apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {name: reviews-v3, namespace: default}
spec:
  precedence: 3
  destination: {name: reviews}
  route: [{labels: {version: v3}}]
""", "MF0103", "warning", "RouteRule default/reviews-v3"),
    "empty-policy-subset": ("""
apiVersion: config.istio.io/v1alpha2
kind: DestinationPolicy
metadata: {name: reviews-v4, namespace: default}
spec:
  destination: {name: reviews, labels: {version: v4}}
  loadBalancing: {name: RANDOM}
""", "MF0103", "warning", "DestinationPolicy default/reviews-v4"),
    # a mirror naming a service that does not exist
    "unresolved-mirror": ("""
apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {name: mirrored, namespace: default}
spec:
  precedence: 2
  destination: {name: reviews}
  route: [{labels: {version: v1}}]
  mirror: {name: shadow}
""", "MF0106", "error", "RouteRule default/mirrored"),
    # a gateway whose only backend does not exist
    "gateway-no-route": ("""
apiVersion: config.meshfed.io/v1alpha1
kind: Gateway
metadata: {name: front, namespace: default}
spec:
  rules:
  - host: shop.example.com
    http:
      paths: [{path: /, backend: {serviceName: cart, servicePort: 80}}]
""", "MF0105", "error", "Gateway default/front"),
    # two rules, one destination, one precedence
    "rule-conflict": (GOOD.replace("reviews-v2", "reviews-v2-again"), "MF0107", "warning",
                      "RouteRule default/reviews-v2-again"),
    # not even a rule: a parse error is a finding too
    "bad-field": ("""
apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {name: bad, namespace: default}
spec: {destination: {name: reviews}, bogus: 1}
""", None, None, None),
}  # fmt: skip


def findings(*texts: str) -> list[tuple[str, str, str]]:
    docs = []
    for n, text in enumerate(texts):
        found, errors = load_bytes(f"f{n}.yaml", text)
        assert errors == []
        docs += found
    result, _ = analyze_documents(docs)
    return [(f.code, f.severity, f.object) for f in result]


def test_a_good_config_has_no_findings() -> None:
    assert findings(SERVICES, GOOD) == []


@pytest.mark.parametrize("case", [c for c in CORPUS if CORPUS[c][1]])
def test_each_wrong_config_is_found_with_its_code_and_object(case: str) -> None:
    text, code, severity, obj = CORPUS[case]
    got = findings(SERVICES, GOOD, text)
    assert (code, severity, obj) in got, got
    # nothing is reported about the good rule beside it, except the conflict it is part of
    others = [f for f in got if f[2] == "RouteRule default/reviews-v2"]
    expected = {"rule-conflict": [], "unknown-subset": [("MF0108", "info")]}.get(case, [])
    assert [f[:2] for f in others] == expected or case == "rule-conflict", got


def test_gateway_backend_and_gateway_are_both_named() -> None:
    got = findings(SERVICES, CORPUS["gateway-no-route"][0])
    assert ("MF0106", "error", "Gateway default/front") in got
    partly = CORPUS["gateway-no-route"][0].replace(
        "paths: [{path: /, backend: {serviceName: cart, servicePort: 80}}]",
        "paths: [{path: /, backend: {serviceName: cart, servicePort: 80}},"
        " {path: /r, backend: {serviceName: ratings, servicePort: 9080}}]",
    )
    assert [c for c, _, _ in findings(SERVICES, partly)] == ["MF0106"]  # one route still works


def test_overlapping_hosts_across_registries_from_a_live_aggregate() -> None:
    aggregate = AggregateRegistry()
    host = "reviews.default.svc.cluster.local"
    aggregate.add_member("consul").put_service(
        Service(host, ports=[Port(9080, "http")]), [Endpoint("127.0.0.11")]
    )
    aggregate.add_member("vms").put_service(
        Service(host, ports=[Port(9081, "http")]), [Endpoint("127.0.0.12")]
    )
    aggregate.add_member("eureka").put_service(
        Service("other.default.svc.cluster.local", ports=[Port(80, "http")]), []
    )
    (finding,) = analyze(ConfigSnapshot(), Catalog.of_aggregate(aggregate))
    assert (finding.code, finding.severity, finding.object) == ("MF0104", "warning", f"host {host}")
    assert "consul, vms" in finding.message and "disagree" in finding.message


def run(argv: list[str], stdin: str = "", capsys: pytest.CaptureFixture[str] | None = None):
    old = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin.encode()))
    try:
        return main(argv)
    finally:
        sys.stdin = old


def test_cli_files_folders_stdin_and_exit_codes(tmp_path: Path, capsys) -> None:
    (tmp_path / "services.yaml").write_text(SERVICES)
    (tmp_path / "rules.yaml").write_text(GOOD)
    (tmp_path / "notes.log").write_text("not config")
    assert run(["analyze", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == "no problems found"

    # warnings only: exit 0, the table names code, severity and object
    assert run(["analyze", str(tmp_path), "-"], CORPUS["empty-subset"][0]) == 0
    out = capsys.readouterr().out
    header, row = out.splitlines()[:2]
    assert header.split()[:3] == ["CODE", "SEVERITY", "OBJECT"]
    assert row.split()[:4] == ["MF0103", "WARNING", "RouteRule", "default/reviews-v3"], out
    assert "<stdin>" in row

    (tmp_path / "bad.yaml").write_text(
        CORPUS["unknown-service"][0] + "---\n" + CORPUS["bad-field"][0]
    )
    assert run(["analyze", str(tmp_path), "-o", "json"]) == 1
    body = json.loads(capsys.readouterr().out)
    codes = {(f["code"], f["object"], f["file"]) for f in body["findings"]}
    bad = str(tmp_path / "bad.yaml")
    assert ("MF0101", "RouteRule default/to-nowhere", bad) in codes, codes
    assert ("MF0001", "RouteRule default/bad", bad) in codes, codes

    assert run(["analyze", str(tmp_path / "missing.yaml")]) == 1
    assert "no such file" in capsys.readouterr().out
