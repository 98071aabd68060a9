"""Which services have an endpoint at a given address: the lookup Pilot and Mixer share.

Pilot asks it for the workload a proxy fronts (its inbound listeners, source-matching rules,
locality); Mixer asks it to enrich ``source.ip`` / ``destination.ip`` into labels, service,
namespace and service account. Both must see the same answer for every registry kind, so there is
one index, kept by the aggregate registry as part of its merged view.

Promises: pure (no I/O), updated incrementally per host in time proportional to that host's
endpoints, and an address's host set is empty exactly when no merged endpoint has that address.
"""

from __future__ import annotations

from collections.abc import Iterable

from meshfed.registry.model import Endpoint


class AddressIndex:
    """Endpoint address -> hostnames with an endpoint there, maintained per host."""

    __slots__ = ("_addresses", "_by_address")

    def __init__(self) -> None:
        self._addresses: dict[str, frozenset[str]] = {}  # host -> its endpoint addresses
        self._by_address: dict[str, set[str]] = {}  # address -> hosts

    def update(self, host: str, endpoints: Iterable[Endpoint]) -> None:
        """Record ``host``'s current endpoints (none: the host leaves the index)."""
        new = frozenset(e.address for e in endpoints)
        old = self._addresses.get(host, frozenset())
        if new == old:
            return
        for address in old - new:
            hosts = self._by_address.get(address)
            if hosts is not None:
                hosts.discard(host)
                if not hosts:
                    del self._by_address[address]
        for address in new - old:
            self._by_address.setdefault(address, set()).add(host)
        if new:
            self._addresses[host] = new
        else:
            self._addresses.pop(host, None)

    def hosts(self, address: str) -> tuple[str, ...]:
        """The hostnames with an endpoint at ``address``, sorted."""
        return tuple(sorted(self._by_address.get(address, ())))

    def __len__(self) -> int:
        return len(self._by_address)
