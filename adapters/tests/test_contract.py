"""Every shipped registry adapter satisfies the adapter contract (adapters/contract.py).

The Python form of Istio's compile-time ``var _ Instance = &Controller{}``: each kind is created
through its entry point, exactly as the hub creates it (no I/O), and checked against
:class:`RegistryAdapter` member by member, signatures included.
"""

from __future__ import annotations

import inspect
from importlib.metadata import entry_points
from typing import Any

import pytest

from meshfed.adapters.contract import AdapterContext, RegistryAdapter
from meshfed.adapters.workloads.server import WorkloadRegistration
from meshfed.registry.aggregate import AggregateRegistry

PARAMS: dict[str, dict[str, Any]] = {
    "static": {"paths": []},
    "consul": {"address": "127.0.0.1:1"},
    "eureka": {"servers": ["http://127.0.0.1:1/eureka"]},
    "kubernetes": {"kubeconfig": "/nonexistent/kubeconfig"},
}


def _check(adapter: object) -> None:
    assert isinstance(adapter, RegistryAdapter), f"{type(adapter).__name__} misses a member"
    for name in ("run", "stop"):
        method = getattr(adapter, name)
        assert inspect.iscoroutinefunction(method), f"{name} must be async"
        assert not inspect.signature(method).parameters, f"{name} takes no arguments"
    assert inspect.signature(adapter.describe).parameters == {}
    assert isinstance(type(adapter).synced, property) or hasattr(adapter, "synced")


def test_every_installed_kind_is_covered() -> None:
    installed = {ep.name for ep in entry_points(group="meshfed.registries")}
    assert installed == set(PARAMS)


@pytest.mark.parametrize("kind", sorted(PARAMS))
def test_each_registry_kind_satisfies_the_adapter_contract(kind: str) -> None:
    (ep,) = [e for e in entry_points(group="meshfed.registries") if e.name == kind]
    aggregate = AggregateRegistry()
    member = aggregate.add_member(f"my-{kind}", kind)
    context = AdapterContext(member, PARAMS[kind], "example.org", "mesh-system")
    adapter = ep.load()(context)
    _check(adapter)
    assert adapter.member is member
    assert adapter.synced is False  # nothing has been read yet
    assert isinstance(adapter.describe(), dict)


def test_the_kubernetes_adapter_takes_the_mesh_namespace_from_its_context() -> None:
    from meshfed.adapters.kubernetes.registry import create

    member = AggregateRegistry().add_member("k", "kubernetes")
    params = {"kubeconfig": "/nonexistent"}
    assert (
        create(AdapterContext(member, params, system_namespace="ops")).params.system_namespace
        == "ops"
    )
    explicit = {**params, "systemNamespace": "own"}
    assert create(AdapterContext(member, explicit)).params.system_namespace == "own"


async def test_the_workload_registration_satisfies_the_adapter_contract() -> None:
    """A push registry: its member comes with the hub it starts in, so check it started."""
    from meshfed.config import MeshConfig
    from meshfed.hub import Hub

    registration = WorkloadRegistration("/nonexistent/bundle.pem")
    hub = Hub(MeshConfig(monitoring_address="127.0.0.1:0"), [registration])
    await hub.start()
    try:
        _check(registration)
        assert registration.member is hub.aggregate.members[0]
        assert registration.synced is True
        assert isinstance(registration.describe(), dict)
        assert hub.supervisor.describe()["registry workloads"]["running"] is True
    finally:
        await hub.stop()
    assert hub.supervisor.describe()["registry workloads"]["running"] is False
