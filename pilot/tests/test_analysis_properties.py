"""Properties of the cross-resource checks over generated configs and catalogs."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from meshfed.core.resources import load_bytes
from meshfed.pilot.analysis import SEVERITIES, Catalog, analyze
from meshfed.pilot.config.model import RouteRule, ServiceRef, WeightedDestination
from meshfed.pilot.config.store import ConfigSnapshot
from meshfed.registry import Endpoint, Port, Service

NAMES = st.sampled_from(["a", "b", "c", "d"])
VERSIONS = st.sampled_from(["v1", "v2", "v3"])


def host(name: str) -> str:
    return f"{name}.default.svc.cluster.local"


@st.composite
def worlds(draw: st.DrawFn) -> tuple[ConfigSnapshot, Catalog, set[str]]:
    present = draw(st.sets(NAMES))
    services = [Service(host(n), ports=[Port(80, "http")]) for n in sorted(present)]
    endpoints = {
        host(n): [Endpoint(f"127.0.0.{i + 2}", labels={"version": v}, registry="r")
                  for i, v in enumerate(draw(st.lists(VERSIONS, max_size=3)))]
        for n in present
    }  # fmt: skip
    rules = [
        RouteRule(
            f"r{i}",
            "default",
            "f.yaml",
            ServiceRef(name=draw(NAMES)),
            precedence=i,
            route=tuple(
                WeightedDestination({"version": v}) for v in draw(st.lists(VERSIONS, max_size=2))
            ),
        )
        for i in range(draw(st.integers(0, 5)))
    ]
    return ConfigSnapshot.of(rules), Catalog.of(services, endpoints), present


@settings(max_examples=200, deadline=None)
@given(worlds())
def test_findings_are_well_formed_and_name_only_what_is_wrong(world) -> None:
    snapshot, catalog, present = world
    findings = analyze(snapshot, catalog)
    assert all(f.severity in SEVERITIES and f.object and f.code.startswith("MF") for f in findings)
    assert [SEVERITIES.index(f.severity) for f in findings] == sorted(
        SEVERITIES.index(f.severity) for f in findings
    )
    for rule in snapshot.route_rules:
        unknown = ("MF0101", rule.ref) in {(f.code, f.object) for f in findings}
        assert unknown == (rule.destination.name not in present)
        for dest in rule.route:
            carried = any(
                e.labels.matches(dest.labels)
                for e in catalog.endpoints.get(host(rule.destination.name), ())
            )
            wanted = f"version={dict(dest.labels)['version']} "
            empty = any(
                f.code == "MF0103" and f.object == rule.ref and wanted in f.message
                for f in findings
            )
            if rule.destination.name in present:
                assert empty == (not carried), (rule, findings)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_give_findings_or_errors_never_an_exception(data: bytes) -> None:
    from meshfed.cli_analyze import analyze_documents

    docs, _ = load_bytes("x.yaml", data)
    findings, _ = analyze_documents(docs)
    assert isinstance(findings, list)


@settings(max_examples=300, deadline=None)
@given(
    st.sets(st.tuples(st.sampled_from(["a", "b", "a-b"]),
                      st.sampled_from(["default.svc.cluster.local", "service.consul", "x"]),
                      st.sampled_from(["default", "other"]))),
    st.builds(ServiceRef, name=st.sampled_from(["", "a", "b", "A", "c"]),
              namespace=st.sampled_from(["", "default", "other"]),
              service=st.sampled_from(["", "a.service.consul", "b.x"])),
    st.sampled_from(["default", "other"]),
)  # fmt: skip
def test_indexed_resolution_answers_as_service_ref_resolve(services, ref, namespace) -> None:
    from meshfed.pilot.analysis import _Resolver

    catalog = [Service(f"{n}.{d}", namespace=ns, ports=[Port(80, "http")]) for n, d, ns in services]
    assert _Resolver(Catalog.of(catalog, {})).host(ref, namespace) == ref.resolve(
        catalog, namespace
    )
