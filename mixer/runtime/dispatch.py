"""Check, quota and Report over the current snapshot.

Check: every rule with check actions whose match holds (and whose namespace, if any, is the
request's ``destination.namespace``; and whose protocol is the request's: a rule labelled
``istio-protocol: tcp`` serves requests with ``context.protocol == "tcp"``, every other rule the
rest, as in Istio 0.2) contributes its instances; each instance goes to its
handler. The verdict is the most restrictive one: the first non-OK status (messages of all
denials joined, as Istio does), the smallest ``valid_duration`` and ``valid_use_count``. No
applicable rule: OK for :data:`DEFAULT_VALID_DURATION` / :data:`DEFAULT_VALID_USE_COUNT`.

Quota (only when the precondition is OK, as in Istio): each requested quota name goes to the
first applicable quota action whose instance is named so (short name or ``name.quota.ns``); none:
the amount is granted (nothing limits it). A retried Check (same ``deduplication_id``) gets the
first answer back and allocates nothing again.

Report: each bag of the batch selects its report rules; instances are collected per handler and
each handler gets one ``report`` call with all of its instances of the batch.

Failure isolation: every handler call is bounded by ``handler_timeout``; a handler that raises or
times out is counted and logged, and the others still run. Fail policy for Check: **closed** --
a failed check handler makes the verdict UNAVAILABLE (the request is denied) -- unless
``fail_open`` is set, in which case the failed handler's vote is ignored. A failed quota handler
grants nothing (closed) or the amount asked (open). A rule whose match cannot be evaluated (an
attribute is absent) does not apply; an instance that cannot be built is skipped, counted as a
rule error, and for Check follows the fail policy like a handler error.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import cachetools

from meshfed.mixer.attributes.enrich import Enricher, client_refs
from meshfed.mixer.config.compile import CompiledRule, InstanceError
from meshfed.mixer.expr import MISSING, EvalError
from meshfed.mixer.handlers.api import (
    OK,
    UNAVAILABLE,
    QuotaRequest,
)
from meshfed.mixer.runtime import metrics
from meshfed.mixer.runtime.snapshot import Snapshot

log = logging.getLogger("meshfed.mixer.runtime")

_EVAL_CHECK = metrics.EVAL_SECONDS.labels("check")
_EVAL_REPORT = metrics.EVAL_SECONDS.labels("report")

# Istio 0.2's defaults for a verdict no rule limited.
DEFAULT_VALID_DURATION = dt.timedelta(seconds=10)
DEFAULT_VALID_USE_COUNT = 200


@attrs.frozen(slots=True)
class QuotaOutcome:
    granted: int
    valid_duration: dt.timedelta
    refs: Mapping[Any, int]


@attrs.frozen(slots=True)
class CheckOutcome:
    code: int
    message: str
    valid_duration: dt.timedelta
    valid_use_count: int
    refs: Mapping[Any, int]  # in terms of the client's attributes
    quotas: Mapping[str, QuotaOutcome]


@attrs.define
class Options:
    handler_timeout: float = 1.0
    fail_open: bool = False
    dedup_ttl: float = 10.0


class Dispatcher:
    def __init__(self, snapshot: Snapshot, enricher: Enricher | None, options: Options) -> None:
        self.snapshot = snapshot
        self.enricher = enricher
        self.options = options
        self._dedup: cachetools.TTLCache[str, CheckOutcome] = cachetools.TTLCache(
            maxsize=100_000, ttl=options.dedup_ttl
        )
        self._matches: dict[str, Any] = {}  # rule -> its match counter (labels() is slow)
        self._calls: dict[tuple[str, str], Any] = {}
        # Read-only taps on every reported bag after enrichment (e.g. a service graph); each
        # must be cheap and must not raise: they run on the Report path.
        self.report_observers: list[Callable[[Mapping[str, Any]], None]] = []

    # -- rule selection --------------------------------------------------------------------
    def _select(
        self, rules: Sequence[CompiledRule], bag: Mapping[str, Any], refs: dict[Any, int]
    ) -> Iterator[CompiledRule]:
        """The rules that apply to ``bag``, in order; every attribute looked at goes to refs."""
        protocol = bag.get("context.protocol", MISSING)
        refs["context.protocol"] = 1 if protocol is MISSING else 2
        tcp = protocol == "tcp"
        namespace: Any = None
        matches = self._matches
        for rule in rules:
            if rule.tcp is not tcp:
                continue
            if rule.namespace:
                if namespace is None:
                    namespace = bag.get("destination.namespace", MISSING)
                    refs["destination.namespace"] = 1 if namespace is MISSING else 2
                if namespace != rule.namespace:
                    continue
            if rule.match is not None:
                try:
                    if rule.match.fn(bag, refs) is not True:
                        continue
                except EvalError as exc:
                    metrics.RULE_ERRORS.labels(rule.ref).inc()
                    log.debug("rule %s: match failed: %s", rule.ref, exc)
                    continue
            counter = matches.get(rule.ref)
            if counter is None:
                counter = matches[rule.ref] = metrics.RULE_MATCHES.labels(rule.ref)
            counter.inc()
            yield rule

    def _enrich(self, bag: Mapping[str, Any]) -> Mapping[str, Any]:
        return self.enricher.enrich(bag) if self.enricher is not None else bag

    # -- Check -----------------------------------------------------------------------------
    async def check(
        self,
        wire: Mapping[str, Any],
        quotas: Mapping[str, tuple[int, bool]] | None = None,
        deduplication_id: str = "",
    ) -> CheckOutcome:
        if deduplication_id and deduplication_id in self._dedup:
            return self._dedup[deduplication_id]
        snap = self.snapshot
        snap.enter()
        try:
            outcome = await self._check(snap, wire, quotas or {}, deduplication_id)
        finally:
            snap.leave()
        if deduplication_id:
            self._dedup[deduplication_id] = outcome
        metrics.CHECKS.labels(str(outcome.code)).inc()
        return outcome

    async def _check(
        self,
        snap: Snapshot,
        wire: Mapping[str, Any],
        quotas: Mapping[str, tuple[int, bool]],
        dedup: str,
    ) -> CheckOutcome:
        started = time.perf_counter()
        bag = self._enrich(wire)
        refs: dict[Any, int] = {}
        calls: list[tuple[str, Any]] = []
        failures: list[str] = []
        for rule in self._select(snap.config.check_rules, bag, refs):
            for action in rule.check:
                for inst in action.instances:
                    try:
                        calls.append((action.handler, inst.build(bag, refs)))
                    except (InstanceError, EvalError) as exc:
                        metrics.RULE_ERRORS.labels(rule.ref).inc()
                        failures.append(f"{rule.ref}: {exc}")
        _EVAL_CHECK.observe(time.perf_counter() - started)

        results = await self._run_checks(snap, calls)
        code, messages = OK, []
        valid_duration, valid_use_count = DEFAULT_VALID_DURATION, DEFAULT_VALID_USE_COUNT
        first = True
        for (handler, _), result in zip(calls, results, strict=True):
            if isinstance(result, str):
                failures.append(f"{handler}: {result}")
                continue
            if first:
                valid_duration, valid_use_count, first = (
                    result.valid_duration,
                    result.valid_use_count,
                    False,
                )
            else:
                valid_duration = min(valid_duration, result.valid_duration)
                valid_use_count = min(valid_use_count, result.valid_use_count)
            if result.code != OK:
                if code == OK:
                    code = result.code
                messages.append(f"{handler}: {result.message}" if result.message else handler)
        if failures and not self.options.fail_open:
            if code == OK:
                code = UNAVAILABLE
            messages.extend(failures)
            valid_duration, valid_use_count = dt.timedelta(0), 0  # never cache a failure
        quota_out: dict[str, QuotaOutcome] = {}
        if code == OK:
            for name, (amount, best_effort) in quotas.items():
                quota_out[name] = await self._quota(
                    snap, bag, wire, name, amount, best_effort, dedup
                )
        return CheckOutcome(
            code,
            "; ".join(messages),
            valid_duration,
            valid_use_count,
            client_refs(refs, wire),
            quota_out,
        )

    async def _call(self, coro: Any, handler: str, variety: str) -> Any:
        counter = self._calls.get((handler, variety))
        if counter is None:
            counter = self._calls[(handler, variety)] = metrics.HANDLER_CALLS.labels(
                handler, variety
            )
        counter.inc()
        try:
            async with asyncio.timeout(self.options.handler_timeout):
                return await coro
        except TimeoutError:
            metrics.HANDLER_ERRORS.labels(handler, variety, "timeout").inc()
            log.error("handler %s: %s timed out", handler, variety)
            return f"timed out after {self.options.handler_timeout}s"
        except Exception as exc:
            metrics.HANDLER_ERRORS.labels(handler, variety, "error").inc()
            log.error("handler %s: %s failed: %s", handler, variety, exc)
            return f"failed: {exc}"

    async def _run_checks(self, snap: Snapshot, calls: list[tuple[str, Any]]) -> list[Any]:
        coros = []
        for handler_ref, instance in calls:
            handler = snap.handlers.get(handler_ref)
            if handler is None:
                coros.append(_value(f"handler {handler_ref} is not available"))
            else:
                coros.append(self._call(handler.check(instance), handler_ref, "check"))
        if len(coros) == 1:
            return [await coros[0]]
        return list(await asyncio.gather(*coros)) if coros else []

    async def _quota(
        self,
        snap: Snapshot,
        bag: Mapping[str, Any],
        wire: Mapping[str, Any],
        name: str,
        amount: int,
        best_effort: bool,
        dedup: str,
    ) -> QuotaOutcome:
        metrics.QUOTA_REQUESTS.labels(name).inc(amount)
        refs: dict[Any, int] = {}
        for rule in self._select(snap.config.quota_rules, bag, refs):
            for action in rule.quota:
                for inst in action.instances:
                    if name not in (inst.name, inst.ref):
                        continue
                    handler = snap.handlers.get(action.handler)
                    try:
                        instance = inst.build(bag, refs)
                    except (InstanceError, EvalError) as exc:
                        metrics.RULE_ERRORS.labels(rule.ref).inc()
                        result: Any = str(exc)
                    else:
                        # a Check without an id is not a retry of anything: an id made
                        # of the quota name alone would make every later Check a "retry"
                        request = QuotaRequest(amount, best_effort, dedup + name if dedup else "")
                        result = (
                            await self._call(
                                handler.quota(instance, request), action.handler, "quota"
                            )
                            if handler is not None
                            else "handler not available"
                        )
                    if isinstance(result, str):
                        granted = amount if self.options.fail_open else 0
                        out = QuotaOutcome(granted, dt.timedelta(0), client_refs(refs, wire))
                    else:
                        out = QuotaOutcome(
                            result.granted, result.valid_duration, client_refs(refs, wire)
                        )
                    metrics.QUOTA_GRANTS.labels(name).inc(out.granted)
                    return out
        metrics.QUOTA_GRANTS.labels(name).inc(amount)
        return QuotaOutcome(amount, DEFAULT_VALID_DURATION, client_refs(refs, wire))

    # -- Report ----------------------------------------------------------------------------
    async def report(self, bags: Sequence[Mapping[str, Any]]) -> int:
        """Dispatch a batch; returns the number of handler calls that failed."""
        snap = self.snapshot
        snap.enter()
        try:
            return await self._report(snap, bags)
        finally:
            snap.leave()

    async def _report(self, snap: Snapshot, bags: Sequence[Mapping[str, Any]]) -> int:
        started = time.perf_counter()
        batches: dict[str, list[Any]] = {}
        rules = snap.config.report_rules
        enrich = self._enrich
        observers = self.report_observers
        for wire in bags:
            bag = enrich(wire)
            for observe in observers:
                observe(bag)
            refs: dict[Any, int] = {}
            for rule in self._select(rules, bag, refs):
                for action in rule.report:
                    batch = batches.setdefault(action.handler, [])
                    for inst in action.instances:
                        try:
                            batch.append(inst.build(bag, refs))
                        except (InstanceError, EvalError) as exc:
                            metrics.RULE_ERRORS.labels(rule.ref).inc()
                            log.debug("rule %s: %s", rule.ref, exc)
        _EVAL_REPORT.observe(time.perf_counter() - started)
        coros = []
        for handler_ref, instances in batches.items():
            handler = snap.handlers.get(handler_ref)
            if handler is None or not instances:
                continue
            coros.append(self._call(handler.report(instances), handler_ref, "report"))
        results = await asyncio.gather(*coros)
        return sum(1 for r in results if isinstance(r, str))


async def _value(value: Any) -> Any:
    return value
