"""Batching of Report attribute bags to Mixer, with bounded memory and retry.

:meth:`ReportBatcher.add` queues one attribute bag (an access-log entry turned into
attributes) and never blocks or fails. :meth:`ReportBatcher.run`, a long-running task, sends a
batch when ``max_entries`` bags are pending or the oldest pending bag has waited ``max_delay``,
as delta-encoded ``ReportRequest``\\ s (:func:`meshfed.mixer.attributes.codec.encode_batches`:
usually one request; another starts where a bag lacks an attribute of its predecessor).

Promises:

- **No loss on a short hub outage**: a batch whose send fails goes back to the front of the
  queue and is retried after a jittered, doubling backoff (``retry_min`` .. ``retry_max``);
  bags are sent in the order they were added. Delivery is at least once: a send cancelled or
  failed after the hub received it is sent again.
- **Bounded memory**: at most ``max_pending`` bags are held. Beyond that the *oldest* bag not
  being sent is dropped and counted (``stats.dropped``): after a long outage the recent
  traffic is what dashboards and alerts need, and the oldest is the most likely to be stale.
- A bag that cannot be encoded (a value of no attribute type) is dropped and counted
  (``stats.invalid``) instead of blocking the queue behind it.

The send function is injected (``Callable[[ReportRequest, bags], Awaitable[None]]``: the
request and the bags it carries, in order, for a caller that traces them; an exception means
"not delivered"), so this module knows nothing of gRPC. One event loop owns a batcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs

from meshfed.mixer.api.v1 import report_pb2
from meshfed.mixer.attributes import codec

log = logging.getLogger("meshfed.nodeagent.mixerclient.report")

SendReport = Callable[[report_pb2.ReportRequest, Sequence[Mapping[str, Any]]], Awaitable[None]]


@attrs.define(slots=True)
class ReportStats:
    """Counters since the batcher was made (a server exports them as metrics)."""

    added: int = 0  # bags given to add()
    sent: int = 0  # bags the hub accepted
    requests: int = 0  # ReportRequests the hub accepted
    send_failures: int = 0  # failed send calls (each one retried later)
    dropped: int = 0  # bags dropped by the max_pending bound
    invalid: int = 0  # bags dropped because they cannot be encoded


@attrs.define(slots=True)
class _Pending:
    at: float  # loop time when added
    bag: Mapping[str, Any]


class ReportBatcher:
    """Queues attribute bags and sends them to Mixer in delta-encoded batches."""

    def __init__(
        self,
        send: SendReport,
        *,
        max_entries: int = 1000,
        max_delay: float = 1.0,
        max_pending: int = 100_000,
        word_count: int | None = None,
        retry_min: float = 0.1,
        retry_max: float = 5.0,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        if max_pending < max_entries:
            raise ValueError(
                f"max_pending ({max_pending}) must be at least max_entries ({max_entries})"
            )
        if max_delay <= 0 or retry_min <= 0 or retry_max < retry_min:
            raise ValueError("max_delay and retry_min must be > 0 and retry_max >= retry_min")
        self.stats = ReportStats()
        self._send = send
        self._max_entries = max_entries
        self._max_delay = max_delay
        self._max_pending = max_pending
        self._word_count = word_count
        self._retry_min = retry_min
        self._retry_max = retry_max
        self._pending: deque[_Pending] = deque()
        self._inflight: list[_Pending] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self.failing = False  # the last send failed (for readiness / proxy-status)

    @property
    def pending(self) -> int:
        """Bags held: queued and being sent."""
        return len(self._pending) + len(self._inflight)

    def add(self, bag: Mapping[str, Any]) -> None:
        """Queue one bag for the next batch."""
        self._pending.append(_Pending(asyncio.get_running_loop().time(), bag))
        self.stats.added += 1
        while len(self._pending) + len(self._inflight) > self._max_pending and self._pending:
            self._pending.popleft()
            self.stats.dropped += 1
        # wake the sender when a batch is full, and when the queue stops being empty (so it
        # starts the max_delay clock of the new oldest bag)
        if len(self._pending) in (1, self._max_entries):
            self._wake.set()

    async def run(self) -> None:
        """Send batches as they become due, forever (cancel to stop; then call flush())."""
        backoff = self._retry_min
        while True:
            await self._wait_until_due()
            if await self._send_batch():
                backoff = self._retry_min
                continue
            # while the hub is away, full batches must not turn this into a busy loop
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, self._retry_max)

    async def flush(self) -> bool:
        """Send everything pending now; ``True`` when all of it was delivered.

        Stops at the first failure (what is left stays queued). Bounded: one attempt per batch
        of what was pending when it started.
        """
        rounds = -(-len(self._pending) // self._max_entries)
        for _ in range(rounds):
            if not self._pending:
                break
            if not await self._send_batch():
                return False
        return not self._pending

    async def _wait_until_due(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            timeout: float | None = None
            if len(self._pending) >= self._max_entries:
                return
            if self._pending:
                timeout = self._pending[0].at + self._max_delay - loop.time()
                if timeout <= 0:
                    return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _send_batch(self) -> bool:
        async with self._lock:
            count = min(self._max_entries, len(self._pending))
            if not count:
                return True
            self._inflight = [self._pending.popleft() for _ in range(count)]
            try:
                requests = self._encode()
                for request in requests:
                    n = len(request.attributes)
                    await self._send(request, [p.bag for p in self._inflight[:n]])
                    del self._inflight[:n]
                    self.stats.sent += n
                    self.stats.requests += 1
            except Exception as exc:
                self.stats.send_failures += 1
                if not self.failing:
                    log.warning(
                        "Mixer Report failed, keeping %d entries to retry: %s",
                        self.pending,
                        _one_line(exc),
                    )
                self.failing = True
                return False
            finally:
                # not sent (failed or cancelled): back to the front, in order, and the sender
                # told: when flush() was the one sending, run() saw an empty queue and waits
                # for no deadline
                if self._inflight:
                    self._pending.extendleft(reversed(self._inflight))
                    self._wake.set()
                self._inflight = []
            if self.failing:
                log.info("Mixer Report delivered again")
            self.failing = False
            return True

    def _encode(self) -> Sequence[report_pb2.ReportRequest]:
        bags = [p.bag for p in self._inflight]
        try:
            return codec.encode_batches(bags, self._word_count)
        except TypeError:
            pass
        # Some bag holds a value no attribute type has: drop those, keep the others.
        good: list[_Pending] = []
        for p in self._inflight:
            try:
                codec.encode(p.bag, self._word_count)
            except TypeError as exc:
                self.stats.invalid += 1
                log.warning("dropping a report entry that cannot be encoded: %s", _one_line(exc))
            else:
                good.append(p)
        self._inflight = good
        return codec.encode_batches([p.bag for p in good], self._word_count)


def _one_line(exc: BaseException) -> str:
    # transport errors (gRPC's among them) print over several lines; a log line is one line
    return " ".join(str(exc).split())[:300] or type(exc).__name__
