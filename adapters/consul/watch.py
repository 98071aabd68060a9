"""One Consul blocking-query loop, done the way Consul documents it.

A watch repeats one read (the service list, or one service's health) with ``?index=N&wait=W``:
Consul holds the request until something at that path changes past index N, or W (plus up to W/16
of jitter) has elapsed. That gives change notification without polling on a timer. The rules
from Consul's "Blocking Queries" guide, each of which exists because clients got it wrong:

- The index is an opaque header; we convert it to an integer before comparing.
- If it goes *backwards* (a server restored from a snapshot, a lagging stale read, a fresh dev
  agent after a restart), we reset it to 0, so the next read returns at once instead of blocking
  for an index that may never come.
- Otherwise it is never below 1: index 0 means "do not block", and Consul has been known to send
  0, which would turn a client into a busy loop.
- The loop is rate-limited, so a path that changes constantly costs at most ``rate`` reads per
  second per watch (later reads coalesce everything that happened meanwhile).
- The client-side timeout exceeds wait + wait/16 (py-consul computes it; see ``client.py``).

After a failed read we drop to index 0: the server that answers next may be another one, or the
same one restarted with other data, and only a non-blocking read resyncs at once. That read may
come from a follower that lags what we already applied (stale reads after a fail-over do); moving
the mesh backwards would make endpoints flap, so an answer older than the last applied one is not
applied: we block on the applied index instead, for at most ``catch_up_s``, and the server
answers as soon as it has caught up. Only if it is *still* behind after that (and knows a Raft
leader, so it is not merely cut off) do we take its older state as the truth -- that is the
"index went backwards" case above (a restored snapshot, a fresh agent), reset as Consul says.
Failures are retried forever with jittered exponential backoff (``tenacity``); the watch never
raises, it reports each failure and each recovery to its owner.

Threads: py-consul is blocking, so each read runs in a worker thread and its result is handed
back to the event loop. We start a daemon thread per read rather than use ``asyncio.to_thread``:
the default executor has min(32, CPUs + 4) workers -- six on a two-core machine -- and every idle
blocking query holds one for up to ``wait``, so more than six services would starve each other;
and executor threads are joined at interpreter exit, which would make stopping the hub hang for
up to ``wait`` (five minutes by default). A daemon thread left blocked on an abandoned read just
dies with the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import tenacity

from meshfed.adapters.consul.client import QueryResult

log = logging.getLogger("meshfed.adapters.consul")

T = TypeVar("T")

BACKOFF_MULTIPLIER_S = 0.25
BACKOFF_MAX_S = 10.0
CATCH_UP_S = 10.0


def next_index(previous: int, received: int) -> tuple[int, bool]:
    """The index for the next blocking query, and whether it was reset (went backwards)."""
    if received < previous:
        return 0, True
    return max(received, 1), False


class RateLimiter:
    """At most ``per_second`` starts per second (a minimum spacing; the first is immediate)."""

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = 1.0 / per_second
        self._clock = clock
        self._last: float | None = None

    def delay(self) -> float:
        """Seconds to wait before the next start is allowed (and records that start)."""
        now = self._clock()
        wait = 0.0 if self._last is None else max(0.0, self._last + self.interval - now)
        self._last = now + wait
        return wait

    async def wait(self) -> None:
        delay = self.delay()
        if delay > 0:
            await asyncio.sleep(delay)


def _resolve(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():  # the awaiting task was cancelled; nobody wants this answer
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


async def run_blocking(fn: Callable[..., T], *args: Any, name: str = "consul-read") -> T:
    """Run blocking ``fn(*args)`` in a fresh daemon thread; await its result on the loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def work() -> None:
        value: Any = None
        error: BaseException | None = None
        try:
            value = fn(*args)
        except BaseException as exc:
            error = exc
        # RuntimeError: the loop is closed because the adapter stopped; nobody waits any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, future, value, error)

    threading.Thread(target=work, name=name, daemon=True).start()
    return await future


class BlockingWatch:
    """Follow one Consul path with blocking queries until stopped; never raises.

    ``query(index, wait_s)`` is the blocking read (``wait_s`` None: the configured wait);
    ``on_change(result)`` gets each result whose index differs from the last one applied (and the
    first); ``on_status(watch, error)`` gets every failure and the first success after one (error
    None). Both callbacks run on the event loop.
    """

    def __init__(
        self,
        key: str,
        query: Callable[[int, float | None], QueryResult],
        on_change: Callable[[QueryResult], None],
        on_status: Callable[[BlockingWatch, BaseException | None], None],
        rate_limit: float,
        backoff_max_s: float = BACKOFF_MAX_S,
        observe: Callable[[str], None] | None = None,
        catch_up_s: float = CATCH_UP_S,
    ) -> None:
        self.key = key
        self.observe = observe or (lambda outcome: None)
        self.query = query
        self.on_change = on_change
        self.on_status = on_status
        self.limiter = RateLimiter(rate_limit)
        self.backoff_max_s = backoff_max_s
        self.catch_up_s = catch_up_s
        self.index = 0
        self.applied_index = 0  # index of the last result handed to on_change (0: none yet)
        self.behind = 0  # answers older than applied_index that were held back
        self.resets = 0
        self.errors = 0
        self.last_error: str | None = None
        self.last_change: float | None = None  # wall clock, for /debug/registryz
        self.address = ""
        self.known_leader = True
        self.acl_filtered = False
        self.first_result = asyncio.Event()
        self._first = True
        self._catching_up = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"consul-watch {self.key}")

    def cancel(self) -> asyncio.Task[None] | None:
        """Stop following (a read in flight is abandoned); returns the task to await, if any."""
        task, self._task = self._task, None
        self.first_result.set()  # nobody should wait for a watch that will not report
        if task is not None:
            task.cancel()
        return task

    async def stop(self) -> None:
        task = self.cancel()
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    @property
    def failing(self) -> bool:
        return self.last_error is not None

    def _failed(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self.errors += 1
        self.index = 0  # resync with a non-blocking read once a server answers again
        self._catching_up = False
        self.last_error = f"{type(exc).__name__}: {exc}" if exc else "unknown error"
        self.observe("error")
        self.on_status(self, exc)

    async def _read(self) -> QueryResult:
        retrying = tenacity.AsyncRetrying(
            wait=tenacity.wait_random_exponential(
                multiplier=BACKOFF_MULTIPLIER_S, max=self.backoff_max_s
            ),
            retry=tenacity.retry_if_exception_type(Exception),
            before_sleep=self._failed,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                wait = self.catch_up_s if self._catching_up else None
                return await run_blocking(self.query, self.index, wait, name=f"consul {self.key}")
        raise AssertionError("unreachable: retries never stop")

    async def _run(self) -> None:
        while True:
            await self.limiter.wait()
            result = await self._read()
            self.address, self.known_leader = result.address, result.known_leader
            if result.acl_filtered and not self.acl_filtered:
                # Not an error (the token is what the operator configured), but an empty mesh
                # with no explanation is what a wrong token otherwise looks like.
                log.warning(
                    "consul watch %s: Consul left out results the ACL token may not read",
                    self.key,
                )
            self.acl_filtered = result.acl_filtered
            if self.last_error is not None:
                self.last_error = None
                self.on_status(self, None)
            if not self._first and result.index < self.applied_index:
                if not self._catching_up or not result.known_leader:
                    # Behind what the mesh already has (a lagging follower): wait for it.
                    self._catching_up = True
                    self.behind += 1
                    self.index = self.applied_index
                    self.observe("behind")
                    continue
                # Still behind after a full catch-up wait, with a leader: really went backwards.
                self.resets += 1
                self.observe("reset")
                log.info("consul watch %s: index went backwards; reset", self.key)
            self._catching_up = False
            changed = self._first or result.index != self.applied_index
            self._first = False
            self.index, _ = next_index(self.applied_index, result.index)
            self.applied_index = result.index
            self.observe("change" if changed else "unchanged")
            if changed:
                self.last_change = time.time()
                try:
                    self.on_change(result)
                except Exception:
                    # A bug in mapping must not kill the watch; the next change retries it.
                    log.exception("consul watch %s: applying a result failed", self.key)
            self.first_result.set()

    def describe(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "appliedIndex": self.applied_index,
            "heldBack": self.behind,
            "address": self.address,
            "knownLeader": self.known_leader,
            "aclFiltered": self.acl_filtered,
            "lastChange": self.last_change,
            "errors": self.errors,
            "indexResets": self.resets,
            "lastError": self.last_error,
        }
