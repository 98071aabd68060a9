"""The demo's catalog printout, over the demo's own two registry files loaded for real."""

from __future__ import annotations

from pathlib import Path

from meshfed.adapters.static.registry import StaticRegistry
from meshfed.adapters.workloads.server import WorkloadRegistration
from meshfed.demo import APPS, JOINING_VM, _demo_ca, _join_vm, catalog_lines, demo_mesh_config
from meshfed.hub import Hub
from meshfed.registry.aggregate import AggregateRegistry
from meshfed.registryview import registry_view


def _demo_view() -> dict:
    aggregate = AggregateRegistry()
    for registry in demo_mesh_config().registries:
        member = aggregate.add_member(registry.name, registry.kind)
        static = StaticRegistry(
            member, [Path(p) for p in registry.params["paths"]], "cluster.local"
        )
        assert static.reload() == [], registry.name
    return registry_view(aggregate)


def test_the_demo_federates_two_registries_with_one_deliberate_conflict() -> None:
    lines = catalog_lines(_demo_view())
    assert lines[0] == "registries (first wins a conflict): vms (static), dc2 (static)"
    at = next(i for i, line in enumerate(lines) if "ratings.default.svc.cluster.local" in line)
    assert lines[at].endswith("from vms, dc2"), lines[at]
    assert sorted(line.split()[:2] for line in lines[at + 1 : at + 3]) == [
        ["127.0.0.13", "vms"],
        ["127.0.0.15", "dc2"],
    ]
    assert lines[at + 3].startswith("  ") and not lines[at + 3].startswith("    ")
    conflicts = [line for line in lines if line.startswith("conflict: ")]
    assert conflicts == [
        "conflict: mongodb.default.svc.cluster.local: port mongo is 27017/MONGO in vms but "
        "27017/TCP in dc2; vms wins by precedence"
    ]


def test_every_demo_app_is_an_endpoint_of_the_service_it_answers_for() -> None:
    view = _demo_view()
    endpoints = {
        (e["address"], s["hostname"].split(".")[0])
        for s in view["services"]
        for e in s["endpoints"]
    }
    assert {(app[1], app[2]) for app in APPS if app != JOINING_VM} <= endpoints


async def test_the_demo_vm_joins_through_signed_registration(tmp_path: Path) -> None:
    ca, bundle = _demo_ca(str(tmp_path))
    hub = Hub(demo_mesh_config(), [WorkloadRegistration(bundle)])
    await hub.start()
    try:
        await _join_vm(f"http://127.0.0.1:{hub.monitoring_port}", ca)
        lines = catalog_lines(registry_view(hub.aggregate))
    finally:
        await hub.stop()
    _, ip, service = JOINING_VM
    at = next(i for i, line in enumerate(lines) if f"{service}.default.svc" in line)
    assert lines[at].endswith("from vms, dc2, workloads"), lines[at]
    joined = [line.split() for line in lines[at + 1 : at + 4] if ip in line]
    assert joined == [[ip, "workloads", f"app={service},version=v3"]], lines


def test_an_unhealthy_endpoint_and_a_service_without_endpoints_are_said_so() -> None:
    view = {
        "members": [{"name": "a", "kind": "static"}],
        "services": [
            {
                "hostname": "x.example",
                "ports": [{"number": 80, "protocol": "HTTP"}],
                "registries": ["a"],
                "endpoints": [
                    {"address": "127.0.0.1", "registry": "a", "labels": {}, "healthy": False}
                ],
            },
            {"hostname": "y.example", "ports": [], "registries": ["a"], "endpoints": []},
        ],
        "conflicts": [],
    }
    assert catalog_lines(view)[1:] == [
        "  x.example  80/HTTP  from a",
        "    127.0.0.1       a            unhealthy",
        "  y.example    from a",
        "    (no endpoints)",
    ]
