"""The registry adapter contract: what every platform adapter is and is given.

Why a Protocol: the hub runs every kind of registry (static files, Consul, Eureka, Kubernetes,
workload registration, a user's own from ``pip install``) through one supervised loop, so each
must offer the same few methods; a test checks every shipped adapter against
:class:`RegistryAdapter`, as Istio checks ``var _ Instance = &Controller{}`` at compile time.

An adapter kind is an entry point of group ``meshfed.registries`` naming an
:data:`AdapterFactory`: a function taking an :class:`AdapterContext` and returning the adapter.
The factory validates its parameters (raise ``ValueError`` or the adapter's own error naming
the key) and does no I/O: ``meshfed validate`` calls it too.

What the hub relies on:

- ``run()`` follows the platform and writes *full, normalised* state into ``context.member``
  (``replace`` / ``update_service`` / ``set_endpoints``), calls ``member.mark_synced()`` once
  the first complete state is in, and returns only after ``stop()``. It may raise: the hub then
  marks the member degraded, keeps its last state, and calls ``run()`` again with backoff; the
  crash's degraded reason is withdrawn once a new run has stayed up for a few seconds.
- An adapter that loses its platform while running keeps its state and reports
  ``member.set_degraded(reason)`` itself (and ``None`` when it is back) instead of raising.
- ``synced`` is True once the first complete state has been applied.
- ``describe()`` returns JSON-able detail for ``/debug/registryz`` (watches, errors, servers).

See ``docs/registry-adapters.md`` for a walk-through with a minimal adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import attrs

from meshfed.registry.aggregate import Member

DEFAULT_SYSTEM_NAMESPACE = "meshfed-system"


@attrs.frozen
class AdapterContext:
    """What an adapter is created with: its member, its parameters and the mesh's settings."""

    member: Member
    params: Mapping[str, Any] = attrs.field(factory=dict)
    trust_domain: str = "cluster.local"
    system_namespace: str = DEFAULT_SYSTEM_NAMESPACE  # the control plane's own namespace

    @property
    def name(self) -> str:
        return self.member.name


@runtime_checkable
class RegistryAdapter(Protocol):
    """One platform registry followed into one member of the aggregate."""

    @property
    def member(self) -> Member: ...

    @property
    def synced(self) -> bool: ...

    async def run(self) -> None: ...

    async def stop(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...


AdapterFactory = Callable[[AdapterContext], RegistryAdapter]
