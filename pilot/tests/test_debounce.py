"""Debounce: quiet period, max delay, and one batch per burst."""

from __future__ import annotations

import asyncio

from meshfed.pilot.debounce import Batch, DebounceLoop, Debouncer


def test_quiet_period_extends_until_max_delay() -> None:
    d = Debouncer(quiet=0.1, max_delay=0.5)
    d.add({"a"}, now=0.0)
    assert d.deadline() == 0.1
    d.add({"b"}, now=0.08)
    assert abs(d.deadline() - 0.18) < 1e-9
    for t in (0.16, 0.24, 0.32, 0.40, 0.48):
        d.add({"c"}, now=t)
    assert d.deadline() == 0.5  # a steady trickle cannot postpone the push past max delay
    assert not d.due(0.49) and d.due(0.5)
    batch = d.take(0.5)
    assert batch.hostnames == {"a", "b", "c"} and batch.events == 7 and batch.waited == 0.5
    assert d.deadline() is None


async def test_burst_costs_one_flush() -> None:
    flushed: list[Batch] = []

    async def flush(batch: Batch) -> None:
        flushed.append(batch)

    loop = DebounceLoop(flush, quiet=0.05, max_delay=1.0)
    loop.start()
    try:
        for i in range(20):
            loop.submit({f"s{i % 3}"})
            await asyncio.sleep(0.001)
        for _ in range(100):
            if flushed:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
    finally:
        await loop.stop()
    assert len(flushed) == 1
    assert flushed[0].hostnames == {"s0", "s1", "s2"} and flushed[0].events == 20
