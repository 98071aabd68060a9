"""Which services have an endpoint at a given address, or of a given workload: the lookups
Pilot and Mixer share.

Pilot asks the address index for the workload a proxy fronts (its inbound listeners,
source-matching rules, locality); Mixer asks it to enrich ``source.ip`` / ``destination.ip``
into labels, service, namespace and service account, and asks the workload index to do the same
for ``source.uid`` / ``destination.uid`` (a workload named by name and namespace). Both must see
the same answer for every registry kind, so there is one index of each, kept by the aggregate
registry as part of its merged view.

Promises: pure (no I/O), updated incrementally per host in time proportional to that host's
endpoints, and a key's host set is empty exactly when no merged endpoint has that key.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

from meshfed.registry.model import Endpoint, Service, workload_name, workload_namespace

K = TypeVar("K", bound=Hashable)


class HostIndex(Generic[K]):
    """Key -> hostnames with an endpoint that has the key, maintained per host."""

    __slots__ = ("_by_key", "_keys")

    def __init__(self) -> None:
        self._keys: dict[str, frozenset[K]] = {}  # host -> the keys of its endpoints
        self._by_key: dict[K, set[str]] = {}  # key -> hosts

    def update_keys(self, host: str, keys: Iterable[K]) -> None:
        """Record the keys of ``host``'s current endpoints (none: the host leaves the index)."""
        new = frozenset(keys)
        old = self._keys.get(host, frozenset())
        if new == old:
            return
        for key in old - new:
            hosts = self._by_key.get(key)
            if hosts is not None:
                hosts.discard(host)
                if not hosts:
                    del self._by_key[key]
        for key in new - old:
            self._by_key.setdefault(key, set()).add(host)
        if new:
            self._keys[host] = new
        else:
            self._keys.pop(host, None)

    def hosts(self, key: K) -> tuple[str, ...]:
        """The hostnames with an endpoint that has ``key``, sorted."""
        return tuple(sorted(self._by_key.get(key, ())))

    def __len__(self) -> int:
        return len(self._by_key)


class AddressIndex(HostIndex[str]):
    """Endpoint address -> hostnames with an endpoint there."""

    __slots__ = ()

    def update(self, host: str, endpoints: Iterable[Endpoint]) -> None:
        """Record ``host``'s current endpoints (none: the host leaves the index)."""
        self.update_keys(host, (e.address for e in endpoints))


WorkloadKey = tuple[str, str]  # (workload name, namespace)


def workload_key(service: Service, endpoint: Endpoint) -> WorkloadKey:
    """The (name, namespace) the workload behind ``endpoint`` of ``service`` is known by."""
    return workload_name(endpoint), workload_namespace(service, endpoint)


class WorkloadIndex(HostIndex[WorkloadKey]):
    """(workload name, namespace) -> hostnames with an endpoint of that workload."""

    __slots__ = ()

    def update(self, host: str, service: Service | None, endpoints: Iterable[Endpoint]) -> None:
        """Record ``host``'s current service and endpoints (``service`` None: it left)."""
        keys = () if service is None else (workload_key(service, e) for e in endpoints)
        self.update_keys(host, keys)
