"""The lifecycle: start in order, stop in reverse, unwind on a failed start, collect errors."""

from __future__ import annotations

import asyncio

import pytest

from meshfed.core.lifecycle import Component, Lifecycle, StartFailed, Step


class Part:
    def __init__(
        self, name: str, log: list[str], fail_start: bool = False, fail_stop: bool = False
    ):
        self.name, self.log = name, log
        self.fail_start, self.fail_stop = fail_start, fail_stop

    async def start(self) -> None:
        self.log.append(f"start {self.name}")
        if self.fail_start:
            raise OSError(f"{self.name}: address already in use")

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")
        if self.fail_stop:
            raise RuntimeError(f"{self.name} would not stop")


def _life(*parts: Part) -> Lifecycle:
    life = Lifecycle()
    for part in parts:
        assert isinstance(part, Component)
        life.add(part.name, part)
    return life


async def test_parts_start_in_order_and_stop_in_reverse() -> None:
    log: list[str] = []
    life = _life(Part("a", log), Part("b", log), Part("c", log))
    await life.start()
    assert life.started == ["a", "b", "c"]
    assert await life.stop() == []
    assert log == ["start a", "start b", "start c", "stop c", "stop b", "stop a"]
    assert await life.stop() == []  # once only
    assert log[-1] == "stop a" and len(log) == 6


async def test_a_part_that_cannot_start_unwinds_every_part_started_before_it() -> None:
    log: list[str] = []
    life = _life(Part("adapters", log), Part("pilot", log, fail_start=True), Part("http", log))
    with pytest.raises(StartFailed, match="pilot could not start: pilot: address already in use"):
        await life.start()
    # The failed part is stopped too (it may hold half its resources); the later one never ran.
    assert log == ["start adapters", "start pilot", "stop pilot", "stop adapters"]
    assert life.started == []


async def test_stop_errors_are_collected_and_the_parts_below_still_stop() -> None:
    log: list[str] = []
    life = _life(Part("a", log), Part("b", log, fail_stop=True), Part("c", log))
    await life.start()
    errors = await life.stop()
    assert [str(e) for e in errors] == ["b: RuntimeError: b would not stop"]
    assert log[-3:] == ["stop c", "stop b", "stop a"]


async def test_unwinding_errors_are_part_of_the_start_failure() -> None:
    log: list[str] = []
    life = _life(Part("a", log, fail_stop=True), Part("b", log, fail_start=True))
    with pytest.raises(StartFailed) as raised:
        await life.start()
    assert raised.value.part == "b"
    assert [e.part for e in raised.value.stop_errors] == ["a"]
    assert "while unwinding: a: RuntimeError" in str(raised.value)


async def test_a_cancelled_start_unwinds_and_stays_cancelled() -> None:
    log: list[str] = []
    blocked = asyncio.Event()

    async def slow_start() -> None:
        log.append("start slow")
        blocked.set()
        await asyncio.sleep(60)

    async def slow_stop() -> None:
        log.append("stop slow")

    life = Lifecycle()
    life.add("a", Part("a", log))
    life.add("slow", Step(slow_start, slow_stop))
    task = asyncio.create_task(life.start())
    await blocked.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["start a", "start slow", "stop slow", "stop a"]


SCRIPT = """
import asyncio, sys, time
from meshfed.core.lifecycle import handle_stop_signals

async def main():
    stop = asyncio.Event()
    handle_stop_signals(stop, hard_exit_after=float(sys.argv[1]))
    print("ready", flush=True)
    if sys.argv[2] == "frozen":
        time.sleep(60)  # the loop is blocked (a read that never returns)
    else:
        await stop.wait()
        print("stopped cleanly", flush=True)

asyncio.run(main())
"""


async def _signalled(mode: str, hard_exit_after: float) -> tuple[int, str, float]:
    import signal
    import sys
    import time

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SCRIPT, str(hard_exit_after), mode,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    assert (await asyncio.wait_for(proc.stdout.readline(), 20)).strip() == b"ready"
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    return proc.returncode or 0, out.decode(), time.monotonic() - sent


async def test_sigterm_sets_the_stop_event() -> None:
    code, out, _ = await _signalled("normal", 30)
    assert code == 0 and "stopped cleanly" in out


async def test_sigterm_ends_a_process_whose_loop_is_blocked() -> None:
    code, _, took = await _signalled("frozen", 0.5)
    assert code == 128 + 15
    assert took < 10  # not the 60 s the blocked call would have taken
