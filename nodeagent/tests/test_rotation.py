"""The renewal schedule and the loop that keeps renewing."""

from __future__ import annotations

import asyncio
import datetime as dt
import random

from meshfed.nodeagent.rotation import Rotator, renewal_delay


def test_renewal_is_at_half_life_with_bounded_jitter() -> None:
    received = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    not_after = received + dt.timedelta(seconds=100)
    rng = random.Random(7)
    delays = [renewal_delay(received, not_after, 0.5, 0.1, rng) for _ in range(500)]
    assert all(40.0 <= d <= 60.0 for d in delays)
    assert len({round(d, 3) for d in delays}) > 100  # really jittered, not one value
    assert renewal_delay(received, not_after, 0.5, 0.0) == 50.0
    assert renewal_delay(not_after, received) == 0.0  # already expired: renew at once


async def test_rotator_retries_a_failed_renewal_and_keeps_going() -> None:
    calls: list[float] = []
    now = [dt.datetime.now(dt.UTC)]

    async def renew() -> dt.datetime:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) == 1:
            raise ConnectionError("CA restarting")
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.2)

    rotator = Rotator(renew, jitter=0.0, min_retry=0.01, max_retry=0.05)
    task = asyncio.create_task(rotator.run(now[0] + dt.timedelta(seconds=0.1)))
    try:
        for _ in range(200):
            if rotator.rotations >= 3:
                break
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
    assert rotator.rotations >= 3
    assert len(calls) >= 4  # one failure, then successes
