"""``memquota``: quotas counted in this process's memory (one Mixer, no HA), as in Istio 0.2.

A quota with ``validDuration`` > 0 is a rate limit over a rolling window: what was granted in the
last ``validDuration`` counts against ``maxAmount``. The window slides in ticks of 100 ms, Istio's
granularity (ticks grow past one minute windows so that a window never has more than 600), and
what a tick granted returns to the pool together.
A quota with ``validDuration`` 0 is an allocation: what was granted is never replenished (Istio's
release call is not part of the Check API).

A request asks for ``amount``; it gets all of it or nothing, or, when ``best_effort``, whatever is
left (possibly 0). A request carrying a ``deduplication_id`` seen within
``minDeduplicationDuration`` gets the earlier answer without consuming again, so a proxy that
retries a timed-out Check is not charged twice.

The clock is a parameter (monotonic seconds) so tests can drive time.
"""

from __future__ import annotations

import collections
import datetime as dt
import time
from collections.abc import Callable, Sequence

import attrs

from meshfed.core.resources import FieldReader
from meshfed.mixer.handlers import params as p
from meshfed.mixer.handlers.api import HandlerEnv, QuotaRequest, QuotaResult
from meshfed.mixer.handlers.names import InstanceIndex
from meshfed.mixer.handlers.quotas import QuotaSpec, UnknownQuota, parse_quotas, quota_key
from meshfed.mixer.templates import Instance, Quota

TICK = 0.1  # seconds
MAX_TICKS = 600  # per window: bounds the memory of one counter
SWEEP_EVERY = 4096  # allocations between sweeps of idle counters
MAX_DEDUP_ENTRIES = 1_000_000  # bounds memory under a flood of distinct ids


@attrs.frozen
class MemQuotaParams:
    quotas: tuple[QuotaSpec, ...] = ()
    min_dedup: dt.timedelta = dt.timedelta(seconds=1)


class RollingWindow:
    """Grants within the last ``window`` seconds, kept per tick."""

    __slots__ = ("max_amount", "span", "tick_us", "ticks", "total")

    def __init__(self, max_amount: int, window: float) -> None:
        self.max_amount = max_amount
        # integer microseconds: with float seconds 10.0 // 0.1 is 99, and a tick would linger
        self.tick_us = round(max(TICK, window / MAX_TICKS) * 1e6)
        self.span = max(1, -(-round(window * 1e6) // self.tick_us))  # ticks in a window
        self.ticks: collections.deque[list[int]] = collections.deque()  # [tick index, granted]
        self.total = 0

    def _expire(self, now: float) -> int:
        current = round(now * 1e6) // self.tick_us
        oldest_alive = current - self.span + 1
        while self.ticks and self.ticks[0][0] < oldest_alive:
            self.total -= self.ticks.popleft()[1]
        return current

    def alloc(self, amount: int, best_effort: bool, now: float) -> int:
        current = self._expire(now)
        granted = _grant(self.max_amount - self.total, amount, best_effort)
        if granted:
            if self.ticks and self.ticks[-1][0] == current:
                self.ticks[-1][1] += granted
            else:
                self.ticks.append([current, granted])
            self.total += granted
        return granted

    def idle(self, now: float) -> bool:
        self._expire(now)
        return self.total == 0


class Allocation:
    """Grants that are never replenished (``validDuration`` 0)."""

    __slots__ = ("max_amount", "total")

    def __init__(self, max_amount: int) -> None:
        self.max_amount = max_amount
        self.total = 0

    def alloc(self, amount: int, best_effort: bool, now: float) -> int:
        granted = _grant(self.max_amount - self.total, amount, best_effort)
        self.total += granted
        return granted

    def idle(self, now: float) -> bool:
        return False


def _grant(available: int, amount: int, best_effort: bool) -> int:
    if amount <= 0 or available <= 0:
        return 0
    if amount <= available:
        return amount
    return available if best_effort else 0


class MemQuota:
    def __init__(
        self,
        params: MemQuotaParams,
        clock: Callable[[], float] = time.monotonic,
        name: str = "memquota",
    ) -> None:
        self._name = name
        self._specs = InstanceIndex((q.name, q) for q in params.quotas)
        self._dedup_for = params.min_dedup.total_seconds()
        self._clock = clock
        self._counters: dict[str, RollingWindow | Allocation] = {}
        # (deduplication id, counter key) -> (answer, expiry); insertion order is expiry order
        self._dedup: collections.OrderedDict[tuple[str, str], tuple[QuotaResult, float]] = (
            collections.OrderedDict()
        )
        self._allocs = 0

    async def quota(self, instance: Quota, request: QuotaRequest) -> QuotaResult:
        return self.alloc(instance, request)

    def alloc(self, instance: Quota, request: QuotaRequest) -> QuotaResult:
        """Synchronous, hence atomic on the event loop: no await between read and update."""
        spec = self._specs.get(instance.name)
        if spec is None:
            raise UnknownQuota(self._name, instance.name, [q.name for q in self._specs.values()])
        now = self._clock()
        key = quota_key(spec.name, instance.dimensions)
        dedup_key = (request.deduplication_id, key)
        if request.deduplication_id:
            self._expire_dedup(now)
            previous = self._dedup.get(dedup_key)
            if previous is not None:
                return previous[0]
        max_amount, valid = spec.limit(instance.dimensions)
        counter = self._counters.get(key)
        if counter is None or counter.max_amount != max_amount:
            seconds = valid.total_seconds()
            counter = RollingWindow(max_amount, seconds) if seconds > 0 else Allocation(max_amount)
            self._counters[key] = counter
        granted = counter.alloc(request.amount, request.best_effort, now)
        result = QuotaResult(granted, valid if granted else dt.timedelta(0))
        if request.deduplication_id:
            if len(self._dedup) >= MAX_DEDUP_ENTRIES:
                self._dedup.popitem(last=False)
            self._dedup[dedup_key] = (result, now + self._dedup_for)
        self._allocs += 1
        if self._allocs % SWEEP_EVERY == 0:
            self._sweep(now)
        return result

    def _expire_dedup(self, now: float) -> None:
        while self._dedup:
            _, (_, expiry) = next(iter(self._dedup.items()))
            if expiry > now:
                return
            self._dedup.popitem(last=False)

    def _sweep(self, now: float) -> None:
        for key in [k for k, c in self._counters.items() if c.idle(now)]:
            del self._counters[key]

    @property
    def counters(self) -> int:
        return len(self._counters)

    async def report(self, instances: Sequence[Instance]) -> None:
        return None

    async def close(self) -> None:
        self._counters.clear()
        self._dedup.clear()


class MemQuotaKind:
    name = "memquota"
    templates = frozenset({"quota"})

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock

    def parse_params(self, reader: FieldReader) -> MemQuotaParams | None:
        reader = p.message(reader)
        before = len(reader.errors)
        reader.unknown_fields({"quotas", "minDeduplicationDuration"})
        quotas = parse_quotas(reader, rate_only=False, with_algorithm=False)
        dedup = p.duration(
            reader,
            "minDeduplicationDuration",
            MemQuotaParams().min_dedup,
            minimum=dt.timedelta(milliseconds=1),
        )
        if len(reader.errors) > before:
            return None
        return MemQuotaParams(quotas, dedup)

    async def build(self, params: MemQuotaParams, env: HandlerEnv) -> MemQuota:
        return MemQuota(params, self._clock, env.name)


KIND = MemQuotaKind()
