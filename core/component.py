"""The hub's component contract: what a part of the control plane gets and must offer.

Why here: Pilot, the workload registration, the Kubernetes config stores and Mixer all run
inside the hub, but none of them may import the hub (``meshfed`` is the composition root, above
every layer). They program against these Protocols; the hub implements :class:`HubContext`.

A component's life (driven by the hub through :mod:`core.lifecycle`): constructed by the
composition root, ``start(hub)`` after the registry adapters (bind ports, spawn background work
with ``hub.supervisor``), ``routes()`` and ``not_ready()`` read by the monitoring server,
``stop()`` in reverse order of start -- also when its own start or a later component's failed,
so ``stop`` must tolerate a half-done start. A component that owns config stores declares them
with ``config_stores_for(topic)`` (:class:`ProvidesConfig`); consumers find them through
``hub.config_stores(topic)``, never by probing attributes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from aiohttp import web
from prometheus_client import CollectorRegistry

from meshfed.core.configstore import ConfigStore
from meshfed.core.supervisor import Supervisor
from meshfed.registry.aggregate import AggregateRegistry


class MeshSettings(Protocol):
    """The mesh config as components read it (the root's ``MeshConfig`` satisfies it)."""

    @property
    def source(self) -> str: ...

    @property
    def trust_domain(self) -> str: ...

    @property
    def system_namespace(self) -> str: ...

    @property
    def discovery_address(self) -> str: ...

    @property
    def monitoring_address(self) -> str: ...

    @property
    def config_paths(self) -> Sequence[str]: ...

    @property
    def initial_sync_timeout(self) -> float:
        """Seconds after start a part may hold readiness waiting for its first sync (0: no
        limit); after that the hub serves without it."""
        ...

    @property
    def pilot(self) -> Mapping[str, Any]: ...


class HubContext(Protocol):
    """What the hub hands each component at start."""

    @property
    def mesh(self) -> MeshSettings: ...

    @property
    def aggregate(self) -> AggregateRegistry: ...

    @property
    def supervisor(self) -> Supervisor:
        """Where components run their long-lived tasks (restarted on failure, visible)."""
        ...

    @property
    def metrics(self) -> CollectorRegistry:
        """The hub's own collector registry (scraped with the process-wide one)."""
        ...

    def config_stores(self, topic: str) -> Sequence[ConfigStore[Any]]:
        """Every config store of ``topic`` that a component declares."""
        ...


@runtime_checkable
class HubComponent(Protocol):
    """A part of the control plane that runs inside the hub."""

    async def start(self, hub: HubContext) -> None: ...

    async def stop(self) -> None: ...

    def routes(self) -> list[web.RouteDef]: ...

    def not_ready(self) -> list[str]: ...


@runtime_checkable
class ProvidesConfig(Protocol):
    """A component owning config stores; it runs them itself (under the hub's supervisor)."""

    def config_stores_for(self, topic: str) -> Sequence[ConfigStore[Any]]: ...
