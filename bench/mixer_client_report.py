"""Benchmark: the node-local client's Report batching against meshfed's Mixer over gRPC.

A :class:`ReportBatcher` sends access-log-shaped attribute bags (12 attributes, bookinfo
traffic) to a real Mixer component on loopback running Istio 0.2's default telemetry config; its
``prometheus`` and ``stdio`` handler names are served by a counting kind, so the figure is the
client, the transport and Mixer's dispatch, not a metrics backend (client and Mixer share this
one process, as they share the bench machine's cores). Figures:

1. Entries per second delivered, batched (``max_entries`` 1,000, the default) and unbatched
   (``max_entries`` 1: one Report call per entry), from the first ``add`` to the last answer.
2. A hub restart: 10,000 entries offered at ~2,000/s while Mixer is stopped after 1.5 s and
   started again on the same port 1 s later; how many entries the telemetry handler received
   (goal: all of them; delivery is at least once, so a batch in flight at the stop may count
   twice), the failed sends, and the entries dropped by the bound (goal: 0).

Writes ``bench/results/mixer_client_report.json``. Run: ``python bench/mixer_client_report.py``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from meshfed.core.resources import FieldReader  # noqa: E402
from meshfed.mixer.api.service import MixerStub  # noqa: E402
from meshfed.mixer.api.v1 import report_pb2  # noqa: E402
from meshfed.mixer.component import Mixer  # noqa: E402
from meshfed.mixer.handlers.api import CheckResult, HandlerEnv  # noqa: E402
from meshfed.mixer.settings import MixerSettings  # noqa: E402
from meshfed.nodeagent.mixerclient.report_batcher import ReportBatcher  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "mixer_client_report.json"
TELEMETRY = ROOT / "mixer" / "tests" / "data" / "istio-0.2-telemetry.yaml"
RECEIVED = {"logentry": 0}


class Counting:
    async def check(self, instance: Any) -> CheckResult:
        return CheckResult()

    async def report(self, instances: Sequence[Any]) -> None:
        for inst in instances:
            if type(inst).__name__ == "LogEntry":
                RECEIVED["logentry"] += 1

    async def quota(self, instance: Any, request: Any) -> Any:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class CountingKind:
    templates = frozenset({"checknothing", "listentry", "logentry", "metric", "reportnothing"})

    def __init__(self, name: str) -> None:
        self.name = name

    def parse_params(self, reader: FieldReader) -> dict[str, Any]:
        return dict(reader.data)

    async def build(self, params: Any, env: HandlerEnv) -> Counting:
        return Counting()


KINDS = {"prometheus": CountingKind("prometheus"), "stdio": CountingKind("stdio")}
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SERVICES = ["productpage", "reviews", "ratings", "details"]


def entry(i: int) -> dict[str, Any]:
    dst = SERVICES[i % 4]
    return {
        "context.protocol": "http",
        "source.ip": ipaddress.ip_address("10.1.0.10").packed,
        "destination.ip": ipaddress.ip_address(f"10.1.0.{20 + i % 4}").packed,
        "destination.service": f"{dst}.default.svc.cluster.local",
        "request.path": f"/{dst}/{i % 50}",
        "request.method": "GET",
        "request.headers": {"x-request-id": f"{i:016x}", "x-user": ["jason", "bob"][i % 2]},
        "request.size": 0,
        "request.time": START + dt.timedelta(milliseconds=i),
        "response.code": 200 if i % 20 else 503,
        "response.size": 1000 + i % 300,
        "response.duration": dt.timedelta(microseconds=800 + i % 900),
    }


async def start_mixer(folder: Path, port: int = 0) -> Mixer:
    mixer = Mixer(
        MixerSettings(enabled=True, listen=f"127.0.0.1:{port}", config_paths=(str(folder),)),
        kinds=KINDS,
    )
    await mixer.start()
    assert not mixer.problems(), mixer.problems()
    return mixer


async def delivered(target: int, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while RECEIVED["logentry"] < target:
            await asyncio.sleep(0.01)


async def throughput(folder: Path, entries: int, max_entries: int) -> dict[str, Any]:
    mixer = await start_mixer(folder)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{mixer.port}")
    stub = MixerStub(channel)

    async def send(request: report_pb2.ReportRequest, bags: object = ()) -> None:
        await stub.Report(request, timeout=5)

    batcher = ReportBatcher(send, max_entries=max_entries, max_delay=0.05)
    bags = [entry(i) for i in range(entries)]
    RECEIVED["logentry"] = 0
    task = asyncio.create_task(batcher.run())
    t = time.perf_counter()
    for bag in bags:
        batcher.add(bag)
        if batcher.pending >= 5 * max_entries:
            await asyncio.sleep(0)  # a proxy's log stream arrives over time, not all at once
    await delivered(entries, 120)
    elapsed = time.perf_counter() - t
    async with asyncio.timeout(10):  # the last answer may still be on its way
        while batcher.pending:
            await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await channel.close()
    await mixer.stop()
    return {
        "entries": entries,
        "max_entries": max_entries,
        "report_calls": batcher.stats.requests,
        "seconds": round(elapsed, 3),
        "entries_per_second": round(entries / elapsed),
    }


async def restart(folder: Path, entries: int = 10_000, rate: float = 2000.0) -> dict[str, Any]:
    mixer = await start_mixer(folder)
    port = mixer.port
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    stub = MixerStub(channel)

    async def send(request: report_pb2.ReportRequest, bags: object = ()) -> None:
        await stub.Report(request, timeout=2)

    batcher = ReportBatcher(send, max_delay=0.2, retry_min=0.05, retry_max=0.5)
    RECEIVED["logentry"] = 0
    task = asyncio.create_task(batcher.run())
    loop = asyncio.get_running_loop()
    start = loop.time()
    stopped_at = restarted_at = None
    for i in range(entries):
        batcher.add(entry(i))
        due = start + (i + 1) / rate
        now = loop.time()
        if due > now:
            await asyncio.sleep(due - now)
        if stopped_at is None and now - start >= 1.5:
            await mixer.stop()
            stopped_at = loop.time() - start
        elif stopped_at is not None and restarted_at is None and now - start >= stopped_at + 1.0:
            mixer = await start_mixer(folder, port)
            restarted_at = loop.time() - start
    await delivered(entries, 60)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await channel.close()
    await mixer.stop()
    return {
        "entries_offered": entries,
        "offered_per_second": rate,
        "hub_stopped_at_s": round(stopped_at or 0, 2),
        "hub_restarted_at_s": round(restarted_at or 0, 2),
        "entries_received_by_mixer": RECEIVED["logentry"],
        "lost": max(0, entries - RECEIVED["logentry"]),
        "received_twice": max(0, RECEIVED["logentry"] - entries),
        "failed_sends": batcher.stats.send_failures,
        "dropped_by_bound": batcher.stats.dropped,
    }


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        folder = Path(tmp_name)
        (folder / "telemetry.yaml").write_text(TELEMETRY.read_text())
        batched = await throughput(folder, 20_000, 1000)
        unbatched = await throughput(folder, 2_000, 1)
        restarted = await restart(folder)
    results = {
        "batched": batched,
        "unbatched": unbatched,
        "speedup": round(batched["entries_per_second"] / unbatched["entries_per_second"], 1),
        "hub_restart": restarted,
        "python": sys.version.split()[0],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
