"""Change events: exactly what changed in the merged view, and nothing when nothing did.

Subscribers (Pilot, Mixer, the CA) rebuild only what an event names, so an event must be precise:
a service whose model object is equal to the previous one is not "updated", and an endpoint that
is equal to its previous self is not "updated" either.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from meshfed.registry.model import Endpoint, Service


@attrs.frozen(slots=True)
class EndpointChange:
    """How one service's endpoint set changed."""

    hostname: str
    added: tuple[Endpoint, ...] = ()
    updated: tuple[Endpoint, ...] = ()
    removed: tuple[Endpoint, ...] = ()


@attrs.frozen(slots=True)
class ChangeEvent:
    services_added: tuple[str, ...] = ()
    services_updated: tuple[str, ...] = ()
    services_removed: tuple[str, ...] = ()
    endpoints: tuple[EndpointChange, ...] = ()

    @property
    def empty(self) -> bool:
        return not (
            self.services_added or self.services_updated or self.services_removed or self.endpoints
        )

    @property
    def hostnames(self) -> frozenset[str]:
        """Every hostname this event touches."""
        names = {*self.services_added, *self.services_updated, *self.services_removed}
        names.update(c.hostname for c in self.endpoints)
        return frozenset(names)


def diff_endpoints(
    hostname: str, before: Iterable[Endpoint], after: Iterable[Endpoint]
) -> EndpointChange | None:
    """The change from ``before`` to ``after``, or None when they hold equal endpoints."""
    old = {e.key: e for e in before}
    new = {e.key: e for e in after}
    added = tuple(new[k] for k in sorted(new.keys() - old.keys()))
    removed = tuple(old[k] for k in sorted(old.keys() - new.keys()))
    updated = tuple(new[k] for k in sorted(new.keys() & old.keys()) if new[k] != old[k])
    if not (added or removed or updated):
        return None
    return EndpointChange(hostname, added, updated, removed)


def diff_views(
    before_services: Mapping[str, Service],
    after_services: Mapping[str, Service],
    before_endpoints: Mapping[str, tuple[Endpoint, ...]],
    after_endpoints: Mapping[str, tuple[Endpoint, ...]],
    hostnames: Iterable[str],
) -> ChangeEvent:
    """Compare two views over the given hostnames."""
    added, updated, removed, changes = [], [], [], []
    for host in sorted(set(hostnames)):
        old, new = before_services.get(host), after_services.get(host)
        if old is None and new is not None:
            added.append(host)
        elif old is not None and new is None:
            removed.append(host)
        elif old != new:
            updated.append(host)
        change = diff_endpoints(host, before_endpoints.get(host, ()), after_endpoints.get(host, ()))
        if change is not None:
            changes.append(change)
    return ChangeEvent(tuple(added), tuple(updated), tuple(removed), tuple(changes))
