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
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import tenacity

from adapters.eureka import metrics
from adapters.eureka.client import Answer, EurekaHttp, EurekaUnavailable
from adapters.eureka.config import EurekaSettings, parse_settings
from adapters.eureka.mapping import IncrementalMapper
from adapters.eureka.reconcile import (
    Apps,
    apply_delta,
    changed_apps,
    from_instances,
    hash_code,
    instance_count,
)
from adapters.eureka.wire import STATUSES
from registry.aggregate import Member

log = logging.getLogger("meshfed.adapters.eureka")

MAX_PROBLEMS_SHOWN = 20


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
        self.apps: Apps | None = None  # the local copy of the registry, None before a full fetch
        self.server_hash = ""
        self.versions_delta = ""
        self.problems: tuple[str, ...] = ()
        # Plain counters for /debug/registryz and tests; the Prometheus series mirror them.
        self.counters: Counter[str] = Counter()
        self.last_fetch: dict[str, Any] | None = None
        self._need_full = True
        self._full_reason = "start"
        self._failovers_seen = 0
        self._last_full = 0.0
        self._answered_at = 0.0
        self._empty_since: float | None = None
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
        """One fetch: full when needed (start, after an error, on mismatch), else a delta.

        Raises EurekaUnavailable when no server answered; the local state is then unchanged.
        """
        if self._stop.is_set():
            raise _Stopped
        if self.apps is None or self._need_full:
            await self._full_fetch(self._full_reason)
            return
        if time.monotonic() - self._last_full >= self.settings.full_fetch_interval:
            self.counters["periodic_full_fetches"] += 1
            before = self.apps
            await self._full_fetch("periodic")
            if self.apps != before:
                self.counters["drift_repaired"] += 1
                log.info("eureka registry %s: periodic full fetch repaired drift", self.name)
            return
        answer = await self._fetch("delta")
        if answer is None:
            self.counters["deltas_refused"] += 1
            await self._full_fetch("the server serves no deltas")
            return
        outcome = apply_delta(self.apps, answer.applications)
        if not outcome.matches:
            self.counters["hash_mismatches"] += 1
            metrics.HASH_MISMATCHES.labels(self.name).inc()
            reason = (
                f"hash mismatch after delta from {answer.server}: local {outcome.local_hash!r}, "
                f"server {outcome.remote_hash!r}"
            )
            log.info("eureka registry %s: %s; full fetch", self.name, reason)
            await self._full_fetch(reason)
            return
        self._install(outcome.apps, answer, outcome.changed_apps)

    async def _full_fetch(self, reason: str) -> None:
        log.debug("eureka registry %s: full fetch (%s)", self.name, reason)
        answer = await self._fetch("full")
        assert answer is not None
        apps = from_instances(answer.applications.instances)
        if self._hold_empty(apps, answer):
            return
        self._install(apps, answer, None if self.apps is None else changed_apps(self.apps, apps))
        self._need_full = False
        self._last_full = time.monotonic()
        self.member.mark_synced()

    def _hold_empty(self, apps: Apps, answer: Answer) -> bool:
        """True when an empty full answer must not replace a non-empty local copy yet."""
        grace = self.settings.empty_registry_grace
        if apps or not self.apps or grace <= 0:
            self._empty_since, self._hold_reason = None, None
            return False
        now = time.monotonic()
        if self._empty_since is None:
            self._empty_since = now
            log.warning(
                "eureka registry %s: %s answered an empty registry; keeping %d instances for "
                "up to %gs (a restarted server fills up as applications re-register)",
                self.name,
                answer.server,
                instance_count(self.apps),
                grace,
            )
        if now - self._empty_since >= grace:
            log.warning("eureka registry %s: registry still empty after %gs", self.name, grace)
            self._empty_since, self._hold_reason = None, None
            return False
        self.counters["empty_answers_held"] += 1
        self._hold_reason = (
            f"{answer.server} answered an empty registry; keeping the last "
            f"{instance_count(self.apps)} instances for up to {grace:g}s"
        )
        # Keep asking for full answers: a delta from a server that lost its registry means
        # nothing for ours.
        self._need_full, self._full_reason = True, "empty answer held"
        return True

    async def _fetch(self, kind: str) -> Answer | None:
        try:
            if kind == "full":
                answer: Answer | None = await self.http.fetch_full()
            else:
                answer = await self.http.fetch_delta()
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
        self._answered_at = time.perf_counter()
        return answer

    def _install(self, apps: Apps, answer: Answer, changed: frozenset[str] | None) -> None:
        """Make ``apps`` the local copy; re-map the ``changed`` applications (None: all)."""
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
        self.server_hash = answer.applications.apps_hashcode
        self.versions_delta = answer.applications.versions_delta
        # Processing: parsing, applying (delta + hash check, or indexing), mapping, replacing.
        processing = answer.parse_seconds + (time.perf_counter() - self._answered_at)
        seconds = answer.http_seconds + processing
        metrics.FETCH_SECONDS.labels(self.name, answer.kind).observe(seconds)
        statuses = Counter(i.status for app in apps.values() for i in app.values())
        for status in STATUSES:
            metrics.INSTANCES.labels(self.name, status).set(statuses.get(status, 0))
        self.last_fetch = {
            "kind": answer.kind,
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "server": answer.server,
            "seconds": round(seconds, 4),
            "httpSeconds": round(answer.http_seconds, 4),
            "processingSeconds": round(processing, 4),
            "bytes": answer.size,
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
            "appsHashcode": hash_code(apps),
            "serverHashcode": self.server_hash,
            "versionsDelta": self.versions_delta,
            "applications": len(apps),
            "instances": instance_count(apps),
            "lastFetch": self.last_fetch,
            "degraded": self.member.degraded,
            "counters": dict(sorted(self.counters.items())),
            "problems": list(self.problems[:MAX_PROBLEMS_SHOWN]),
            "problemCount": len(self.problems),
        }


def create(member: Member, params: Mapping[str, Any], trust_domain: str) -> EurekaRegistry:
    """Entry point for the ``eureka`` registry kind; raises ConfigErrors for bad parameters."""
    return EurekaRegistry(member, parse_settings(params, member.name), trust_domain)
