"""Blocking-query rules: index handling, rate limit, client timeout, thread hand-off."""

from __future__ import annotations

import asyncio
import threading

import pytest

from adapters.consul.client import ConsulClients, parse_index, split_address
from adapters.consul.params import parse_params
from adapters.consul.watch import RateLimiter, next_index, run_blocking


def test_index_is_an_integer_and_garbage_is_zero():
    assert parse_index("1234") == 1234
    assert parse_index(" 7 ") == 7
    assert parse_index(None) == 0
    assert parse_index("abc") == 0
    assert parse_index("-3") == 0


def test_index_moves_forward_resets_backwards_never_below_one():
    assert next_index(0, 10) == (10, False)
    assert next_index(10, 10) == (10, False)  # a wait that timed out: same index
    assert next_index(10, 12) == (12, False)
    assert next_index(12, 5) == (0, True)  # backwards: one non-blocking read, then block again
    assert next_index(0, 0) == (1, False)  # Consul sent 0: block on 1, never busy-loop


def test_rate_limiter_spaces_starts():
    now = [100.0]
    limiter = RateLimiter(10, clock=lambda: now[0])
    assert limiter.delay() == 0.0
    assert limiter.delay() == pytest.approx(0.1)  # immediately again: wait 100ms
    now[0] += 0.05
    assert limiter.delay() == pytest.approx(0.15)  # queued behind the previous one
    now[0] += 10
    assert limiter.delay() == 0.0


def test_client_timeout_exceeds_wait_plus_jitter():
    params = parse_params({"wait": "30s", "timeout": "2s"})
    clients = ConsulClients(params)
    blocking = clients.request_timeout(index=5)
    assert blocking is not None and blocking > 30 + 30 / 16
    assert clients.request_timeout(index=0) == pytest.approx(2.0)  # not blocking


def test_split_address():
    assert split_address("127.0.0.2:8500") == ("http", "127.0.0.2", 8500)
    assert split_address("https://consul.example:8501/") == ("https", "consul.example", 8501)


def test_failover_rotates_once_per_failure_of_current():
    clients = ConsulClients(parse_params({"addresses": ["127.0.0.2:1", "127.0.0.3:2"]}))
    moves: list[tuple[str, str]] = []
    clients.on_failover = lambda old, new: moves.append((old, new))
    assert clients.current_address == "127.0.0.2:1"
    clients.failed(0)
    clients.failed(0)  # a second watch reporting the same dead address: no extra move
    assert clients.current_address == "127.0.0.3:2"
    assert moves == [("127.0.0.2:1", "127.0.0.3:2")]


async def test_run_blocking_runs_in_a_daemon_thread_and_returns_on_the_loop():
    def work(x: int) -> tuple[int, bool, bool]:
        current = threading.current_thread()
        return x * 2, current is threading.main_thread(), current.daemon

    assert await run_blocking(work, 21) == (42, False, True)

    def boom() -> None:
        raise ValueError("no")

    with pytest.raises(ValueError):
        await run_blocking(boom)


async def test_cancelled_read_is_abandoned():
    release = threading.Event()
    task = asyncio.create_task(run_blocking(release.wait, 5))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    await asyncio.sleep(0.05)  # the thread's late answer must not raise on a done future
