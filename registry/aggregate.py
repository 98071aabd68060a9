"""The aggregate registry: many platform registries merged into one view of the mesh.

Each adapter owns one *member* and reports its full, normalised state for whatever changed. The
aggregate merges members by hostname, so one service can span Kubernetes pods, Consul nodes,
Eureka instances and VMs; its endpoints are the union of every member's endpoints.

Precedence (documented for operators in the README): members rank in the order they were added,
which is the order of ``registries`` in the mesh config, first is highest. For a hostname several
members define, the highest-ranked member's namespace, address, resolution, location and port set
win; lower-ranked members add ports whose name and number are both new, and labels whose keys are
new. Every disagreement (a port name with another number or protocol, a port number with another
name, another address or resolution) is recorded as a :class:`Conflict`, logged once when it
appears, and listed by :meth:`AggregateRegistry.conflicts`; none is dropped silently.

Consistency: subscribers are called after the merged view is updated, so anything a subscriber
reads is at least as fresh as the event it got. Not thread-safe: call it from one thread (the
event loop); adapters with blocking clients hand their results to the loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

import attrs

from meshfed.registry.events import ChangeEvent, diff_views
from meshfed.registry.index import AddressIndex, WorkloadIndex
from meshfed.registry.model import (
    Endpoint,
    Labels,
    Port,
    Service,
    workload_name,
    workload_namespace,
)

log = logging.getLogger("meshfed.registry")

Subscriber = Callable[[ChangeEvent], None]


@attrs.frozen(slots=True)
class Conflict:
    """Two registries disagree about one field of a service; ``winner`` decided it."""

    hostname: str
    field: str
    winner: str
    winner_value: str
    loser: str
    loser_value: str

    def __str__(self) -> str:
        return (
            f"{self.hostname}: {self.field} is {self.winner_value} in {self.winner} "
            f"but {self.loser_value} in {self.loser}; {self.winner} wins by precedence"
        )


class Member:
    """One platform registry's state inside the aggregate. Adapters write through this."""

    def __init__(self, aggregate: AggregateRegistry, name: str, kind: str) -> None:
        self._aggregate = aggregate
        self.name = name
        self.kind = kind
        self.services: dict[str, Service] = {}
        self.endpoints: dict[str, tuple[Endpoint, ...]] = {}
        self.synced = False
        self.degraded: str | None = None
        # False once the hub stopped waiting for this member's first sync (its initial-sync
        # timeout passed): the mesh is served without it and it is merged in when it arrives.
        self.awaited = True
        self._late_reason: str | None = None

    def _own(self, service: Service) -> Service:
        if service.registries == (self.name,):
            return service
        return attrs.evolve(service, registries=(self.name,))

    def _own_endpoints(self, endpoints: Iterable[Endpoint]) -> tuple[Endpoint, ...]:
        owned = (
            e if e.registry == self.name else attrs.evolve(e, registry=self.name) for e in endpoints
        )
        return tuple(sorted(owned, key=lambda e: e.key))

    def replace(
        self,
        services: Iterable[Service],
        endpoints: Mapping[str, Iterable[Endpoint]] | None = None,
    ) -> ChangeEvent:
        """Replace this member's whole state (a full sync); only real differences are emitted."""
        new_services = {s.hostname: self._own(s) for s in services}
        new_endpoints = {h: self._own_endpoints(eps) for h, eps in (endpoints or {}).items() if eps}
        touched = set(self.services) | set(new_services) | set(self.endpoints) | set(new_endpoints)
        touched = {
            h
            for h in touched
            if self.services.get(h) != new_services.get(h)
            or self.endpoints.get(h, ()) != new_endpoints.get(h, ())
        }
        self.services, self.endpoints = new_services, new_endpoints
        return self._aggregate._recompute(touched, self.name)

    def put_service(
        self, service: Service, endpoints: Iterable[Endpoint] | None = None
    ) -> ChangeEvent:
        """Add or update one service and, when given, its endpoints from this member."""
        host = service.hostname
        self.services[host] = self._own(service)
        if endpoints is not None:
            self._store_endpoints(host, endpoints)
        return self._aggregate._recompute({host}, self.name)

    def delete_service(self, hostname: str) -> ChangeEvent:
        self.services.pop(hostname, None)
        self.endpoints.pop(hostname, None)
        return self._aggregate._recompute({hostname}, self.name)

    def set_endpoints(self, hostname: str, endpoints: Iterable[Endpoint]) -> ChangeEvent:
        """Set this member's endpoints for a hostname (the service may come from another member)."""
        self._store_endpoints(hostname, endpoints)
        return self._aggregate._recompute({hostname}, self.name)

    def _store_endpoints(self, hostname: str, endpoints: Iterable[Endpoint]) -> None:
        owned = self._own_endpoints(endpoints)
        if owned:
            self.endpoints[hostname] = owned
        else:
            self.endpoints.pop(hostname, None)

    def mark_synced(self) -> None:
        if not self.synced:
            self.synced = True
            log.info("registry %s synced", self.name, extra={"registry": self.name})
            if self.degraded is not None and self.degraded == self._late_reason:
                self.degraded = None  # the lateness was the only thing wrong with it
            self._aggregate._notify_status()

    @property
    def late_reason(self) -> str | None:
        """Why the hub stopped waiting for this member's first sync (None once it synced)."""
        return None if self.synced else self._late_reason

    def stop_awaiting(self, reason: str) -> None:
        """Stop waiting for this member's first sync: the aggregate counts as synced without
        it. Unless the adapter already says why it is unreachable, ``reason`` becomes its
        degraded reason, withdrawn by :meth:`mark_synced`."""
        if self.synced or not self.awaited:
            return
        self.awaited = False
        log.warning("registry %s: %s", self.name, reason, extra={"registry": self.name})
        self._late_reason = reason
        if self.degraded is None:
            self.degraded = reason
        self._aggregate._notify_status()

    def set_degraded(self, reason: str | None) -> None:
        """Mark this member unreachable (``reason``) or healthy again (None); state is kept."""
        if reason is None and not self.synced and not self.awaited:
            reason = self._late_reason  # reachable again, but still not synced: still late
        if reason != self.degraded:
            if reason:
                log.warning(
                    "registry %s degraded: %s", self.name, reason, extra={"registry": self.name}
                )
            else:
                log.info("registry %s recovered", self.name, extra={"registry": self.name})
            self.degraded = reason
            self._aggregate._notify_status()


class AggregateRegistry:
    """The merged view of every member registry."""

    def __init__(self) -> None:
        self._members: list[Member] = []
        self._services: dict[str, Service] = {}
        self._endpoints: dict[str, tuple[Endpoint, ...]] = {}
        self._conflicts: dict[str, tuple[Conflict, ...]] = {}
        self._by_address = AddressIndex()
        self._by_workload = WorkloadIndex()
        self._subscribers: list[Subscriber] = []
        self._status_subscribers: list[Callable[[], None]] = []
        # The member whose change subscribers are being told about ("" outside a notification),
        # so that a subscriber can attribute an event without the event carrying it.
        self.notifying = ""

    # -- membership -------------------------------------------------------------------------
    def add_member(self, name: str, kind: str = "") -> Member:
        """Add a registry; members added earlier take precedence over later ones."""
        if any(m.name == name for m in self._members):
            raise ValueError(f"registry {name!r} is already a member")
        member = Member(self, name, kind or name)
        self._members.append(member)
        return member

    @property
    def members(self) -> tuple[Member, ...]:
        return tuple(self._members)

    @property
    def synced(self) -> bool:
        """True once every member has synced at least once or is no longer awaited
        (:meth:`Member.stop_awaiting`): what the mesh can be served from."""
        return all(m.synced or not m.awaited for m in self._members)

    # -- reading ----------------------------------------------------------------------------
    def services(self) -> dict[str, Service]:
        return dict(self._services)

    def service(self, hostname: str) -> Service | None:
        return self._services.get(hostname)

    def endpoints(self, hostname: str) -> tuple[Endpoint, ...]:
        return self._endpoints.get(hostname, ())

    def at_address(self, address: str) -> tuple[tuple[Service, Endpoint], ...]:
        """Every (service, endpoint) pair whose endpoint is at ``address``, by hostname: the
        workload at an IP, whichever registries described it."""
        out: list[tuple[Service, Endpoint]] = []
        for host in self._by_address.hosts(address):
            service = self._services[host]
            out.extend((service, e) for e in self._endpoints.get(host, ()) if e.address == address)
        return tuple(out)

    def of_workload(self, name: str, namespace: str) -> tuple[tuple[Service, Endpoint], ...]:
        """Every (service, endpoint) pair of the workload ``name`` in ``namespace`` (see
        :func:`~meshfed.registry.model.workload_name`), by hostname."""
        out: list[tuple[Service, Endpoint]] = []
        for host in self._by_workload.hosts((name, namespace)):
            service = self._services[host]
            out.extend(
                (service, e)
                for e in self._endpoints.get(host, ())
                # the name first: it is cheap, the namespace may need the identity parsed
                if workload_name(e) == name and workload_namespace(service, e) == namespace
            )
        return tuple(out)

    def hosts_at(self, address: str) -> tuple[str, ...]:
        """The hostnames with an endpoint at ``address``, sorted."""
        return self._by_address.hosts(address)

    def conflicts(self) -> tuple[Conflict, ...]:
        return tuple(c for host in sorted(self._conflicts) for c in self._conflicts[host])

    # -- subscribing ------------------------------------------------------------------------
    def subscribe(self, callback: Subscriber) -> None:
        """Call ``callback`` with every non-empty change, after the view is updated."""
        self._subscribers.append(callback)

    def subscribe_status(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when a member's synced or degraded state changes."""
        self._status_subscribers.append(callback)

    def _notify_status(self) -> None:
        for callback in list(self._status_subscribers):
            callback()

    # -- merging ----------------------------------------------------------------------------
    def _recompute(self, hostnames: Iterable[str], source: str = "") -> ChangeEvent:
        hostnames = set(hostnames)
        before_s = {h: self._services[h] for h in hostnames if h in self._services}
        before_e = {h: self._endpoints[h] for h in hostnames if h in self._endpoints}
        for host in hostnames:
            service, endpoints, conflicts = self._merge(host)
            if service is None:
                self._services.pop(host, None)
                self._endpoints.pop(host, None)
                self._by_address.update(host, ())
                self._by_workload.update(host, None, ())
            else:
                self._services[host] = service
                if endpoints:
                    self._endpoints[host] = endpoints
                else:
                    self._endpoints.pop(host, None)
                self._by_address.update(host, endpoints)
                self._by_workload.update(host, service, endpoints)
            self._record_conflicts(host, conflicts)
        event = diff_views(before_s, self._services, before_e, self._endpoints, hostnames)
        if not event.empty:
            self.notifying = source
            try:
                for callback in list(self._subscribers):
                    callback(event)
            finally:
                self.notifying = ""
        return event

    def _record_conflicts(self, host: str, conflicts: tuple[Conflict, ...]) -> None:
        previous = set(self._conflicts.get(host, ()))
        for conflict in conflicts:
            if conflict not in previous:
                log.warning("registry conflict: %s", conflict)
        if conflicts:
            self._conflicts[host] = conflicts
        else:
            self._conflicts.pop(host, None)

    def _merge(
        self, host: str
    ) -> tuple[Service | None, tuple[Endpoint, ...], tuple[Conflict, ...]]:
        defining = [m for m in self._members if host in m.services]
        if not defining:
            return None, (), ()
        primary_member = defining[0]
        primary = primary_member.services[host]
        contributing = [m.name for m in self._members if host in m.services or host in m.endpoints]
        endpoints = tuple(
            sorted(
                (e for m in self._members for e in m.endpoints.get(host, ())), key=lambda e: e.key
            )
        )
        if len(defining) == 1 and len(contributing) == 1:
            return primary, endpoints, ()

        conflicts: list[Conflict] = []
        ports: dict[str, Port] = {p.name: p for p in primary.ports}
        labels: Labels = primary.labels
        for member in defining[1:]:
            other = member.services[host]

            def conflict(
                field: str, mine: object, theirs: object, loser: str = member.name
            ) -> None:
                conflicts.append(
                    Conflict(host, field, primary_member.name, str(mine), loser, str(theirs))
                )

            for port in other.ports:
                by_name = ports.get(port.name)
                by_number = next((p for p in ports.values() if p.number == port.number), None)
                if by_name is not None and by_name != port:
                    conflict(
                        f"port {port.name}",
                        f"{by_name.number}/{by_name.protocol.value}",
                        f"{port.number}/{port.protocol.value}",
                    )
                elif by_name is None and by_number is not None:
                    conflict(f"port {port.number} name", by_number.name, port.name)
                elif by_name is None:
                    ports[port.name] = port
            if other.address is not None and primary.address not in (None, other.address):
                conflict("address", primary.address, other.address)
            if other.resolution != primary.resolution:
                conflict("resolution", primary.resolution.value, other.resolution.value)
            labels = labels.merged(other.labels)
        merged = attrs.evolve(
            primary, ports=ports.values(), labels=labels, registries=tuple(contributing)
        )
        return merged, endpoints, tuple(conflicts)
