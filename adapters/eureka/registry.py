"""The ``eureka`` registry kind: a Eureka registry federated into the aggregate, kept live.

Why this shape: Eureka has no watch API, only a full listing (``apps/``) and a delta of recent
changes (``apps/delta``). Eureka's own client polls the delta and checks a hash code to detect
drift; this adapter does the same, because it is the only protocol every Eureka server speaks.

The loop (see :meth:`EurekaRegistry.run`):

1. Full fetch, translate, ``member.replace``, ``member.mark_synced()``.
2. Every ``fetchInterval``: delta fetch; apply it to a copy of the local registry; if the
   recomputed hash code equals the server's, install it, else count a hash mismatch and do a full
   fetch (Eureka's ``reconcileAndLogDifference``). A server with deltas disabled gets full fetches.
   Every ``fullFetchInterval`` a full fetch is done anyway: Eureka's response cache can serve a
   delta computed just before a change for up to its expiry (180 s), and when that stale delta
   agrees with the local copy no hash code can tell. Such a full fetch that finds a difference
   counts as ``drift_repaired``.
3. When no server answers: the member is marked degraded (``/debug/registryz``,
   ``/healthz/ready``'s ``degraded`` list, ``meshfed_eureka_degraded``), the last known state stays
   in force, and attempts continue with jittered exponential backoff (``tenacity``). The first
   success after an outage is a full fetch, and since ``member.replace`` diffs against what it
   had, only real differences reach Pilot.
4. A full answer with *no* instances while the local copy has some is held back for
   ``emptyRegistryGrace`` (degraded meanwhile): a restarted server (Spring Cloud opens a
   standalone server to reads at once) answers an empty registry until its applications
   re-register on their next heartbeat, and applying that would black-hole every Eureka service
   for a renewal interval. Emptiness that lasts past the grace is real and is applied; a delta
   that cancels every instance is applied at once, since it names each cancellation.

Remote regions (``region`` + ``remoteRegions``, see ``docs/eureka.md``): the loop above runs
per *view*, one ``regions=`` query each, every view with its own local copy and its own hash
check, because the server computes ``apps__hashcode`` over exactly what that query returns (its
local instances plus the regions asked for). Eureka's answers do not say which region an
instance came from, so the views are: ``regions=<remote>`` per remote region, and
``regions=<own region>`` last, which names no remote registry and so returns local instances
only (a plain ``apps/`` would not: with transparent fallback, on by default, it already mixes in
every remote region, untagged, and its delta hash disagrees with its full one). An instance is
remote when the local-only view lacks it (:func:`~adapters.eureka.reconcile.merge_regions`).
The local view is fetched last so that a local instance registered between the two requests is
never taken for a remote one.

Nothing is pushed when an answer changes nothing the mesh can see: only the applications that
changed are mapped again (:class:`~adapters.eureka.mapping.IncrementalMapper`), and the
aggregate emits only real differences. Outages never
raise out of :meth:`run`; a bug does, and the hub's supervisor restarts the adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import attrs
import tenacity

from meshfed.adapters.contract import AdapterContext
from meshfed.adapters.eureka import metrics
from meshfed.adapters.eureka.client import Answer, EurekaHttp, EurekaUnavailable
from meshfed.adapters.eureka.config import EurekaSettings, parse_settings
from meshfed.adapters.eureka.mapping import IncrementalMapper
from meshfed.adapters.eureka.reconcile import (
    Apps,
    apply_delta,
    changed_apps,
    from_instances,
    hash_code,
    instance_count,
    merge_regions,
)
from meshfed.adapters.eureka.wire import STATUSES
from meshfed.registry.aggregate import Member

log = logging.getLogger("meshfed.adapters.eureka")

MAX_PROBLEMS_SHOWN = 20


@attrs.define
class View:
    """One ``regions=`` query and the local copy of what it answers."""

    region: str  # the region of the instances this view contributes ("" = not known)
    regions: str  # the ``regions=`` value ("" = a plain apps/, as without region config)
    apps: Apps | None = None
    server_hash: str = ""
    versions_delta: str = ""
    need_full: bool = True
    reason: str = "start"
    empty_since: float | None = None

    def describe(self) -> dict[str, Any]:
        apps = self.apps or {}
        return {
            "region": self.region,
            "query": f"regions={self.regions}" if self.regions else "",
            "appsHashcode": hash_code(apps),
            "serverHashcode": self.server_hash,
            "instances": instance_count(apps),
        }


class _Stopped(Exception):
    """Raised out of an interruptible sleep once :meth:`EurekaRegistry.stop` was called."""


class EurekaRegistry:
    """A member of the aggregate fed by one Eureka registry (a list of peer servers)."""

    kind = "eureka"

    def __init__(self, member: Member, settings: EurekaSettings, trust_domain: str) -> None:
        self.member = member
        self.settings = settings
        self.trust_domain = trust_domain
        self.http = EurekaHttp(settings)
        self.mapper = IncrementalMapper(settings.mapping)
        # What the mesh sees: every view merged, instances tagged with their region; None
        # before every view has had a full fetch.
        self.apps: Apps | None = None
        self.local = View(settings.region, settings.region)
        self.remotes = [View(region, region) for region in settings.remote_regions]
        self.views = [*self.remotes, self.local]  # local last (see the module docstring)
        self.problems: tuple[str, ...] = ()
        # Plain counters for /debug/registryz and tests; the Prometheus series mirror them.
        self.counters: Counter[str] = Counter()
        self.last_fetch: dict[str, Any] | None = None
        self._need_full = True
        self._full_reason = "start"
        self._failovers_seen = 0
        self._last_full = 0.0
        self._hold_reason: str | None = None  # degraded although the server answers
        self._stop = asyncio.Event()

    @property
    def name(self) -> str:
        return self.member.name

    # -- loop -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Full fetch, then delta fetches every ``fetchInterval`` until :meth:`stop`."""
        try:
            while not self._stop.is_set():
                await self._sync_until_success()
                await self._sleep(self.settings.fetch_interval)
        except _Stopped:
            pass
        finally:
            await self.http.close()

    @property
    def synced(self) -> bool:
        return self.member.synced

    async def stop(self) -> None:
        self._stop.set()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        if self._stop.is_set():
            raise _Stopped

    async def _sync_until_success(self) -> None:
        base = min(1.0, self.settings.fetch_interval)
        retrying = tenacity.AsyncRetrying(
            # Full jitter with a floor, so a fleet of hubs does not retry in lock-step and no
            # hub spins when the first waits come out near zero.
            wait=tenacity.wait_random_exponential(
                multiplier=base, min=base / 4, max=self.settings.max_backoff
            ),
            retry=tenacity.retry_if_exception_type(EurekaUnavailable),
            sleep=self._sleep,
            before_sleep=self._unreachable,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self.sync_once()
        if self._hold_reason is not None:
            self._set_degraded(self._hold_reason)
        elif self.member.degraded:
            server = self.http.current_server
            log.info("eureka registry %s reachable again via %s", self.name, server)
            self._set_degraded(None)

    def _set_degraded(self, reason: str | None) -> None:
        self.member.set_degraded(reason)
        metrics.DEGRADED.labels(self.name).set(1 if reason else 0)

    def _unreachable(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        reason = str(exc) if exc else "Eureka unreachable"
        wait = state.next_action.sleep if state.next_action else 0.0
        if not self.member.degraded:
            log.warning("eureka registry %s: %s; keeping the last known state", self.name, reason)
        log.debug("eureka registry %s: retry in %.2fs", self.name, wait)
        self._set_degraded(reason)

    # -- one round --------------------------------------------------------------------------
    async def sync_once(self) -> None:
        """One round: per view a full fetch when needed (start, after an error, on mismatch,
        periodically), else a delta; then the views are merged and installed.

        Raises EurekaUnavailable when no server answered; the mesh's state is then unchanged.
        """
        if self._stop.is_set():
            raise _Stopped
        started = time.perf_counter()
        periodic = (
            self.apps is not None
            and not self._need_full
            and time.monotonic() - self._last_full >= self.settings.full_fetch_interval
        )
        full_round = self.apps is None or self._need_full or periodic
        if full_round:
            reason = "periodic" if periodic else self._full_reason
            for view in self.views:
                view.need_full, view.reason = True, reason
        if periodic:
            self.counters["periodic_full_fetches"] += 1
        before = self.apps
        self._hold_reason = None
        answers: list[Answer] = []
        changed: set[str] | None = set()
        for view in self.views:
            view_changed = await self._sync_view(view, answers)
            if view_changed is None or changed is None:
                changed = None
            else:
                changed |= view_changed
        if any(view.apps is None for view in self.views):
            return  # defensive: every view answered, so each has a copy
        if full_round:
            self._need_full = False
            self._last_full = time.monotonic()
        if changed is None or self.apps is None:
            apps = merge_regions(self._local_pair(), self._remote_pairs())
            changed = None if self.apps is None else changed_apps(self.apps, apps)
        else:
            apps = merge_regions(self._local_pair(), self._remote_pairs(), self.apps, changed)
            changed = frozenset(changed)
        self._install(apps, answers, changed, started)
        if periodic and self.apps != before:
            self.counters["drift_repaired"] += 1
            log.info("eureka registry %s: periodic full fetch repaired drift", self.name)
        self.member.mark_synced()

    def _local_pair(self) -> tuple[str, Apps]:
        return self.local.region, self.local.apps or {}

    def _remote_pairs(self) -> list[tuple[str, Apps]]:
        return [(view.region, view.apps or {}) for view in self.remotes]

    async def _sync_view(self, view: View, answers: list[Answer]) -> frozenset[str] | None:
        """Bring one view up to date; the applications that changed in it (None: all)."""
        if view.apps is None or view.need_full:
            return await self._view_full(view, view.reason, answers)
        answer = await self._fetch("delta", view)
        if answer is None:
            self.counters["deltas_refused"] += 1
            return await self._view_full(view, "the server serves no deltas", answers)
        answers.append(answer)
        outcome = apply_delta(view.apps, answer.applications)
        if not outcome.matches:
            self.counters["hash_mismatches"] += 1
            metrics.HASH_MISMATCHES.labels(self.name).inc()
            where = f" (regions={view.regions})" if view.regions else ""
            reason = (
                f"hash mismatch after delta from {answer.server}{where}: local "
                f"{outcome.local_hash!r}, server {outcome.remote_hash!r}"
            )
            log.info("eureka registry %s: %s; full fetch", self.name, reason)
            return await self._view_full(view, reason, answers)
        view.apps = outcome.apps
        view.server_hash = answer.applications.apps_hashcode
        view.versions_delta = answer.applications.versions_delta
        return outcome.changed_apps

    async def _view_full(
        self, view: View, reason: str, answers: list[Answer]
    ) -> frozenset[str] | None:
        log.debug("eureka registry %s: full fetch of %r (%s)", self.name, view.regions, reason)
        answer = await self._fetch("full", view)
        assert answer is not None
        answers.append(answer)
        apps = from_instances(answer.applications.instances)
        if self._hold_empty(view, apps, answer):
            return frozenset()
        changed = None if view.apps is None else changed_apps(view.apps, apps)
        view.apps = apps
        view.server_hash = answer.applications.apps_hashcode
        view.versions_delta = answer.applications.versions_delta
        view.need_full = False
        return changed

    def _hold_empty(self, view: View, apps: Apps, answer: Answer) -> bool:
        """True when an empty full answer must not replace a non-empty copy of ``view`` yet."""
        grace = self.settings.empty_registry_grace
        if apps or not view.apps or grace <= 0:
            view.empty_since = None
            return False
        now = time.monotonic()
        if view.empty_since is None:
            view.empty_since = now
            log.warning(
                "eureka registry %s: %s answered an empty registry; keeping %d instances for "
                "up to %gs (a restarted server fills up as applications re-register)",
                self.name,
                answer.server,
                instance_count(view.apps),
                grace,
            )
        if now - view.empty_since >= grace:
            log.warning("eureka registry %s: registry still empty after %gs", self.name, grace)
            view.empty_since = None
            return False
        self.counters["empty_answers_held"] += 1
        self._hold_reason = (
            f"{answer.server} answered an empty registry; keeping the last "
            f"{instance_count(view.apps)} instances for up to {grace:g}s"
        )
        # Keep asking for full answers: a delta from a server that lost its registry means
        # nothing for ours.
        view.need_full, view.reason = True, "empty answer held"
        return True

    async def _fetch(self, kind: str, view: View) -> Answer | None:
        try:
            if kind == "full":
                answer: Answer | None = await self.http.fetch_full(view.regions)
            else:
                answer = await self.http.fetch_delta(view.regions)
        except EurekaUnavailable:
            self.counters["errors"] += 1
            metrics.FETCHES.labels(self.name, kind, "error").inc()
            # Deltas only cover a recent window; after an outage only a full fetch is safe.
            self._need_full, self._full_reason = True, "resync after an outage"
            raise
        finally:
            if self.http.failovers != self._failovers_seen:
                metrics.FAILOVERS.labels(self.name).inc(self.http.failovers - self._failovers_seen)
                self._failovers_seen = self.http.failovers
        self.counters[f"{kind}_fetches"] += 1
        metrics.FETCHES.labels(self.name, kind, "ok").inc()
        return answer

    def _install(
        self, apps: Apps, answers: list[Answer], changed: frozenset[str] | None, started: float
    ) -> None:
        """Make ``apps`` the mesh's view; re-map the ``changed`` applications (None: all)."""
        if changed is None or changed:
            if changed is None:
                model = self.mapper.rebuild(apps)
            else:
                model = self.mapper.update(apps, changed)
            event = self.member.replace(model.services, model.endpoints)
            if not event.empty:
                self.counters["pushes"] += 1
            for problem in set(model.problems) - set(self.problems):
                log.warning("eureka registry %s: %s", self.name, problem)
            self.problems = model.problems
        self.apps = apps
        # Processing: parsing, applying (delta + hash check, or indexing), merging, mapping,
        # replacing: the whole round but the time spent waiting for HTTP answers.
        seconds = time.perf_counter() - started
        http_seconds = sum(a.http_seconds for a in answers)
        processing = max(0.0, seconds - http_seconds)
        kind = "full" if any(a.kind == "full" for a in answers) else "delta"
        metrics.FETCH_SECONDS.labels(self.name, kind).observe(seconds)
        statuses = Counter(i.status for app in apps.values() for i in app.values())
        for status in STATUSES:
            metrics.INSTANCES.labels(self.name, status).set(statuses.get(status, 0))
        self.last_fetch = {
            "kind": kind,
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "server": answers[-1].server if answers else self.http.current_server,
            "requests": len(answers),
            "seconds": round(seconds, 4),
            "httpSeconds": round(http_seconds, 4),
            "processingSeconds": round(processing, 4),
            "bytes": sum(a.size for a in answers),
            "changed": changed is None or bool(changed),
        }

    # -- debug ------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        apps = self.apps or {}
        return {
            **self.http.describe(),
            "fetchIntervalSeconds": self.settings.fetch_interval,
            "fullFetchIntervalSeconds": self.settings.full_fetch_interval,
            "hostnameTemplate": self.settings.mapping.hostname_template,
            "region": self.settings.region,
            "remoteRegions": list(self.settings.remote_regions),
            # The local view's reconcile data (the whole registry without region config).
            "appsHashcode": hash_code(self.local.apps or {}),
            "serverHashcode": self.local.server_hash,
            "versionsDelta": self.local.versions_delta,
            "views": [view.describe() for view in self.views] if self.remotes else [],
            "applications": len(apps),
            "instances": instance_count(apps),
            "lastFetch": self.last_fetch,
            "degraded": self.member.degraded,
            "counters": dict(sorted(self.counters.items())),
            "problems": list(self.problems[:MAX_PROBLEMS_SHOWN]),
            "problemCount": len(self.problems),
        }


def create(context: AdapterContext) -> EurekaRegistry:
    """Entry point for the ``eureka`` registry kind; raises ConfigErrors for bad parameters."""
    member = context.member
    return EurekaRegistry(member, parse_settings(context.params, member.name), context.trust_domain)
