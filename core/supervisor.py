"""One supervisor for every long-running background task of a process.

Why: a store, watcher or adapter that dies on one bad input must not take its feature down
silently. Every such task runs here: an exception (or an unexpected return) is logged once,
counted, shown as a failure (:meth:`Supervisor.failures`, which the readiness answer lists), and
the task is started again after a jittered exponential backoff (full jitter, as tenacity's
``wait_random_exponential`` that the adapters' own retries use). A restarted task that stays up
for ``stable_after`` seconds counts as recovered: its failure is withdrawn, the ``on_recover``
callback runs (the hub clears a registry's ``degraded`` there) and its backoff starts from the
beginning again.

Promises: :meth:`Supervisor.retire` ends one task for good (its owner stopped it: the exit that
follows is not a failure); :meth:`Supervisor.stop` ends them all, giving them a grace period
before cancelling; a task's cancellation is never taken for a failure; callbacks that raise are
logged and do not stop supervision.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

log = logging.getLogger("meshfed.core.supervisor")

_families: tuple[Any, Any] | None = None


def _metrics() -> tuple[Any, Any]:
    """(restarts counter, failing gauge), made on first use: a process that exports no
    metrics (the per-node agent) never loads prometheus-client for them."""
    global _families
    if _families is None:
        from prometheus_client import Counter, Gauge

        _families = (
            Counter(
                "meshfed_task_restarts_total",
                "Supervised background tasks restarted after a failure",
                ["task"],
            ),
            Gauge(
                "meshfed_task_failing",
                "1 while a supervised background task is failing (restarting)",
                ["task"],
            ),
        )
    return _families


class _NoMetric:
    def labels(self, *_: str) -> _NoMetric:
        return self

    def set(self, _: float) -> None:
        return None

    def inc(self) -> None:
        return None


TaskFactory = Callable[[], Awaitable[None]]
FailureCallback = Callable[[str], None]
RecoverCallback = Callable[[], None]


@attrs.define
class Supervised:
    """One supervised task and what is known about its health."""

    name: str
    factory: TaskFactory
    on_failure: FailureCallback | None = None
    on_recover: RecoverCallback | None = None
    restart_on_exit: bool = True
    retired: bool = False  # its owner stopped it: an exit now is the end, not a failure
    restarts: int = 0
    failure: str | None = None
    task: asyncio.Task[None] | None = None


def _backoff(failures: int, multiplier: float, maximum: float) -> float:
    """Full jitter over an exponential bound, as tenacity's ``wait_random_exponential``."""
    return random.uniform(0, min(maximum, multiplier * 2 ** min(failures, 32)))


class Supervisor:
    """Runs named background tasks, restarting each one that fails."""

    def __init__(
        self,
        *,
        backoff_multiplier: float = 0.5,
        backoff_max: float = 30.0,
        stable_after: float = 5.0,
        export_metrics: bool = True,
    ) -> None:
        # Without export_metrics, restarts and failures are only in describe() / failures().
        families: tuple[Any, Any] = _metrics() if export_metrics else (_NoMetric(), _NoMetric())
        self._restarts, self._failing = families
        self.backoff_multiplier = backoff_multiplier
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self._tasks: dict[str, Supervised] = {}
        self._stopping = False

    def spawn(
        self,
        name: str,
        factory: TaskFactory,
        *,
        on_failure: FailureCallback | None = None,
        on_recover: RecoverCallback | None = None,
        restart_on_exit: bool = True,
    ) -> Supervised:
        """Start ``factory()`` as task ``name`` (unique) under supervision; call on the loop.

        ``restart_on_exit``: a return while the supervisor is not stopping is a failure too
        (a server loop should never end on its own); pass False for work that may finish.
        """
        if name in self._tasks and not self._done(self._tasks[name]):
            raise ValueError(f"task {name!r} is already supervised")
        entry = Supervised(name, factory, on_failure, on_recover, restart_on_exit)
        self._tasks[name] = entry
        self._failing.labels(name).set(0)
        entry.task = asyncio.get_running_loop().create_task(self._run(entry), name=name)
        return entry

    @staticmethod
    def _done(entry: Supervised) -> bool:
        return entry.task is None or entry.task.done()

    def failures(self) -> dict[str, str]:
        """Every task failing now (not yet up for ``stable_after`` since its restart)."""
        return {e.name: e.failure for e in self._tasks.values() if e.failure}

    def describe(self) -> dict[str, dict[str, object]]:
        return {
            e.name: {"running": not self._done(e), "restarts": e.restarts, "failure": e.failure}
            for e in self._tasks.values()
        }

    async def _run(self, entry: Supervised) -> None:
        failures = 0  # consecutive: reset once a run has stayed up for stable_after
        while True:
            started = time.monotonic()
            recovery = None
            if entry.failure is not None:
                recovery = asyncio.get_running_loop().call_later(
                    self.stable_after, self._recovered, entry
                )
            try:
                await entry.factory()
                if not entry.restart_on_exit or self._stopping or entry.retired:
                    return
                reason = "exited unexpectedly"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            finally:
                if recovery is not None:
                    recovery.cancel()
            if self._stopping or entry.retired:
                return
            if time.monotonic() - started >= self.stable_after:
                failures = 0
            failures += 1
            entry.restarts += 1
            entry.failure = reason
            self._restarts.labels(entry.name).inc()
            self._failing.labels(entry.name).set(1)
            delay = _backoff(failures, self.backoff_multiplier, self.backoff_max)
            log.error("%s failed (%s); restarting in %.1fs", entry.name, reason, delay)
            self._call(entry.on_failure, reason)
            await asyncio.sleep(delay)

    def _recovered(self, entry: Supervised) -> None:
        if entry.failure is None:
            return
        log.info("%s recovered after %d restart(s)", entry.name, entry.restarts)
        entry.failure = None
        self._failing.labels(entry.name).set(0)
        self._call(entry.on_recover)

    def _call(self, callback: Callable[..., None] | None, *args: str) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            log.exception("supervisor callback failed")

    def expect_exit(self, name: str) -> None:
        """Task ``name`` is about to be told to stop: its exit from now on is the end, not a
        failure. For owners whose stop awaits before :meth:`retire` can run (the task may
        return meanwhile). Unknown names are ignored."""
        entry = self._tasks.get(name)
        if entry is None:
            return
        entry.retired = True
        entry.failure = None
        self._failing.labels(name).set(0)

    async def retire(self, name: str, grace: float = 5.0) -> None:
        """End task ``name`` for good: its owner has told it to stop; wait ``grace`` s for it
        to return, then cancel it. Unknown names are ignored (a start that failed early)."""
        entry = self._tasks.get(name)
        if entry is None or entry.task is None:
            return
        self.expect_exit(name)
        task = entry.task
        if not task.done():
            await asyncio.wait([task], timeout=grace)
        if not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=grace)

    async def stop(self, grace: float = 0.0, timeout: float = 10.0) -> None:
        """Let tasks end on their own for ``grace`` s (their owners were told to stop), then
        cancel what is left and wait at most ``timeout`` s for it."""
        self._stopping = True
        tasks = [e.task for e in self._tasks.values() if e.task is not None and not e.task.done()]
        if tasks and grace > 0:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            tasks = list(pending)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
