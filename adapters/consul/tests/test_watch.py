"""Blocking-query rules: index handling, rate limit, client timeout, thread hand-off."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from meshfed.adapters.consul.client import ConsulClients, QueryResult, parse_index, split_address
from meshfed.adapters.consul.params import parse_params
from meshfed.adapters.consul.watch import BlockingWatch, RateLimiter, next_index, run_blocking


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


def test_watches_spread_over_addresses_and_fail_over_one_step_at_a_time():
    addrs = ["127.0.0.2:1", "127.0.0.3:2", "127.0.0.4:3"]
    clients = ConsulClients(parse_params({"addresses": addrs}))
    routes = [clients.route(f"dc1/s{i}") for i in range(300)]
    spread = {r.position for r in routes}
    assert spread == {0, 1, 2}  # every agent carries some of the watches
    assert clients.route("dc1/s7") == clients.route("dc1/s7")  # stable
    moves: list[tuple[str, str]] = []
    clients.on_failover = lambda old, new: moves.append((old, new))
    route = routes[0]
    start = route.position
    clients.failed(route, start)
    clients.failed(route, start)  # a late second report about the same address: no extra move
    assert route.position == (start + 1) % 3
    assert moves == [(addrs[start], addrs[(start + 1) % 3])]


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


class Script:
    """A scripted sequence of answers for the watch loop (the loop's own logic under test)."""

    def __init__(self, answers: list[QueryResult]) -> None:
        self.answers = answers
        self.calls: list[tuple[int, float | None]] = []
        self.done = threading.Event()

    def __call__(self, index: int, wait: float | None) -> QueryResult:
        self.calls.append((index, wait))
        if not self.answers:
            self.done.set()
            threading.Event().wait(5)  # block like an idle blocking query
            raise TimeoutError
        return self.answers.pop(0)


async def run_script(answers: list[QueryResult]) -> tuple[Script, list[Any], BlockingWatch]:
    script = Script(answers)
    applied: list[Any] = []
    watch = BlockingWatch(
        "dc1/web", script, lambda r: applied.append(r.data), lambda w, e: None, 1000, catch_up_s=3
    )
    watch.start()
    for _ in range(200):
        if script.done.is_set():
            break
        await asyncio.sleep(0.01)
    await watch.stop()
    return script, applied, watch


def answer(index: int, data: str, leader: bool = True) -> QueryResult:
    return QueryResult(index, data, "127.0.0.2:8500", leader)


async def test_watch_applies_changes_only_and_blocks_on_the_index():
    script, applied, _ = await run_script([answer(5, "a"), answer(5, "a"), answer(9, "b")])
    assert applied == ["a", "b"]  # the unchanged answer (a wait that expired) is not applied
    assert [index for index, _ in script.calls] == [0, 5, 5, 9]
    assert script.calls[1][1] is None  # the configured wait, not the catch-up one


async def test_watch_never_blocks_on_index_zero():
    script, applied, _ = await run_script([answer(0, "empty")])
    assert applied == ["empty"]
    assert [index for index, _ in script.calls] == [0, 1]  # not a busy loop on 0


async def test_watch_holds_back_a_lagging_server_then_resets_if_it_stays_behind():
    script, applied, watch = await run_script(
        [
            answer(10, "new"),
            answer(7, "old"),  # a lagging follower: held back...
            answer(11, "newer"),  # ...until it catches up
            answer(8, "restored"),  # behind again: wait for it once more...
            answer(8, "restored"),  # ...still behind after the catch-up wait: take it (reset)
        ]
    )
    assert applied == ["new", "newer", "restored"]
    assert script.calls[2] == (10, 3)  # blocked on the applied index, with the catch-up wait
    assert script.calls[4] == (11, 3)
    assert watch.behind == 2 and watch.resets == 1
    assert script.calls[5][0] == 0  # after a reset, one non-blocking read


async def test_watch_never_goes_back_while_the_server_knows_no_leader():
    _, applied, watch = await run_script(
        [answer(10, "new"), answer(7, "old", leader=False), answer(7, "old", leader=False)]
    )
    assert applied == ["new"]
    assert watch.resets == 0 and watch.behind == 2
