"""Debouncing: a burst of registry events costs one push.

A batch is flushed when the registry has been quiet for ``quiet`` seconds, or ``max_delay``
seconds after the batch's first event, whichever comes first, so a steady trickle of events
cannot postpone a push forever. The logic (:class:`Debouncer`) is clock-driven and pure; the
asyncio driver (:class:`DebounceLoop`) only sleeps until the next deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

import attrs

log = logging.getLogger("meshfed.pilot.debounce")


@attrs.frozen(slots=True)
class Batch:
    hostnames: frozenset[str]
    events: int
    first_at: float  # monotonic time of the first event: convergence is measured from here
    flushed_at: float

    @property
    def waited(self) -> float:
        return self.flushed_at - self.first_at


@attrs.define
class Debouncer:
    quiet: float = 0.1
    max_delay: float = 1.0
    _hosts: set[str] = attrs.field(factory=set)
    _events: int = 0
    _first: float | None = None
    _last: float | None = None

    def __attrs_post_init__(self) -> None:
        if self.quiet < 0 or self.max_delay < 0:
            raise ValueError("debounce quiet period and max delay must be >= 0")

    @property
    def pending(self) -> bool:
        return self._first is not None

    def add(self, hostnames: Iterable[str], now: float) -> None:
        self._hosts.update(hostnames)
        self._events += 1
        if self._first is None:
            self._first = now
        self._last = now

    def deadline(self) -> float | None:
        """When the pending batch is due, or None when nothing is pending."""
        if self._first is None or self._last is None:
            return None
        return min(self._last + self.quiet, self._first + self.max_delay)

    def due(self, now: float) -> bool:
        deadline = self.deadline()
        return deadline is not None and now >= deadline

    def take(self, now: float) -> Batch:
        assert self._first is not None
        batch = Batch(frozenset(self._hosts), self._events, self._first, now)
        self._hosts, self._events, self._first, self._last = set(), 0, None, None
        return batch


class DebounceLoop:
    """Feeds registry events through a :class:`Debouncer` and calls ``flush`` per batch."""

    def __init__(
        self,
        flush: Callable[[Batch], Awaitable[None]],
        quiet: float = 0.1,
        max_delay: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.debouncer = Debouncer(quiet, max_delay)
        self._flush = flush
        self._clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def submit(self, hostnames: Iterable[str]) -> None:
        self.debouncer.add(hostnames, self._clock())
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pilot-debounce")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            deadline = self.debouncer.deadline()
            if deadline is None:
                await self._wake.wait()
                self._wake.clear()
                continue
            delay = deadline - self._clock()
            if delay > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
                continue
            batch = self.debouncer.take(self._clock())
            try:
                await self._flush(batch)
            except Exception:
                # A failed push must not stop later ones; the next event retries the state.
                log.exception("push for %d services failed", len(batch.hostnames))
