"""Benchmark: the per-call cost of Mixer's built-in handlers, in process.

What a Check or Report pays inside each handler (the runtime's own cost is measured by its own
bench): µs per call, best of several windows, for

1. ``memquota`` allocation (rolling window, 1,000 distinct dimension sets, with and without a
   deduplication id);
2. ``listchecker`` lookups in 10,000-entry lists of each entry type (strings, case-insensitive,
   IP CIDRs, RE2 regexes as one alternation);
3. ``prometheus`` report of a 1,000-instance batch into a counter and a histogram with labels;
4. ``stdio`` report of a 1,000-entry batch to a file (queueing + formatting on the loop; the
   writer thread's throughput is reported separately);
5. ``redisquota`` against a real ``redis-server`` on loopback (one Lua script per call):
   sequential round trip and concurrent throughput with 32 in flight.

Writes ``bench/results/mixer_handlers.json`` and prints the figures.
Run: ``python bench/mixer_handlers.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import prometheus_client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from meshfed.core.resources import FieldReader  # noqa: E402
from meshfed.mixer.handlers import (  # noqa: E402
    listchecker,
    memquota,
    prometheus,
    redisquota,
    stdio,
)
from meshfed.mixer.handlers.api import HandlerEnv, QuotaRequest  # noqa: E402
from meshfed.mixer.templates import ListEntry, LogEntry, Metric, Quota  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "mixer_handlers.json"


def env() -> HandlerEnv:
    return HandlerEnv("bench", logging.getLogger("bench"), prometheus_client.CollectorRegistry())


def params(kind, spec):
    r = FieldReader("bench.yaml", f"{kind.name} bench/handler", spec)
    out = kind.parse_params(r)
    assert out is not None, [str(e) for e in r.errors]
    return out


async def per_call_us(call: Callable[[int], Awaitable[object]], n: int, windows: int) -> dict:
    samples = []
    for _ in range(windows):
        start = time.perf_counter()
        for i in range(n):
            await call(i)
        samples.append((time.perf_counter() - start) / n * 1e6)
    return {"best_us": round(min(samples), 2), "windows_us": [round(s, 2) for s in samples]}


async def bench_memquota(n: int, windows: int) -> dict:
    spec = {"quotas": [{"name": "q", "maxAmount": 10**9, "validDuration": "1s"}]}
    h = memquota.MemQuota(params(memquota.KIND, spec))
    instances = [Quota("q", {"source": f"s{i}", "destination": "reviews"}) for i in range(1000)]
    plain = await per_call_us(lambda i: h.quota(instances[i % 1000], QuotaRequest(1)), n, windows)
    dedup = await per_call_us(
        lambda i: h.quota(instances[i % 1000], QuotaRequest(1, deduplication_id=f"id{i}")),
        n,
        windows,
    )
    return {"alloc": plain, "alloc_with_dedup_id": dedup}


async def bench_listchecker(n: int, windows: int) -> dict:
    out = {}
    lists = {
        "STRINGS": [f"user-{i}" for i in range(10_000)],
        "CASE_INSENSITIVE_STRINGS": [f"User-{i}" for i in range(10_000)],
        "IP_ADDRESSES": [f"10.{i // 256}.{i % 256}.0/24" for i in range(10_000)],
        "REGEX": [f"^svc-{i}\\.ns[0-9]+$" for i in range(10_000)],
    }
    probes = {
        "STRINGS": [f"user-{i * 7}" for i in range(100)],
        "CASE_INSENSITIVE_STRINGS": [f"USER-{i * 7}" for i in range(100)],
        "IP_ADDRESSES": [f"10.{i % 40}.{i}.9" for i in range(100)],
        "REGEX": [f"svc-{i * 97}.ns{i}" for i in range(100)],
    }
    for entry_type, entries in lists.items():
        started = time.perf_counter()
        h = await listchecker.KIND.build(
            params(listchecker.KIND, {"overrides": entries, "entryType": entry_type}), env()
        )
        build_ms = (time.perf_counter() - started) * 1000
        vals = probes[entry_type]
        result = await per_call_us(
            lambda i, h=h, vals=vals: h.check(ListEntry("l", vals[i % 100])), n, windows
        )
        out[entry_type] = {**result, "build_ms_10k_entries": round(build_ms, 1)}
        await h.close()
    return out


async def bench_prometheus(batches: int, windows: int) -> dict:
    spec = {
        "metrics": [
            {
                "name": "request_count",
                "instanceName": "requestcount",
                "kind": "COUNTER",
                "labelNames": ["source", "destination", "code"],
            },
            {
                "name": "request_duration",
                "instanceName": "requestduration",
                "kind": "DISTRIBUTION",
                "labelNames": ["destination"],
            },
        ]
    }
    h = await prometheus.KIND.build(params(prometheus.KIND, spec), env())
    batch = []
    for i in range(500):
        dims = {"source": f"s{i % 20}", "destination": f"d{i % 10}", "code": 200}
        batch.append(Metric("requestcount", 1, dims))
        batch.append(Metric("requestduration", dt.timedelta(milliseconds=i % 100), dims))
    result = await per_call_us(lambda i: h.report(batch), batches, windows)
    await h.close()
    return {"batch_of_1000_us": result["best_us"], "per_instance_us": result["best_us"] / 1000}


async def bench_stdio(batches: int, windows: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "access.log"
        h = await stdio.KIND.build(params(stdio.KIND, {"logStream": str(path)}), env())
        ts = dt.datetime.now(dt.UTC)
        batch = [
            LogEntry(
                "accesslog",
                {"source": "a", "destination": "b", "code": 200, "latency": dt.timedelta(0.01)},
                ts,
            )
            for _ in range(1000)
        ]
        result = await per_call_us(lambda i: h.report(batch), batches, windows)
        started = time.perf_counter()
        await h.flush()
        for _ in range(batches):
            await h.report(batch)
        await h.flush()
        written = time.perf_counter() - started
        await h.close()
        lines = sum(1 for _ in path.open())
    return {
        "batch_of_1000_us": result["best_us"],
        "per_entry_us": result["best_us"] / 1000,
        "writer_lines_per_s": round(batches * 1000 / written),
        "lines_written": lines,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def bench_redisquota(n: int, windows: int) -> dict:
    binary = shutil.which("redis-server")
    if binary is None:
        return {"skipped": "redis-server not found (python -m integration.provision --only redis)"}
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--dir", tmp],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            out = {}
            for algorithm in ("FIXED_WINDOW", "ROLLING_WINDOW"):
                spec = {
                    "redisServerUrl": f"127.0.0.1:{port}",
                    "connectionPoolSize": 32,
                    "quotas": [
                        {
                            "name": "q",
                            "maxAmount": 10**9,
                            "validDuration": "1s",
                            "bucketDuration": "100ms",
                            "rateLimitAlgorithm": algorithm,
                        }
                    ],
                }
                h = await redisquota.KIND.build(params(redisquota.KIND, spec), env())
                inst = [Quota("q", {"source": f"s{i}"}) for i in range(100)]
                seq = await per_call_us(
                    lambda i, h=h, inst=inst: h.quota(inst[i % 100], QuotaRequest(1)), n, windows
                )
                started = time.perf_counter()
                total = n * 4
                sem = asyncio.Semaphore(32)

                async def one(i, h=h, inst=inst, sem=sem):
                    async with sem:
                        await h.quota(inst[i % 100], QuotaRequest(1))

                await asyncio.gather(*(one(i) for i in range(total)))
                rate = total / (time.perf_counter() - started)
                out[algorithm] = {
                    "sequential_round_trip": seq,
                    "concurrent_32_calls_per_s": round(rate),
                }
                await h.close()
            return out
        finally:
            proc.terminate()
            proc.wait(10)


async def main(quick: bool) -> dict:
    n, windows, batches = (2_000, 2, 5) if quick else (50_000, 5, 50)
    return {
        "memquota": await bench_memquota(n, windows),
        "listchecker": await bench_listchecker(n, windows),
        "prometheus": await bench_prometheus(batches, windows),
        "stdio": await bench_stdio(batches, windows),
        "redisquota": await bench_redisquota(n // 10, windows),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    results = asyncio.run(main(args.quick))
    results["python"] = sys.version.split()[0]
    print(json.dumps(results, indent=2))
    if not args.quick:
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
