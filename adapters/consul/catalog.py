"""Catalog-wide following of one datacenter: any number of services on three connections.

Why this exists: a blocking query per service holds one HTTP connection per service, and Consul
refuses more than ``limits.http_max_conns_per_client`` (default 200) per client IP with 429. Past
``maxWatches`` services the adapter follows a datacenter with this instead:

- the service-list watch the registry already runs (``/v1/catalog/services``), whose index moves
  on *every* write to any service instance (registration, deregistration, address, port, meta,
  tags) -- measured on Consul 1.16: not on check updates, node-only updates or KV writes;
- one blocking query on ``/v1/health/state/any`` (every check with Node, CheckID, Status,
  ServiceID, ServiceName), whose index moves on every check write;
- non-blocking reads of ``/v1/health/service/<name>`` (one keep-alive connection, paced by
  ``fetchRate``) for just the services that need one, and on that same connection, when the
  service list moved for no reason the two watches explain, a look at the service summaries
  (``/v1/internal/ui/services``: per service its instance count, nodes, tags, check counts),
  then if need be at ``/v1/catalog/nodes`` (whose index moves on every node *and* service
  write, each node with its own ModifyIndex) and at the catalog dump.

What needs a read, and why:

- a name that appears, or whose tag union changes, in the service list; a name that disappears is
  removed without one;
- a service with a check that appeared, disappeared or changed status or owner (output-only
  updates change nothing the mesh uses, so they are ignored); a node-level check (``serfHealth``,
  node maintenance) means every service with an instance on that node;
- a move of the service-list index that nothing above explains -- a write the check list has
  not named (yet): an instance without checks registered, moved or removed, a re-registration
  that kept its checks, or one with checks whose check list is still on its way. The service
  summaries are read at once: a service whose instance count, nodes, tags or check counts
  differ from the last summary read is read -- this finds an instance added to or removed
  from a node that stays as it was, which is how Consul agents register their services. If
  the summaries show nothing (an instance changed in place), the node list: nodes created or
  rewritten since the last look (ModifyIndex), and nodes gone, name the services on them
  (one ``/v1/catalog/services`` read filtered to those nodes). If that explains nothing, a
  probe of the check table's index (a filtered, empty read) says whether the write touched a
  check: then the check list gets ``SETTLE_S`` to name the service. Else, or after that, the
  whole catalog is looked at (a *sweep*): one dump, ``/v1/internal/ui/nodes``, every
  instance with its ModifyIndex, names the services with an instance newer than their last
  read or one missing; only if the dump fails (it is an internal endpoint) or shows nothing,
  every service is read. This is what an instance changed in place on a node that itself
  stayed as it was costs: no list says *which* service, and the filter language cannot see
  indexes. The move counts as explained when the node it wrote has exactly the list's new
  index, or a read answers with exactly that index (that read saw the write); a write
  coalesced into the same move as another that explains it is left to the reconcile;
- every ``reconcile`` interval, a sweep anyway: node address and node meta changes move neither
  watched index (only the node list's and the node's services' own), so unless a later look at
  the node list sees them first, this is the bound for them.

A read whose ``X-Consul-Index`` equals the one last applied for that service is skipped (nothing
changed); one *below* it came from a lagging server and is held back and retried, for at most
``CATCH_UP_S``, exactly as a blocking watch does (:mod:`adapters.consul.watch`). Reads start only
after the first check list arrived, so no check change can fall between a read and the baseline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import tenacity

from meshfed.adapters.consul.client import ConsulClients, QueryResult, bexpr_string
from meshfed.adapters.consul.params import ConsulParams
from meshfed.adapters.consul.stages import StageTimes
from meshfed.adapters.consul.watch import (
    BACKOFF_MULTIPLIER_S,
    CATCH_UP_S,
    BlockingWatch,
    RateLimiter,
    run_blocking,
)

log = logging.getLogger("meshfed.adapters.consul")

# After an unexplained move of the service-list index, how long to wait for the check list to
# reach that index (a registration with checks writes both in one Raft entry) before sweeping.
SETTLE_S = 0.3
# A read held back because its server lags is retried after this long.
BEHIND_RETRY_S = 0.5
# Reads a second of the periodic reconcile sweep (at most; fetchRate may be lower).
RECONCILE_RATE = 100.0
# More nodes written at once than this (a bulk import) and a sweep is the cheaper way to see them.
MAX_HINT_NODES = 64

CheckKey = tuple[str, str]  # (node, check id)
CheckState = tuple[str, str, str]  # (status, service id, service name)


def check_states(checks: Iterable[dict[str, Any]] | None) -> dict[CheckKey, CheckState]:
    """``/v1/health/state/any`` entries -> what the mesh derives health from, per check."""
    return {
        (str(c.get("Node", "")), str(c.get("CheckID", ""))): (
            str(c.get("Status", "")),
            str(c.get("ServiceID") or ""),
            str(c.get("ServiceName") or ""),
        )
        for c in checks or ()
    }


def changed_checks(
    old: dict[CheckKey, CheckState], new: dict[CheckKey, CheckState]
) -> tuple[set[str], set[str]]:
    """(service names, nodes of node-level checks) touched between two check lists."""
    services: set[str] = set()
    nodes: set[str] = set()
    for key in old.keys() | new.keys():
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        for state in (before, after):
            if state is None:
                continue
            if state[2]:
                services.add(state[2])
            else:
                nodes.add(key[0])
    return services, nodes


ServiceSummary = tuple[tuple[str, int, tuple[str, ...], tuple[str, ...], int, int, int], ...]


def service_summaries(entries: Iterable[dict[str, Any]] | None) -> dict[str, ServiceSummary]:
    """``/v1/internal/ui/services`` entries -> service name -> what an instance write changes.

    Per service: its kind, instance count, nodes, tags and check counts by status. An instance
    added to or removed from any node changes the count; one moved to another node changes the
    nodes. Raises TypeError or ValueError on entries of the wrong shape.
    """
    found: dict[str, list[tuple[str, int, tuple[str, ...], tuple[str, ...], int, int, int]]] = {}
    for entry in entries or ():
        found.setdefault(str(entry.get("Name", "")), []).append(
            (
                str(entry.get("Kind") or ""),
                int(entry.get("InstanceCount") or 0),
                tuple(sorted(str(n) for n in entry.get("Nodes") or ())),
                tuple(sorted(str(t) for t in entry.get("Tags") or ())),
                int(entry.get("ChecksPassing") or 0),
                int(entry.get("ChecksWarning") or 0),
                int(entry.get("ChecksCritical") or 0),
            )
        )
    return {name: tuple(sorted(entries_)) for name, entries_ in found.items()}


def changed_summaries(old: dict[str, ServiceSummary], new: dict[str, ServiceSummary]) -> set[str]:
    """Services whose summary differs between two reads (appeared and gone included)."""
    return {name for name in old.keys() | new.keys() if old.get(name) != new.get(name)}


def node_indexes(nodes: Iterable[dict[str, Any]] | None) -> dict[str, int]:
    """``/v1/catalog/nodes`` entries -> node name -> ModifyIndex."""
    return {str(n.get("Node", "")): int(n.get("ModifyIndex") or 0) for n in nodes or ()}


def changed_nodes(old: dict[str, int], new: dict[str, int]) -> tuple[list[str], list[str]]:
    """(nodes new or written since ``old``, nodes gone), each sorted."""
    written = sorted(n for n, index in new.items() if old.get(n) != index)
    return written, sorted(old.keys() - new.keys())


InstanceKey = tuple[str, str]  # (node, service id)


def dump_changes(
    dump: Iterable[dict[str, Any]] | None,
    applied: dict[str, int],
    known: dict[str, set[InstanceKey]],
) -> set[str]:
    """Services of ``known`` that a ``/v1/internal/ui/nodes`` dump shows changed since applied.

    Changed: an instance whose ModifyIndex is above the index the service was last read at (a
    service's index is at least each of its instances'), or one of ``known``'s instances
    missing (deregistered). The dump is unfiltered, so instances the adapter filters out may be
    extra; only a missing *known* instance counts as a removal.
    """
    seen: dict[str, set[InstanceKey]] = {}
    changed: set[str] = set()
    for node in dump or ():
        node_name = str(node.get("Node", ""))
        for service in node.get("Services") or ():
            name = str(service.get("Service", ""))
            if name not in known:
                continue
            seen.setdefault(name, set()).add((node_name, str(service.get("ID", ""))))
            if int(service.get("ModifyIndex") or 0) > applied.get(name, 0):
                changed.add(name)
    for name, instances in known.items():
        if not instances <= seen.get(name, set()):
            changed.add(name)
    return changed


class CatalogFollower:
    """Follows one datacenter catalog-wide (see the module docstring); never raises."""

    def __init__(
        self,
        dc: str,
        clients: ConsulClients,
        params: ConsulParams,
        apply: Callable[[str, QueryResult | None], None],
        services_on_node: Callable[[str], set[str]],
        known_instances: Callable[[Iterable[str]], dict[str, set[InstanceKey]]],
        on_status: Callable[[Any, BaseException | None], None],
        observe: Callable[[str, str], None],
    ) -> None:
        self.dc = dc
        self.key = f"{dc}/fetch"
        self.clients = clients
        self.params = params
        self.apply = apply  # (name, result or None = gone)
        self.services_on_node = services_on_node
        self.known_instances = known_instances  # names -> their applied (node, service id)s
        self.on_status = on_status
        self.observe = observe  # (kind, outcome)
        checks_route = clients.route(f"{dc}/checks")
        self.checks_watch = BlockingWatch(
            f"{dc}/checks",
            lambda index, wait: clients.checks(dc, index, wait, checks_route),
            self._on_checks,
            on_status,
            params.rate_limit,
            observe=lambda outcome: observe("checks", outcome),
        )
        self.route = clients.route(self.key)
        self.limiter = RateLimiter(params.fetch_rate)
        self.reconcile_limiter = RateLimiter(min(params.fetch_rate, RECONCILE_RATE))
        self._sweep_reason = ""
        self.names: dict[str, tuple[str, ...]] = {}  # wanted service -> union of its tags
        self.applied: dict[str, int] = {}  # service -> index of the last applied read
        self.checks: dict[CheckKey, CheckState] | None = None
        self.first_result = asyncio.Event()
        self._listed = False
        self._initial: set[str] = set()
        self._targeted: dict[str, None] = {}  # ordered sets
        self._sweep: dict[str, None] = {}
        self._behind_since: dict[str, float] = {}
        # Why a service is being read, when the reason says what index its answer must exceed:
        # name -> (an index the answer must be above, the list index that announced the name or
        # 0, when). See _answer_predates.
        self._floor: dict[str, tuple[int, int, float]] = {}
        self._list_index = 0
        self._checks_index = 0
        self._unexplained = 0  # list index no read has accounted for yet (0: none)
        # Indexes recent reads answered with: the check list may deliver (and its reads finish)
        # before the service list reports the same write.
        self._recent: deque[int] = deque(maxlen=64)
        self._unexplained_at = 0.0
        self._hinted = 0  # the unexplained list index the summaries were last consulted for
        self._dump_for = 0  # an unexplained list index to look for in the catalog dump
        self.nodes: dict[str, int] | None = None  # node -> ModifyIndex, at the last nodes read
        self.summaries: dict[str, ServiceSummary] | None = None  # at the last summary read
        self.hints = {
            "summary": 0,
            "found": 0,
            "explained": 0,
            "none": 0,
            "checks": 0,
            "lagging": 0,
            "dump": 0,
        }
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._next_reconcile = time.monotonic() + params.reconcile_s
        # Debug/metrics state.
        self.reads = 0
        self.skipped = 0
        self.behind = 0
        self.sweeps = {"unexplained": 0, "reconcile": 0}
        self.last_sweep_seconds: float | None = None
        self._sweep_started: float | None = None
        self.errors = 0
        self.last_error: str | None = None
        self.address = ""
        self.stages = StageTimes()
        self._moved_at = 0.0  # when the list moved with no read yet applied since (0: none)

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self.checks_watch.start()
        self._task = asyncio.create_task(self._run(), name=f"consul-catalog {self.dc}")

    def cancel(self) -> list[asyncio.Task[None]]:
        self.first_result.set()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        tasks = [t for t in (self.checks_watch.cancel(), self._task) if t is not None]
        self._task = None
        for task in tasks:
            task.cancel()
        return tasks

    async def stop(self) -> None:
        await asyncio.gather(*self.cancel(), return_exceptions=True)

    @property
    def failing(self) -> bool:
        return self.last_error is not None

    # -- inputs -----------------------------------------------------------------------------
    def update_list(self, listed: dict[str, tuple[str, ...]], index: int) -> None:
        """A new service list (name -> tag union) at ``index``, from the registry's list watch."""
        first = not self._listed
        self._listed = True
        removed = self.names.keys() - listed.keys()
        for name in sorted(removed):
            self._forget(name)
            self.apply(name, None)
        for name in sorted(listed):
            if self.names.get(name) != listed[name]:
                # New here or its tags changed: that write lies in (previous list, index].
                self._floor[name] = (self._list_index, index, time.monotonic())
                self._enqueue(name)
        self.names = dict(listed)
        self._list_index = index
        if first:
            self._initial = set(listed)
            self._maybe_first()
        elif not removed and index not in self._recent:
            # Something changed in some service; unless a read shows what, sweep.
            if not self._unexplained:
                # The settle window runs from the *first* pending move. Restarting it on every
                # move meant writes spaced closer than SETTLE_S (a steady stream of check-less
                # registrations, as during a deploy) postponed the sweep -- and the reconcile,
                # which waits for it -- for as long as they went on, so none of those changes
                # arrived (seen against a three-server cluster, integration/
                # test_consul_catalog_cluster.py). A sweep reads everything, later moves included.
                self._unexplained_at = time.monotonic()
            self._unexplained = index
            if not self._moved_at:
                self._moved_at = time.monotonic()
        self._wake.set()

    def _on_checks(self, result: QueryResult) -> None:
        new = check_states(result.data)
        old, self.checks = self.checks, new
        previous, self._checks_index = self._checks_index, result.index
        if old is None:
            self._wake.set()  # the baseline: reads may start
            return
        services, nodes = changed_checks(old, new)
        for node in sorted(nodes):
            services |= self.services_on_node(node)
        for name in sorted(services):
            if name in self.names:
                # The check write lies in (previous check list, result.index]; Consul bumps the
                # service's own index with its checks' (and its node's), so a read that saw the
                # write answers above ``previous``.
                self._floor[name] = (previous, 0, time.monotonic())
                self._enqueue(name)
        self._wake.set()

    def _enqueue(self, name: str) -> None:
        self._targeted[name] = None
        self._wake.set()

    def _forget(self, name: str) -> None:
        self.applied.pop(name, None)
        self._targeted.pop(name, None)
        self._sweep.pop(name, None)
        self._behind_since.pop(name, None)
        self._floor.pop(name, None)
        self._initial.discard(name)

    def _maybe_first(self) -> None:
        if self._listed and not self._initial and self.checks is not None:
            self.first_result.set()

    # -- the read loop ----------------------------------------------------------------------
    def _start_sweep(self, reason: str, counted: bool = False) -> None:
        # Recently changed services first: a rolling deploy keeps touching the same few.
        order = sorted(self.names, key=lambda n: -self.applied.get(n, 0))
        self._sweep = dict.fromkeys(order)
        self._sweep_started = time.monotonic()
        self._sweep_reason = reason
        if not counted:
            self.sweeps[reason] += 1
            self.observe("sweep", reason)

    def _next(self, sweep: bool = True) -> str | None:
        """The next service to read: targeted ones first, then (``sweep``) the sweep's."""
        for queue in (self._targeted, self._sweep) if sweep else (self._targeted,):
            while queue:
                name = next(iter(queue))
                del queue[name]
                if name in self.names:
                    return name
        if sweep and self._sweep_started is not None:
            self.last_sweep_seconds = round(time.monotonic() - self._sweep_started, 3)
            self._sweep_started = None
        return None

    def _idle_timeout(self) -> float:
        """Seconds until something must happen without an input (a settled move, a reconcile)."""
        now = time.monotonic()
        if self._wants_hint():
            return 0.0  # the node list first; a sweep only if nothing explains the move
        if self._unexplained:
            checks_index = self.checks_watch.applied_index
            if checks_index >= self._unexplained:
                settle = 0.0  # the check list has caught up: anything it explains is queued
            else:
                settle = max(0.0, self._unexplained_at + SETTLE_S - now)
            if settle <= 0:
                # One dump of the catalog before a read of every service (see _find_in_dump).
                self._dump_for, self._unexplained = self._unexplained, 0
                return 0.0
            return settle
        if now >= self._next_reconcile:
            self._next_reconcile = now + self.params.reconcile_s
            self._start_sweep("reconcile")
            return 0.0
        return self._next_reconcile - now

    async def _run(self) -> None:
        await self.checks_watch.first_result.wait()
        # The node baseline, before the first service read: a node written after it is then
        # either in a later node list's difference or in what those reads see.
        nodes = await self._hint_read("nodes", lambda: self.clients.nodes(self.dc, self.route))
        if nodes is not None:
            self.nodes = node_indexes(nodes.data)
        read = await self._read_summaries()
        if read is not None:
            self.summaries = read[1]
        while True:
            # The check baseline must exist before any read (see the module docstring).
            name = self._next(sweep=False) if self.checks is not None else None
            # A new write is looked for before the rest of a running sweep (a reconcile reads
            # every service: 1,000 of them take seconds).
            if name is None and self.checks is not None and self._wants_hint():
                await self._find_unexplained(self._unexplained)
                continue
            if name is None and self._dump_for:
                await self._find_in_dump(self._dump_for)
                continue
            if name is None and self.checks is not None:
                name = self._next()
                if name is not None and self._sweep_reason == "reconcile":
                    # The periodic sweep is a background bound: paced so that it leaves the
                    # hub's CPU (and Consul's) to the changes that arrive meanwhile.
                    await self.reconcile_limiter.wait()
            if name is None:
                self._maybe_first()
                timeout = self._idle_timeout() if self.checks is not None else 1.0
                if timeout > 0:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            await self.limiter.wait()
            result = await self._read(name)
            try:
                self._handle(name, result)
            except Exception:
                log.exception("consul %s: applying %s failed", self.key, name)

    # -- finding what moved the list without a sweep ----------------------------------------
    def _wants_hint(self) -> bool:
        return bool(self._unexplained) and self._hinted != self._unexplained

    async def _hint_read(self, stage: str, query: Callable[[], QueryResult]) -> QueryResult | None:
        """One read on the follower's connection; None if it failed (the caller falls back on
        the settle-then-sweep path, which retries reads properly)."""
        await self.limiter.wait()
        started = time.monotonic()
        try:
            result = await run_blocking(query, name=self.key)
        except Exception as exc:
            self.observe("hint", "error")
            log.debug("consul %s: hint read failed: %s", self.key, exc)
            return None
        finally:
            self.stages.record(stage, time.monotonic() - started)
        self.reads += 1
        return result

    async def _find_unexplained(self, index: int) -> None:
        """Say which services the list's move to ``index`` touched: from the service summaries
        (:meth:`_find_in_summaries`), else from the node list.

        Why: a write moves the service list, which says nothing about which service (indexes
        cannot be filtered on, measured on Consul 1.16); before this, a write without a check
        cost a settle wait and then a read of every service (a sweep). The summaries name an
        instance added or removed anywhere; for what they cannot see, the node list answers
        much of it in one read: its index moves on every node *and* service write, and each node
        carries its own ModifyIndex, so a registration that created or rewrote its node (every
        catalog-API registration of an external instance does) names that node, and a
        deregistered node is simply missing; one filtered service-list read then names the
        services on the written nodes. It is read at once, also when the write had a check:
        the check list is the bigger read (every check) and often arrives later. What neither
        can see -- an instance changed in place on a node that itself stayed as it was -- is
        left to the check list if the write touched a check (the probe below), else to a sweep
        at once.
        """
        self._hinted = index
        if await self._find_in_summaries(index):
            return
        nodes = await self._hint_read("nodes", lambda: self.clients.nodes(self.dc, self.route))
        if nodes is None:
            return
        if nodes.index < index:
            # This server has not applied the write yet: keep the settle-then-sweep path.
            self.hints["lagging"] += 1
            self.observe("hint", "lagging")
            return
        new = node_indexes(nodes.data)
        old, self.nodes = self.nodes, new
        if old is None:
            written, gone = [], []
        else:
            written, gone = changed_nodes(old, new)
        names: set[str] = set()
        for node in gone:
            names |= self.services_on_node(node)
        quotable = all(bexpr_string(node) is not None for node in written)
        if old is not None and 0 < len(written) <= MAX_HINT_NODES and quotable:
            on_nodes = await self._hint_read(
                "onNodes", lambda: self.clients.services_on_nodes(self.dc, written, self.route)
            )
            if on_nodes is None:
                return
            names |= set(on_nodes.data or {})
        names &= self.names.keys()
        for name in sorted(names):
            self._enqueue(name)
        if self._unexplained != index:
            return  # explained meanwhile, or the list moved on (that move gets its own look)
        if names and any(new.get(node) == index for node in written):
            # The write that moved the list wrote this node; every service on it is being read.
            self._unexplained = 0
            self.hints["explained"] += 1
            self.observe("hint", "explained")
            return
        if self.checks_watch.applied_index < index:
            # Did the write touch a check? Then the check list will name the service (the
            # settle wait). The check table's index alone: a filtered read with no body.
            probe = await self._hint_read(
                "probe", lambda: self.clients.checks_index(self.dc, self.route)
            )
            if probe is None or probe.index >= index:
                self.hints["checks"] += 1
                self.observe("hint", "checks")
                return
        # Nothing accounts for the write: unless one of the reads just queued answers with
        # exactly this index, sweep without waiting out SETTLE_S.
        self._unexplained_at = 0.0
        outcome = "found" if names else "none"
        self.hints[outcome] += 1
        self.observe("hint", outcome)

    async def _read_summaries(self) -> tuple[QueryResult, dict[str, ServiceSummary]] | None:
        result = await self._hint_read(
            "summary", lambda: self.clients.service_summaries(self.dc, self.route)
        )
        if result is None:
            return None
        try:
            return result, service_summaries(result.data)
        except (TypeError, ValueError, AttributeError) as exc:
            log.debug("consul %s: unexpected service summaries (%s)", self.key, exc)
            return None

    async def _find_in_summaries(self, index: int) -> bool:
        """Name the services the list's move to ``index`` touched from one summary read; True
        if it named any (their reads are queued), False to go on with the node list.

        Why first: an instance added to or removed from a node that stays as it was -- how
        Consul agents register their services -- moves only the service list, and the node
        list cannot see it; the summary (``/v1/internal/ui/services``: each service's instance
        count, nodes, tags, check counts) can, at a tenth of the dump's size (measured at
        1,000 services x 5: 0.6 MB against 4.6 MB, 0.04 s against 0.22 s to fetch and parse),
        and it scales with services, not instances. What it cannot see -- an instance changed
        in place (address, port, meta) -- leaves it unchanged; then the node list, the check
        probe and the dump follow as before. Its baseline moves with every read, so writes a
        check list explained meanwhile may be named again: their reads answer with the index
        already applied and are skipped.
        """
        read = await self._read_summaries()
        if read is None:
            return False
        result, new = read
        if result.index < index:
            return False  # a lagging server; the node list's look says so
        old, self.summaries = self.summaries, new
        if old is None:
            return False
        names = changed_summaries(old, new) & self.names.keys()
        if not names:
            return False
        for name in sorted(names):
            self._enqueue(name)
        # Unless one of these reads answers with exactly the list's index (it saw the write
        # that moved the list), the dump follows them at once: see _idle_timeout.
        self._unexplained_at = 0.0
        self.hints["summary"] += 1
        self.observe("hint", "summary")
        return True

    async def _find_in_dump(self, index: int) -> None:
        """Find what the node list could not from one dump of the catalog, else sweep.

        Why: an instance added, changed or removed on a node that stayed as it was leaves no
        trace in any list; only the instances themselves show it. A sweep reads them one
        service per request (measured: 1,000 services x 5, 2.4 s); ``/v1/internal/ui/nodes``
        (the dump Consul's own UI reads; internal, so any failure falls back on the sweep) has
        every instance with its ModifyIndex in one answer (4.6 MB, ~0.1-0.25 s there).
        """
        self._dump_for = 0
        # Counted as the sweep it stands for, whichever way it ends.
        self.sweeps["unexplained"] += 1
        self.observe("sweep", "unexplained")
        dump = await self._hint_read("dump", lambda: self.clients.node_dump(self.dc, self.route))
        if dump is None or dump.index < index:
            self._start_sweep("unexplained", counted=True)
            return
        started = time.monotonic()
        try:
            names = dump_changes(dump.data, self.applied, self.known_instances(self.names))
        except (TypeError, ValueError, AttributeError) as exc:
            log.warning("consul %s: unexpected catalog dump (%s); sweeping", self.key, exc)
            names = set()
        self.stages.record("dumpScan", time.monotonic() - started)
        if not names:
            self._start_sweep("unexplained", counted=True)
            return
        self.hints["dump"] += 1
        self.observe("hint", "dump")
        for name in sorted(names):
            self._enqueue(name)

    async def _read(self, name: str) -> QueryResult:
        retrying = tenacity.AsyncRetrying(
            wait=tenacity.wait_random_exponential(multiplier=BACKOFF_MULTIPLIER_S, max=10.0),
            retry=tenacity.retry_if_exception_type(Exception),
            before_sleep=self._failed,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                started = time.monotonic()
                result = await run_blocking(
                    self.clients.health, self.dc, name, 0, None, self.route, name=self.key
                )
                self.stages.record("read", time.monotonic() - started)
                self.reads += 1
                self.address = result.address
                if self.last_error is not None:
                    self.last_error = None
                    self.on_status(self, None)
                return result
        raise AssertionError("unreachable: retries never stop")

    def _failed(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}" if exc else "unknown error"
        self.observe("fetch", "error")
        self.on_status(self, exc)

    def _handle(self, name: str, result: QueryResult) -> None:
        if name not in self.names:
            return  # left the list while the read was in flight
        self._recent.append(result.index)
        if self._unexplained and result.index == self._unexplained:
            self._unexplained = 0  # this read saw the write that moved the list
        applied = self.applied.get(name)
        if applied is not None and result.index < applied:
            since = self._behind_since.setdefault(name, time.monotonic())
            if time.monotonic() - since < CATCH_UP_S or not result.known_leader:
                # A lagging server: never step back; ask again shortly.
                self.behind += 1
                self.observe("fetch", "behind")
                loop = asyncio.get_running_loop()
                timer = loop.call_later(BEHIND_RETRY_S, lambda: self._retry(name, timer))
                self._timers.add(timer)
                return
            self.observe("reset", "reset")
            log.info("consul %s: index of %s went backwards; reset", self.key, name)
        self._behind_since.pop(name, None)
        self._initial.discard(name)
        self._answer_predates(name, result)
        if applied is not None and result.index == applied:
            self.skipped += 1
            self.observe("fetch", "unchanged")
            return
        self.applied[name] = result.index
        self.observe("fetch", "change")
        started = time.monotonic()
        self.apply(name, result)
        now = time.monotonic()
        self.stages.record("apply", now - started)
        if self._moved_at:
            self.stages.record("moveToApply", now - self._moved_at)
            self._moved_at = 0.0

    def _answer_predates(self, name: str, result: QueryResult) -> None:
        """Read ``name`` again shortly if this answer came from a server that has not applied the
        write that made us read it.

        Why: reads go to their own route, so the server answering may lag the one whose list or
        check list announced the change by a few Raft entries (always so right after a fail-over,
        often in a cluster). Such an answer is no older than what is applied (that case is held
        back above), so it is applied, but it does not show the change; and since nothing else
        would read the service again, the change stayed missing until the next sweep or
        reconcile (60 s) -- seen against a three-server cluster in
        integration/test_consul_catalog_cluster.py: an instance registered with a check, and at
        the first sync a whole service, missing for a minute. The tell: an answer at or below
        the index before the announcing one; or, for a name the list announced, no instance at
        all and an index below the list's (what a server that lacks the service answers; on the
        first list, where nothing came before, this is the only tell). Retried for at most
        ``CATCH_UP_S``, then the answer stands (a filter may really leave a service empty).
        Sweeps have no such tell per service; the reconcile bounds what they miss.
        """
        floor = self._floor.get(name)
        if floor is None:
            return
        above, listed_at, since = floor
        lagging = result.index <= above or (
            listed_at > 0 and not result.data and result.index < listed_at
        )
        if not lagging or time.monotonic() - since >= CATCH_UP_S:
            del self._floor[name]
            return
        self.behind += 1
        self.observe("fetch", "behind")
        loop = asyncio.get_running_loop()
        timer = loop.call_later(BEHIND_RETRY_S, lambda: self._retry(name, timer))
        self._timers.add(timer)

    def _retry(self, name: str, timer: asyncio.TimerHandle) -> None:
        self._timers.discard(timer)
        if name in self.names:
            self._enqueue(name)

    def describe(self) -> dict[str, Any]:
        return {
            "services": len(self.names),
            "checks": len(self.checks or {}),
            "pending": len(self._targeted) + len(self._sweep),
            "reads": self.reads,
            "unchangedReads": self.skipped,
            "heldBack": self.behind,
            "sweeps": dict(self.sweeps),
            "nodes": len(self.nodes or {}),
            "summaries": len(self.summaries or {}),
            "hints": dict(self.hints),
            "lastSweepSeconds": self.last_sweep_seconds,
            "reconcileSeconds": self.params.reconcile_s,
            "fetchRate": self.params.fetch_rate,
            "address": self.address,
            "errors": self.errors,
            "lastError": self.last_error,
            "stages": self.stages.summary(),
        }
