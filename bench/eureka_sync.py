"""Benchmark: the Eureka adapter with 2,000 instances in a real Eureka server (run by hand).

A pytest module because it uses the integration harness; ``bench/`` is outside the test paths, so
only an explicit run executes it. It prints figures and writes a JSON results file::

    .venv/bin/python -m pytest -s bench/eureka_sync.py
    # sizes: MESHFED_BENCH_INSTANCES (2000), _CHANGES (20), _SAMPLES_FAST (10),
    #        _SAMPLES_DEFAULT (5)
    # results: MESHFED_BENCH_OUT (default bench/results/eureka_sync.json)

Against a real Spring Cloud Netflix Eureka server (the harness's jar, restarted with a 3 s
delta-retention window so that a steady-state delta holds only recent changes):

1. populate N instances (200 apps x 10) through Eureka's REST API;
2. full fetch: ``sync_once()`` on a fresh adapter (HTTP + parse + index + map + replace), the
   HTTP part (request to last byte) and the processing part reported apart;
3. delta: one real change (an instance's status override flips OUT_OF_SERVICE / UP), then one
   ``sync_once()`` (delta + apply + hash check + map + replace); plus idle deltas;
4. registration -> Envoy ACK: a new instance is registered at a random phase of the poll and
   timed until a real Envoy fed by Pilot (debounce 50 ms) ACKs the EDS version carrying it,
   for ``fetchInterval`` 1 s and the default 30 s (so this part takes a few minutes).

Speed is reported, never asserted. Instances get 10.1.x.y addresses (never
dialled); the sidecar is on 127.0.94.2.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from integration.peers.eureka import start_eureka
from integration.peers.process import PeerProcess
from meshfed.adapters.contract import AdapterContext
from meshfed.adapters.eureka.registry import create
from meshfed.adapters.eureka.testing import EurekaRest, instance_doc
from meshfed.pilot import xds_types as T
from meshfed.pilot.server import PilotServer
from meshfed.pilot.watch import TypeWatch
from meshfed.proxy import EnvoyProcess, ProxySpec
from meshfed.registry.aggregate import AggregateRegistry

INSTANCES = int(os.environ.get("MESHFED_BENCH_INSTANCES", "2000"))
CHANGES = int(os.environ.get("MESHFED_BENCH_CHANGES", "20"))
SAMPLES_FAST = int(os.environ.get("MESHFED_BENCH_SAMPLES_FAST", "10"))
SAMPLES_DEFAULT = int(os.environ.get("MESHFED_BENCH_SAMPLES_DEFAULT", "5"))
FULL_RUNS = 5
OUT = Path(
    os.environ.get("MESHFED_BENCH_OUT", Path(__file__).parent / "results" / "eureka_sync.json")
)
ENVOY_IP = "127.0.94.2"
APPS_SIZE = 10


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def ip(n: int) -> str:
    return f"10.1.{n // 250}.{n % 250 + 1}"


async def start_server(base: Path) -> tuple[PeerProcess, str]:
    """The harness's Eureka, restarted with a short delta window (3 s) and fast cleanup."""
    with start_eureka(base) as first:
        argv = list(first.process.argv)
        url = first.eureka_url
    argv += [
        "--eureka.server.retention-time-in-m-s-in-delta-queue=3000",
        "--eureka.server.delta-retention-timer-interval-in-ms=1000",
    ]
    proc = PeerProcess("eureka-bench", argv, base / "bench.log", cwd=base).start()
    deadline = time.monotonic() + 120
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url + "apps/") as response:
                    if response.status == 200:
                        return proc, url
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.3)
    proc.stop()
    raise TimeoutError("eureka did not start")


async def populate(url: str, instances: int) -> float:
    t0 = time.monotonic()
    sem = asyncio.Semaphore(32)
    async with EurekaRest(url) as rest:

        async def one(n: int) -> None:
            async with sem:
                doc = instance_doc(
                    f"bench-{n // APPS_SIZE}",
                    f"i-{n}",
                    ip(n),
                    8080,
                    lease_seconds=3600,
                    metadata={"zone": f"z{n % 3}", "version": "v1"},
                )
                assert await rest.register(doc) == 204

        await asyncio.gather(*(one(n) for n in range(instances)))
    return time.monotonic() - t0


def params(url: str, interval: str = "1h") -> dict[str, Any]:
    return {"servers": [url], "fetchInterval": interval, "fullFetchInterval": "1h"}


async def full_fetches(url: str, runs: int) -> tuple[dict[str, Any], Any]:
    totals, https = [], []
    adapter = None
    for _ in range(runs):
        aggregate = AggregateRegistry()
        adapter = create(AdapterContext(aggregate.add_member("eureka", "eureka"), params(url)))
        t0 = time.perf_counter()
        await adapter.sync_once()
        totals.append(time.perf_counter() - t0)
        https.append(adapter.last_fetch["httpSeconds"])
        await adapter.http.close()
    assert adapter is not None
    size = adapter.last_fetch["bytes"]
    return {
        "runs": runs,
        "bytes": size,
        "total_p50_s": round(statistics.median(totals), 4),
        "http_p50_s": round(statistics.median(https), 4),
        "processing_p50_s": round(
            statistics.median(t - h for t, h in zip(totals, https, strict=True)), 4
        ),
        "total_max_s": round(max(totals), 4),
    }, adapter


async def deltas(url: str, instances: int, changes: int) -> dict[str, Any]:
    aggregate = AggregateRegistry()
    adapter = create(AdapterContext(aggregate.add_member("eureka", "eureka"), params(url)))
    await adapter.sync_once()  # full
    await asyncio.sleep(6)  # let the population leave the 3 s delta window
    idle, changed, idle_http, changed_http = [], [], [], []
    async with EurekaRest(url) as rest:
        for _ in range(5):
            t0 = time.perf_counter()
            await adapter.sync_once()
            idle.append(time.perf_counter() - t0)
            idle_http.append(adapter.last_fetch["httpSeconds"])
        for k in range(changes):
            n = random.randrange(instances)
            app, iid = f"bench-{n // APPS_SIZE}", f"i-{n}"
            assert await rest.set_status(app, iid, "OUT_OF_SERVICE") == 200
            await asyncio.sleep(0.2)
            t0 = time.perf_counter()
            await adapter.sync_once()
            changed.append(time.perf_counter() - t0)
            changed_http.append(adapter.last_fetch["httpSeconds"])
            assert await rest.delete_override(app, iid) == 200
            await asyncio.sleep(0.2)
            await adapter.sync_once()
            if k % 5 == 4:
                await asyncio.sleep(3.5)  # keep the delta window short
    counters = dict(adapter.counters)
    await adapter.http.close()
    return {
        "changes": changes,
        "changed_delta_total_p50_s": round(statistics.median(changed), 4),
        "changed_delta_http_p50_s": round(statistics.median(changed_http), 4),
        "changed_delta_processing_p50_s": round(
            statistics.median(t - h for t, h in zip(changed, changed_http, strict=True)), 4
        ),
        "changed_delta_total_max_s": round(max(changed), 4),
        "idle_delta_total_p50_s": round(statistics.median(idle), 4),
        "idle_delta_processing_p50_s": round(
            statistics.median(t - h for t, h in zip(idle, idle_http, strict=True)), 4
        ),
        "hash_mismatches": counters.get("hash_mismatches", 0),
        "full_fetches": counters.get("full_fetches", 0),
    }


async def registration_to_ack(url: str, interval: str, samples: int, base: int) -> dict[str, Any]:
    aggregate = AggregateRegistry()
    member = aggregate.add_member("eureka", "eureka")
    params_ = {"servers": [url], "fetchInterval": interval}
    adapter = create(AdapterContext(member, params_))
    task = asyncio.create_task(adapter.run())
    pilot = PilotServer(aggregate, "127.0.0.1:0", quiet=0.05, max_delay=0.5)
    await pilot.start()
    envoy = EnvoyProcess(ProxySpec(ip=ENVOY_IP, workload="bench", pilot=f"127.0.0.1:{pilot.port}"))
    seconds = float(interval.rstrip("s"))
    results = []
    try:
        deadline = time.monotonic() + 120
        while not member.synced and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await envoy.start()
        await envoy.wait_live(120)
        assert pilot.discovery is not None

        def eds_watch() -> TypeWatch | None:
            conns = list(pilot.discovery.connections.values())  # type: ignore[union-attr]
            return conns[0].watches.get(T.ENDPOINT) if conns else None

        while time.monotonic() < deadline:
            conns = pilot.discovery.connections.values()
            if eds_watch() is not None and any(c.ready for c in conns):
                break
            await asyncio.sleep(0.05)
        else:
            raise TimeoutError("envoy did not ACK its first full config")
        async with EurekaRest(url) as rest:
            for k in range(samples):
                await asyncio.sleep(random.uniform(0, seconds))  # a random poll phase
                n = base + k
                watch = eds_watch()
                assert watch is not None
                before = watch.acked_nonce
                t0 = time.monotonic()
                doc = instance_doc("bench-0", f"new-{n}", ip(n), 8080, lease_seconds=3600)
                assert await rest.register(doc) == 204
                limit = time.monotonic() + seconds + 70
                while time.monotonic() < limit:
                    w = eds_watch()
                    if w is not None and w.acked_nonce != before and w.acked_nonce == w.sent_nonce:
                        break
                    await asyncio.sleep(0.002)
                else:
                    raise TimeoutError(f"registration {k} not ACKed")
                results.append(eds_watch().acked_at - t0)  # type: ignore[union-attr]
    finally:
        await envoy.stop()
        await pilot.stop()
        await adapter.stop()
        await task
    return {
        "fetch_interval": interval,
        "samples": samples,
        "p50_s": round(pct(results, 50), 3),
        "mean_s": round(statistics.mean(results), 3),
        "max_s": round(max(results), 3),
        "min_s": round(min(results), 3),
    }


@pytest.mark.timeout(1800)
async def test_eureka_benchmark(tmp_path: Path) -> None:
    proc, url = await start_server(tmp_path)
    try:
        populate_s = await populate(url, INSTANCES)
        full, _ = await full_fetches(url, FULL_RUNS)
        delta = await deltas(url, INSTANCES, CHANGES)
        ack_1s = await registration_to_ack(url, "1s", SAMPLES_FAST, 50_000)
        ack_30s = await registration_to_ack(url, "30s", SAMPLES_DEFAULT, 55_000)
    finally:
        proc.stop()
    results = {
        "instances": INSTANCES,
        "apps": INSTANCES // APPS_SIZE,
        "populate_s": round(populate_s, 2),
        "full_fetch": full,
        "delta": delta,
        "registration_to_envoy_ack": [ack_1s, ack_30s],
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }
    text = json.dumps(results, indent=2)
    print(text)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text + "\n")
    # Sanity only: every fetch reconciled and every registration reached Envoy.
    assert delta["hash_mismatches"] == 0
