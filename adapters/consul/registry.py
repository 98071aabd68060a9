"""The Consul registry adapter: one or more datacenters' catalogs, followed into the aggregate.

Shape (one set per configured datacenter):

- a watch on ``/v1/catalog/services`` (the list of services);
- while the datacenter has no more services than fit in ``maxWatches`` (per-service mode): a
  watch on ``/v1/health/service/<name>`` per service, started and stopped as services come and
  go, whose result is mapped (:mod:`adapters.consul.mapping`) and applied to this adapter's member
  of the aggregate -- the lowest latency, one connection per service;
- past that (catalog-wide mode, :mod:`adapters.consul.catalog`): one watch on all checks and
  non-blocking reads of just the services that changed, so any number of services costs three
  connections. Consul refuses more than ``limits.http_max_conns_per_client`` (default 200)
  connections per client IP, which is why the per-service mode cannot simply grow. A datacenter
  switches back once its services fit in half the room left (no flapping at the boundary).

Event-driven: blocking queries (:mod:`adapters.consul.watch`); the only timer is catalog-wide
mode's periodic reconcile, for the changes Consul's indexes do not announce.

Promises:
- Synced once: ``member.mark_synced()`` is called after every datacenter's service list *and*
  every listed service's instances have been read once, and the whole state was applied in one
  ``replace`` -- so the hub never reports ready with half a catalog.
- Only real differences are pushed: each change recomputes the mesh service of the affected
  hostname from normalised instances; equal objects are suppressed by the aggregate.
- Outages never empty the mesh: a failed read changes nothing in the member; the adapter marks
  itself degraded (``/debug/registryz``, ``/healthz/ready``, ``meshfed_registry_degraded`` and
  ``meshfed_consul_unreachable``), retries with jittered backoff, fails over to the next address,
  and resyncs with a non-blocking read as soon as a server answers.
- ``run()`` never raises because Consul is down; it returns only after ``stop()``.

Several datacenters: instances of one service in several datacenters share a hostname (unless the
hostname template uses ``{datacenter}``), so the mesh sees one service whose endpoints carry their
datacenter as locality region -- what Envoy needs for locality-aware routing and failover.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any, TypeVar

import tenacity

from meshfed.adapters.consul import metrics
from meshfed.adapters.consul.catalog import CatalogFollower
from meshfed.adapters.consul.client import ConsulClients, QueryResult
from meshfed.adapters.consul.mapping import (
    IGNORED_SERVICES,
    Instance,
    build_service,
    hostname_for,
    instances_from_entries,
)
from meshfed.adapters.consul.params import ConsulParams, parse_params
from meshfed.adapters.consul.watch import BACKOFF_MAX_S, BlockingWatch, run_blocking
from meshfed.adapters.contract import AdapterContext
from meshfed.registry.aggregate import Member
from meshfed.registry.model import Endpoint, Service

log = logging.getLogger("meshfed.adapters.consul")

T = TypeVar("T")
ServiceKey = tuple[str, str]  # (datacenter, Consul service name)


class ConsulRegistry:
    """A member of the aggregate fed by Consul's catalog and health endpoints."""

    kind = "consul"

    def __init__(self, member: Member, params: ConsulParams, trust_domain: str) -> None:
        self.member = member
        self.params = params
        self.trust_domain = trust_domain
        self.clients = ConsulClients(params)
        self.clients.on_failover = self._failover
        self.datacenters: list[str] = list(params.datacenters)
        self._list_watches: dict[str, BlockingWatch] = {}
        self._service_watches: dict[ServiceKey, BlockingWatch] = {}
        self._followers: dict[str, CatalogFollower] = {}  # datacenters in catalog-wide mode
        self._instances: dict[ServiceKey, tuple[Instance, ...]] = {}
        self._hosts: dict[str, set[ServiceKey]] = {}
        self._synced = False
        self._stopped = asyncio.Event()
        self._setup_error: str | None = None
        self._dc_reasons: dict[str, str] = {}
        self.started_at: float | None = None
        self.synced_at: float | None = None

    # -- lifecycle --------------------------------------------------------------------------
    async def run(self) -> None:
        """Initial sync, ``mark_synced``, then follow changes until :meth:`stop`."""
        self.started_at = time.time()
        try:
            if not self.datacenters:
                local = await self._until_stopped(self._local_datacenter())
                if local is None:
                    return
                self.datacenters = [local]
            for dc in self.datacenters:
                self._start_list_watch(dc)
            await self._wait_initial_results()
            if self._stopped.is_set():
                return
            self._apply_all()
            self._synced = True
            self.synced_at = time.time()
            self.member.mark_synced()
            log.info(
                "consul registry %s synced: %d services from %s",
                self.member.name,
                len(self.member.services),
                ", ".join(self.datacenters),
            )
            await self._stopped.wait()
        finally:
            await self._stop_watches()

    @property
    def synced(self) -> bool:
        return self._synced

    async def stop(self) -> None:
        self._stopped.set()
        await self._stop_watches()

    async def _stop_watches(self) -> None:
        watches = [*self._list_watches.values(), *self._service_watches.values()]
        followers = list(self._followers.values())
        self._list_watches.clear()
        self._service_watches.clear()
        self._followers.clear()
        await asyncio.gather(*(w.stop() for w in (*watches, *followers)), return_exceptions=True)
        for dc in self.datacenters:
            metrics.WATCHES.labels(self.member.name, dc).set(0)
            metrics.CATALOG_MODE.labels(self.member.name, dc).set(0)

    async def _until_stopped(self, work: Coroutine[Any, Any, T]) -> T | None:
        """``work``'s result, or None if :meth:`stop` is called first (``work`` is cancelled)."""
        task = asyncio.create_task(work)
        stopped = asyncio.create_task(self._stopped.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
            return task.result() if task.done() else None
        finally:
            task.cancel()
            stopped.cancel()

    async def _local_datacenter(self) -> str:
        """The agent's own datacenter, retried (degraded meanwhile) until an agent answers."""

        def failed(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self._setup_error = f"cannot read the agent's datacenter: {exc}"
            self._update_degraded()

        retrying = tenacity.AsyncRetrying(
            wait=tenacity.wait_random_exponential(multiplier=0.25, max=BACKOFF_MAX_S),
            retry=tenacity.retry_if_exception_type(Exception),
            before_sleep=failed,
        )
        async for attempt in retrying:
            with attempt:
                dc = await run_blocking(self.clients.local_datacenter)
        self._setup_error = None
        self._update_degraded()
        return dc

    async def _wait_initial_results(self) -> None:
        stopped = asyncio.create_task(self._stopped.wait())
        waits: list[asyncio.Task[Any]] = []
        try:
            while not self._stopped.is_set():
                pending = [
                    w
                    for w in (
                        *self._list_watches.values(),
                        *self._service_watches.values(),
                        *self._followers.values(),
                    )
                    if not w.first_result.is_set()
                ]
                if not pending:
                    return
                waits = [asyncio.create_task(w.first_result.wait()) for w in pending]
                await asyncio.wait([*waits, stopped], return_when=asyncio.FIRST_COMPLETED)
                for task in waits:
                    task.cancel()
        finally:
            # Also when this coroutine is cancelled mid-wait: no waiter may outlive it.
            stopped.cancel()
            for task in waits:
                task.cancel()

    # -- watches ----------------------------------------------------------------------------
    def _observer(self, dc: str, kind: str) -> Any:
        def observe(outcome: str) -> None:
            if kind == "sweep":
                metrics.SWEEPS.labels(self.member.name, dc, outcome).inc()
            elif outcome == "reset":
                metrics.INDEX_RESETS.labels(self.member.name, dc).inc()
            else:
                metrics.QUERIES.labels(self.member.name, dc, kind, outcome).inc()

        return observe

    def _start_list_watch(self, dc: str) -> None:
        key = f"{dc}/services"
        route = self.clients.route(key)
        watch = BlockingWatch(
            key,
            lambda index, wait: self.clients.services(dc, index, wait, route),
            lambda result: self._on_service_list(dc, result),
            self._on_status,
            self.params.rate_limit,
            observe=self._observer(dc, "list"),
        )
        self._list_watches[dc] = watch
        watch.start()
        self._count_watches(dc)

    def _count_watches(self, dc: str) -> None:
        count = (
            (dc in self._list_watches)
            + (dc in self._followers)
            + sum(1 for d, _ in self._service_watches if d == dc)
        )
        metrics.WATCHES.labels(self.member.name, dc).set(count)
        metrics.CATALOG_MODE.labels(self.member.name, dc).set(1 if dc in self._followers else 0)

    def _room(self, dc: str) -> int:
        """Per-service watches ``dc`` may hold: ``maxWatches`` less other datacenters' ones."""
        others = sum(1 for d, _ in self._service_watches if d != dc)
        return max(0, self.params.max_watches - others)

    def _wanted(self, name: str, tags: Any) -> bool:
        if name in IGNORED_SERVICES:
            return False
        # The list carries the union of every instance's tags: a service none of whose instances
        # has the filter tags needs no watch at all. The health query filters instances exactly.
        return set(self.params.tag_filter) <= set(tags or ())

    def _on_service_list(self, dc: str, result: QueryResult) -> None:
        listed = {
            name: tuple(sorted({str(t) for t in tags or ()}))
            for name, tags in (result.data or {}).items()
            if self._wanted(name, tags)
        }
        follower = self._followers.get(dc)
        if follower is None and len(listed) > self._room(dc):
            follower = self._to_catalog_mode(dc, len(listed))
            self._drop_unlisted(dc, listed)
        elif follower is not None and len(listed) <= self._room(dc) // 2:
            self._to_watch_mode(dc, len(listed))
            self._drop_unlisted(dc, listed)
            follower = None
        if follower is not None:
            follower.update_list(listed, result.index)
            return
        names = set(listed)
        current = {name for d, name in self._service_watches if d == dc}
        for name in sorted(current - names):
            self._service_watches.pop((dc, name)).cancel()
            self._set_instances((dc, name), ())
        for name in sorted(names - current):
            key = (dc, name)
            route = self.clients.route(f"{dc}/{name}")
            watch = BlockingWatch(
                f"{dc}/{name}",
                lambda index, wait, name=name, route=route: self.clients.health(
                    dc, name, index, wait, route
                ),
                lambda result, key=key: self._on_health(key, result),
                self._on_status,
                self.params.rate_limit,
                observe=self._observer(dc, "service"),
            )
            self._service_watches[key] = watch
            watch.start()
        self._count_watches(dc)
        if current - names:
            # A stopped watch may have been the only failing one.
            self._update_degraded()

    def _to_catalog_mode(self, dc: str, count: int) -> CatalogFollower:
        log.info(
            "consul %s: datacenter %s has %d services, more than maxWatches allows (%d): "
            "following it catalog-wide",
            self.member.name,
            dc,
            count,
            self._room(dc),
        )
        for key in [k for k in self._service_watches if k[0] == dc]:
            # Their instances stay: the follower's first reads compare against them, and only
            # real differences are pushed.
            self._service_watches.pop(key).cancel()
        follower = CatalogFollower(
            dc,
            self.clients,
            self.params,
            lambda name, result: self._on_fetched(dc, name, result),
            lambda node: self._services_on_node(dc, node),
            lambda names: self._known_instances(dc, names),
            self._on_status,
            lambda kind, outcome: self._observer(dc, kind)(outcome),
        )
        self._followers[dc] = follower
        follower.start()
        self._count_watches(dc)
        self._update_degraded()
        return follower

    def _to_watch_mode(self, dc: str, count: int) -> None:
        log.info(
            "consul %s: datacenter %s has %d services: one blocking query per service again",
            self.member.name,
            dc,
            count,
        )
        self._followers.pop(dc).cancel()
        # The caller starts a watch per listed service; instances stay until those answer.
        self._count_watches(dc)

    def _drop_unlisted(self, dc: str, listed: Mapping[str, Any]) -> None:
        """On a mode switch: services that left the list with the switching update go now."""
        for key in sorted(k for k in self._instances if k[0] == dc and k[1] not in listed):
            self._set_instances(key, ())

    def _known_instances(self, dc: str, names: Iterable[str]) -> dict[str, set[tuple[str, str]]]:
        return {
            name: {(i.node, i.service_id) for i in self._instances.get((dc, name), ())}
            for name in names
        }

    def _services_on_node(self, dc: str, node: str) -> set[str]:
        return {
            name
            for (d, name), instances in self._instances.items()
            if d == dc and any(i.node == node for i in instances)
        }

    def _on_fetched(self, dc: str, name: str, result: QueryResult | None) -> None:
        if self._followers.get(dc) is None:
            return  # switched back to per-service watches meanwhile
        started = time.perf_counter()
        entries = result.data if result is not None else ()
        self._set_instances((dc, name), instances_from_entries(entries or (), dc))
        metrics.APPLY_SECONDS.labels(self.member.name).observe(time.perf_counter() - started)

    def _on_health(self, key: ServiceKey, result: QueryResult) -> None:
        if key not in self._service_watches:
            return  # the service left the list while this read was in flight
        started = time.perf_counter()
        self._set_instances(key, instances_from_entries(result.data or (), key[0]))
        metrics.APPLY_SECONDS.labels(self.member.name).observe(time.perf_counter() - started)

    def _on_status(self, watch: Any, error: BaseException | None) -> None:
        # Per-watch failures are routine during an outage (every watch retries with backoff):
        # debug only. The datacenter-level transition is what gets logged, once, in
        # _update_degraded.
        if error is not None:
            log.debug("consul %s: %s: %s", self.member.name, watch.key, watch.last_error)
        self._update_degraded()

    def _failover(self, old: str, new: str) -> None:
        # Called from a worker thread: only thread-safe things here (metrics, logging).
        metrics.FAILOVERS.labels(self.member.name).inc()
        log.warning("consul %s: %s unreachable, moving to %s", self.member.name, old, new)

    def _update_degraded(self) -> None:
        """Recompute the member's degraded reason from the watches' states.

        The reason for a datacenter is fixed when it starts failing (from that first error) and
        kept until every watch there succeeds again: with a thousand watches retrying during an
        outage, a reason that changed with each failure would re-notify (and log) every time.
        """
        reasons = [self._setup_error] if self._setup_error else []
        for dc in self.datacenters:
            failing = [
                w
                for w in (self._list_watches.get(dc), *self._watches_of(dc))
                if w is not None and w.failing
            ]
            metrics.UNREACHABLE.labels(self.member.name, dc).set(1 if failing else 0)
            if not failing:
                if self._dc_reasons.pop(dc, None) is not None:
                    log.info("consul %s: datacenter %s readable again", self.member.name, dc)
                continue
            if dc not in self._dc_reasons:
                self._dc_reasons[dc] = (
                    f"datacenter {dc}: cannot read from Consul ({failing[0].key}: "
                    f"{failing[0].last_error}; addresses {', '.join(self.clients.addresses)}); "
                    "last known endpoints kept"
                )
            reasons.append(self._dc_reasons[dc])
        self.member.set_degraded("; ".join(reasons) or None)

    def _watches_of(self, dc: str) -> list[Any]:
        """Everything reading ``dc`` besides its list watch (each has failing/key/last_error)."""
        follower = self._followers.get(dc)
        extra = [follower.checks_watch, follower] if follower is not None else []
        return [*(w for (d, _), w in self._service_watches.items() if d == dc), *extra]

    # -- applying ---------------------------------------------------------------------------
    def _hostname(self, key: ServiceKey) -> str:
        dc, name = key
        return hostname_for(self.params.hostname_template, name, dc, self.params.mesh_namespace)

    def _set_instances(self, key: ServiceKey, instances: tuple[Instance, ...]) -> None:
        host = self._hostname(key)
        if instances:
            self._instances[key] = instances
            self._hosts.setdefault(host, set()).add(key)
        else:
            self._instances.pop(key, None)
            keys = self._hosts.get(host)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._hosts[host]
        if self._synced:
            self._apply_host(host)

    def _build(self, host: str) -> tuple[Service, tuple[Endpoint, ...]] | None:
        instances = [i for key in sorted(self._hosts.get(host, ())) for i in self._instances[key]]
        return build_service(host, self.params.mesh_namespace, instances, self.member.name)

    def _apply_host(self, host: str) -> None:
        built = self._build(host)
        if built is None:
            if host in self.member.services:
                self.member.delete_service(host)
        else:
            self.member.put_service(*built)

    def _apply_all(self) -> None:
        services: list[Service] = []
        endpoints: dict[str, tuple[Endpoint, ...]] = {}
        for host in sorted(self._hosts):
            built = self._build(host)
            if built is not None:
                services.append(built[0])
                endpoints[host] = built[1]
        self.member.replace(services, endpoints)

    # -- debug --------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """What ``/debug/registryz`` shows for this registry."""
        watches = {w.key: w.describe() for w in self._list_watches.values()}
        watches.update({w.key: w.describe() for w in self._service_watches.values()})
        watches.update(
            {f.checks_watch.key: f.checks_watch.describe() for f in self._followers.values()}
        )
        in_use = Counter(w["address"] for w in watches.values() if w["address"])
        in_use.update(f.address for f in self._followers.values() if f.address)
        return {
            "addresses": list(self.clients.addresses),
            "addressesInUse": dict(sorted(in_use.items())),
            "datacenters": list(self.datacenters),
            "namespace": self.params.namespace or None,
            "tagFilter": list(self.params.tag_filter),
            "filter": self.params.filter or None,
            "hostnameTemplate": self.params.hostname_template,
            "consistency": self.params.consistency,
            "waitSeconds": self.params.wait_s,
            "requestTimeoutSeconds": self.clients.request_timeout(1),
            "tls": self.params.tls is not None,
            "maxWatches": self.params.max_watches,
            "modes": {
                dc: "catalog" if dc in self._followers else "per-service" for dc in self.datacenters
            },
            "catalog": {dc: f.describe() for dc, f in sorted(self._followers.items())},
            "synced": self._synced,
            "degraded": self.member.degraded,
            "services": len(self._hosts),
            "watches": watches,
        }


def create(context: AdapterContext) -> ConsulRegistry:
    """Entry point for the ``consul`` registry kind (keys: see :mod:`adapters.consul.params`).

    Raises :class:`~adapters.consul.params.ConsulParamsError` naming every bad key.
    """
    member = context.member
    params = parse_params(context.params, f"registries[{member.name}]")
    return ConsulRegistry(member, params, context.trust_domain)
