"""The supervisor: restart with backoff, failures visible, recovery withdraws them."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

from prometheus_client import REGISTRY

from meshfed.core.supervisor import Supervisor


def _fast() -> Supervisor:
    return Supervisor(backoff_multiplier=0.01, backoff_max=0.05, stable_after=0.3)


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def _metric(name: str, task: str) -> float:
    value = REGISTRY.get_sample_value(name, {"task": task})
    return value or 0.0


async def test_a_failing_task_is_restarted_visibly_and_recovers() -> None:
    supervisor = _fast()
    runs: list[int] = []
    failures: list[str] = []
    recovered: list[bool] = []
    stop = asyncio.Event()

    async def store() -> None:
        runs.append(len(runs))
        if len(runs) <= 2:  # a bad file, twice
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        await stop.wait()

    before = _metric("meshfed_task_restarts_total", "store a")
    supervisor.spawn(
        "store a", store, on_failure=failures.append, on_recover=lambda: recovered.append(True)
    )
    await _until(lambda: len(runs) == 3)
    # Failing: restarted, counted, listed; not recovered yet (up for less than stable_after).
    assert len(failures) == 2 and "UnicodeDecodeError" in failures[0]
    assert "invalid start byte" in supervisor.failures()["store a"]
    assert _metric("meshfed_task_restarts_total", "store a") - before == 2
    assert _metric("meshfed_task_failing", "store a") == 1
    assert recovered == []
    await _until(lambda: recovered == [True])
    assert supervisor.failures() == {}
    assert _metric("meshfed_task_failing", "store a") == 0
    assert supervisor.describe()["store a"]["restarts"] == 2
    stop.set()
    await supervisor.stop(grace=1)


async def test_an_unexpected_return_is_a_failure_unless_allowed() -> None:
    supervisor = _fast()
    runs: list[str] = []

    async def loop_that_ends() -> None:
        runs.append("run")

    supervisor.spawn("loop", loop_that_ends)
    supervisor.spawn("once", lambda: asyncio.sleep(0), restart_on_exit=False)
    await _until(lambda: len(runs) >= 3)
    assert supervisor.failures()["loop"] == "exited unexpectedly"
    assert "once" not in supervisor.failures()
    await supervisor.stop()
    assert not any(t["running"] for t in supervisor.describe().values())


async def test_retire_ends_a_task_its_owner_stopped_without_a_restart() -> None:
    supervisor = _fast()
    stop = asyncio.Event()
    runs: list[str] = []

    async def watcher() -> None:
        runs.append("run")
        await stop.wait()

    supervisor.spawn("watcher", watcher)
    await _until(lambda: runs == ["run"])
    stop.set()  # what the owner's stop() does
    await supervisor.retire("watcher", grace=1)
    await asyncio.sleep(0.1)
    assert runs == ["run"] and supervisor.failures() == {}
    assert supervisor.describe()["watcher"]["running"] is False
    await supervisor.retire("never spawned")  # ignored


async def test_stop_cancels_tasks_that_do_not_end_and_a_cancel_is_no_failure() -> None:
    supervisor = _fast()
    failures: list[str] = []
    supervisor.spawn("forever", lambda: asyncio.sleep(3600), on_failure=failures.append)
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await supervisor.stop(grace=0.1)
    assert time.monotonic() - started < 2
    assert failures == [] and supervisor.failures() == {}


async def test_backoff_grows_and_is_bounded() -> None:
    supervisor = Supervisor(backoff_multiplier=0.02, backoff_max=0.2, stable_after=10)
    stamps: list[float] = []

    async def crash() -> None:
        stamps.append(time.monotonic())
        raise RuntimeError("boom")

    supervisor.spawn("crash", crash)
    await _until(lambda: len(stamps) >= 8, timeout=10)
    await supervisor.stop()
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert max(gaps) < 0.2 + 0.1  # bounded by backoff_max (plus scheduling)
    assert sum(gaps) > 0.02  # and not a busy loop
