"""Guard for the seed's known issue "periodic 404": under continuous traffic while endpoints
are added and removed (and unrelated services come and go, which re-sends clusters, listeners
and routes), not one request fails with 404 or 503.

Hosts: 127.<run>.83.x. In the first test backends keep running when removed from the registry,
as a draining workload would; the sidecar must stop sending to them without failing requests.
In the others instances die without draining (SIGKILL, see ``integration.instance_pool``): the
process is gone first and the registry learns it after, or not at all; Pilot's default retries,
circuit breakers and outlier detection must still fail no request.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time

import aiohttp

from integration.instance_pool import InstancePool
from integration.pilot_helpers import addr, endpoint, get, http_service, running_mesh
from meshfed.proxy import EnvoyProcess

A_IP = addr(83, 2)
BACKEND_IPS = [addr(83, i) for i in range(3, 7)]
HOST = "b.default.svc.cluster.local"
CHURN_SECONDS = 6.0


async def test_no_404_or_503_during_endpoint_and_service_churn() -> None:
    async with running_mesh(quiet=0.01, max_delay=0.1) as mesh:
        service = http_service(HOST)
        mesh.member.replace([service], {HOST: [endpoint(BACKEND_IPS[0])]})
        for i, ip in enumerate(BACKEND_IPS):
            await mesh.backend(f"b{i}", ip, 9080)
        a = await mesh.sidecar(A_IP, "a")
        url = a.outbound_url + "/"
        statuses: dict[int, int] = {}
        answered: set[str] = set()
        stop = asyncio.Event()

        async def traffic(session: aiohttp.ClientSession) -> None:
            while not stop.is_set():
                status, body = await get(session, url, HOST)
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    answered.add(body)

        rng = random.Random(4)
        changes = 0
        async with aiohttp.ClientSession() as session:
            workers = [asyncio.create_task(traffic(session)) for _ in range(4)]
            try:
                deadline = time.monotonic() + CHURN_SECONDS
                while time.monotonic() < deadline:
                    chosen = rng.sample(BACKEND_IPS, rng.randint(1, len(BACKEND_IPS)))
                    mesh.member.set_endpoints(HOST, [endpoint(ip) for ip in chosen])
                    if changes % 3 == 0:
                        # Other services appearing/disappearing re-send CDS, LDS and RDS.
                        extra = http_service(f"x{changes}.default.svc.cluster.local")
                        mesh.member.put_service(extra, [endpoint(BACKEND_IPS[0])])
                    elif changes % 3 == 1:
                        mesh.member.delete_service(f"x{changes - 1}.default.svc.cluster.local")
                    changes += 1
                    await asyncio.sleep(rng.uniform(0.02, 0.15))
            finally:
                stop.set()
                await asyncio.gather(*workers, return_exceptions=True)
        total = sum(statuses.values())
        print(f"{total} requests, {changes} changes, statuses {statuses}")
        assert total > 200, f"too little traffic to mean anything: {statuses}"
        assert set(statuses) == {200}, f"failed requests during {changes} changes: {statuses}"
        assert len(answered) >= 3, answered
        assert mesh.pilot.pushes >= 10


CLUSTER = f"outbound|80||{HOST}"
KILL_SIDECAR_IP = addr(83, 7)
INSTANCE_IPS = [addr(83, i) for i in range(10, 250)]  # each instance gets the next address
LIVE_INSTANCES = 4
KILL_EVERY_S = 0.2
KILL_REQUESTS = 20_000
KILL_CONCURRENCY = 32
# Paced, so that a fast machine still sees many deaths during the 20,000 requests (>= 13 s).
KILL_RATE_RPS = 1500.0
KILL_DEADLINE_S = 240.0


async def cluster_stats(envoy: EnvoyProcess) -> dict[str, int]:
    """The counters and gauges of the test service's cluster, by name after the cluster's."""
    status, body = await envoy.admin("/stats?filter=" + re.escape(f"cluster.{CLUSTER}."), timeout=5)
    assert status == 200, body
    out = {}
    for line in body.splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            out[name.removeprefix(f"cluster.{CLUSTER}.")] = int(value)
    return out


def report(stats: dict[str, int]) -> str:
    keys = (
        "upstream_rq_total",
        "upstream_rq_retry",
        "upstream_rq_retry_success",
        "upstream_rq_retry_overflow",
        "upstream_cx_connect_fail",
        "upstream_rq_503",
        "outlier_detection.ejections_enforced_total",
        "outlier_detection.ejections_enforced_consecutive_local_origin_failure",
        "outlier_detection.ejections_overflow",
    )
    return ", ".join(f"{k}={stats.get(k, 0)}" for k in keys)


class Instances:
    """Live instances of the test service, each a process of the pool on its own address."""

    def __init__(self, pool: InstancePool) -> None:
        self.pool = pool
        self.live: list[tuple[str, int]] = []  # (address, pid), oldest first
        self._next = 0

    async def add(self) -> tuple[str, int]:
        address = INSTANCE_IPS[self._next % len(INSTANCE_IPS)]
        self._next += 1
        pid = await self.pool.spawn(address, 9080, f"i{self._next}")
        self.live.append((address, pid))
        return address, pid

    def endpoints(self) -> list:
        return [endpoint(address) for address, _ in self.live]


async def run_traffic(
    url: str, total: int, concurrency: int, deadline_s: float, rate: float | None = None
) -> tuple[dict[str, int], float]:
    """Send ``total`` requests from ``concurrency`` workers, at most ``rate`` per second;
    count answers by status or error."""
    outcomes: dict[str, int] = {}
    sent = 0
    started = time.monotonic()

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal sent
        while sent < total:
            sent += 1
            if rate is not None:  # request n leaves no earlier than n/rate seconds in
                await asyncio.sleep(max(0.0, started + sent / rate - time.monotonic()))
            try:
                status, _ = await get(session, url, HOST, timeout=10)
                key = str(status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                key = type(exc).__name__
            outcomes[key] = outcomes.get(key, 0) + 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.wait_for(
            asyncio.gather(*(worker(session) for _ in range(concurrency))), deadline_s
        )
    return outcomes, time.monotonic() - started


async def test_no_failed_request_when_instances_die_without_draining() -> None:
    """20,000 requests; every 200 ms the oldest instance is SIGKILLed and, once its process is
    gone, replaced in the endpoint set by a fresh one. Not one request may fail."""
    pool = InstancePool()
    await pool.start()
    try:
        async with running_mesh(quiet=0.01, max_delay=0.1) as mesh:
            instances = Instances(pool)
            for _ in range(LIVE_INSTANCES):
                await instances.add()
            mesh.member.replace([http_service(HOST)], {HOST: instances.endpoints()})
            a = await mesh.sidecar(KILL_SIDECAR_IP, "a")
            url = a.outbound_url + "/"
            traffic = asyncio.create_task(
                run_traffic(url, KILL_REQUESTS, KILL_CONCURRENCY, KILL_DEADLINE_S, KILL_RATE_RPS)
            )
            kills = 0
            try:
                next_kill = time.monotonic() + KILL_EVERY_S
                while not traffic.done():
                    await asyncio.sleep(max(0.0, next_kill - time.monotonic()))
                    next_kill += KILL_EVERY_S
                    if traffic.done():
                        break
                    fresh = await instances.add()  # listening before it is announced
                    _, pid = instances.live.pop(0)
                    await pool.kill(pid)  # the process is gone ...
                    kills += 1
                    # ... and only then does the registry drop it (and add the new one).
                    mesh.member.set_endpoints(HOST, instances.endpoints())
                    assert fresh in instances.live
                outcomes, seconds = await traffic
            finally:
                if not traffic.done():
                    traffic.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await traffic
            stats = await cluster_stats(a)
            summary = (
                f"{sum(outcomes.values())} requests in {seconds:.1f} s, {kills} instances killed, "
                f"{mesh.pilot.pushes} pushes; outcomes {outcomes}; {report(stats)}"
            )
            print(summary)
            assert sum(outcomes.values()) == KILL_REQUESTS, summary
            assert kills >= 50, f"too few deaths to mean anything: {summary}"
            assert set(outcomes) == {"200"}, f"failed requests: {summary}"
            # The deaths were felt (Envoy retried) and no retry was refused.
            assert stats.get("upstream_rq_retry", 0) > 0, summary
            assert stats.get("upstream_rq_retry_overflow", 0) == 0, summary
    finally:
        await pool.stop()


async def test_a_dead_instance_the_registry_still_lists_is_ejected() -> None:
    """An instance dies and the registry does not notice (no push at all): after a few connect
    failures outlier detection takes it out of rotation, and no request fails meanwhile."""
    pool = InstancePool()
    await pool.start()
    try:
        async with running_mesh(quiet=0.01, max_delay=0.1) as mesh:
            instances = Instances(pool)
            for _ in range(LIVE_INSTANCES):
                await instances.add()
            mesh.member.replace([http_service(HOST)], {HOST: instances.endpoints()})
            a = await mesh.sidecar(addr(83, 8), "a")
            url = a.outbound_url + "/"
            pushes = mesh.pilot.pushes
            _, pid = instances.live[0]
            await pool.kill(pid)
            outcomes, _ = await run_traffic(url, 400, 8, 60)
            ejected = await cluster_stats(a)
            # Once ejected, the dead instance is no longer even tried.
            more, _ = await run_traffic(url, 400, 8, 60)
            after = await cluster_stats(a)
            summary = f"outcomes {outcomes} then {more}; {report(after)}"
            print(summary)
            assert mesh.pilot.pushes == pushes, "the registry was not supposed to change"
            assert set(outcomes) == {"200"} and set(more) == {"200"}, summary
            assert ejected.get("outlier_detection.ejections_active") == 1, report(ejected)
            assert (
                ejected.get(
                    "outlier_detection.ejections_enforced_consecutive_local_origin_failure", 0
                )
                >= 1
            ), report(ejected)
            assert after["upstream_cx_connect_fail"] == ejected["upstream_cx_connect_fail"], summary
    finally:
        await pool.stop()
