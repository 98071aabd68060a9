"""When to renew a certificate, and the loop that keeps renewing.

Why: short-lived certificates only help if they are replaced before they expire, and a fleet of
agents that all started together must not all hit the CA in the same second. So each agent
renews at half of the remaining lifetime, moved by a random jitter, and retries a failed renewal
with jittered exponential backoff until it succeeds or the certificate has expired.

Promises:
- :func:`renewal_delay` is pure: given when the certificate was received, when it expires, the
  fraction (0.5) and the jitter (+/- 10 % of the lifetime by default) it returns the delay.
- :class:`Rotator` calls ``renew`` at that time, then again for the new certificate, forever;
  a failure is logged and retried by ``tenacity`` (jittered exponential backoff), and
  rotation never stops because of one failure.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from collections.abc import Awaitable, Callable

import tenacity

log = logging.getLogger("meshfed.nodeagent.rotation")


def renewal_delay(
    received: dt.datetime,
    not_after: dt.datetime,
    fraction: float = 0.5,
    jitter: float = 0.1,
    rng: random.Random | None = None,
) -> float:
    """Seconds from ``received`` until renewal: ``fraction`` of the lifetime +/- ``jitter``."""
    lifetime = (not_after - received).total_seconds()
    if lifetime <= 0:
        return 0.0
    spread = (rng or random).uniform(-jitter, jitter)
    return max(0.0, lifetime * (fraction + spread))


class Rotator:
    """Renews forever: ``renew()`` returns the new certificate's notAfter."""

    def __init__(
        self,
        renew: Callable[[], Awaitable[dt.datetime]],
        fraction: float = 0.5,
        jitter: float = 0.1,
        min_retry: float = 0.5,
        max_retry: float = 30.0,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.renew = renew
        self.fraction = fraction
        self.jitter = jitter
        self.min_retry = min_retry
        self.max_retry = max_retry
        self.clock = clock
        # Counted here, exported by the agent's monitoring port when it has one: the agent
        # itself loads no metrics library.
        self.rotations = 0
        self.failures = 0
        self.expiry: float = 0.0  # the current certificate's notAfter, as a timestamp
        self.next_at: dt.datetime | None = None

    async def run(self, not_after: dt.datetime) -> None:
        """Loop: sleep until due, renew, repeat. Cancel the task to stop."""
        self.expiry = not_after.timestamp()
        while True:
            received = self.clock()
            delay = renewal_delay(received, not_after, self.fraction, self.jitter)
            self.next_at = received + dt.timedelta(seconds=delay)
            log.debug("next renewal in %.1fs (certificate expires %s)", delay, not_after)
            await asyncio.sleep(delay)
            not_after = await self._renew_until_done(not_after)
            self.rotations += 1
            self.expiry = not_after.timestamp()

    async def _renew_until_done(self, not_after: dt.datetime) -> dt.datetime:
        def failed(state: tenacity.RetryCallState) -> None:
            self.failures += 1
            left = (not_after - self.clock()).total_seconds()
            log.error(
                "certificate renewal failed (%s); %.0fs of validity left, retrying",
                state.outcome.exception() if state.outcome else "?",
                left,
            )

        retrying = tenacity.AsyncRetrying(
            wait=tenacity.wait_random_exponential(multiplier=self.min_retry, max=self.max_retry),
            retry=tenacity.retry_if_exception_type(Exception),
            before_sleep=failed,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self.renew()
        raise AssertionError("unreachable: retrying never stops")
