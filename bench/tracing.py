"""Benchmark: what tracing adds to a request through real Envoy, and whether every trace arrives.

A real hub (static registry, Pilot with the Mixer and tracing plugins, Mixer with the
prometheus request count), a client sidecar, a destination sidecar with its node-local Mixer
client (Check cache on), an aiohttp backend, and a real Jaeger all-in-one receiving OTLP/gRPC,
all on loopback (127.0.134.x). Sequential requests on one keep-alive connection, client ->
client sidecar -> api sidecar (Check + access log) -> backend; latency per request at
p50/p90/p99 for:

1. tracing off (no ``spec.tracing``);
2. tracing on, ``sampling: 0`` (tracer configured, nothing sampled);
3. tracing on, ``sampling: 100`` (every request a trace: two Envoy spans, the client's and,
   on a cache miss, Mixer's Check span, and a Report span per request).

For scenario 3 it also counts the traces Jaeger's query API returns for ``api`` after the run
(every request should be one). The machine is shared (2 vCPUs, other builds), so treat the
figures as orders of magnitude.

Writes ``bench/results/tracing.json``. Run (holding the integration lock):
``flock /tmp/meshfed-integration.lock .venv/bin/python bench/tracing.py``.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from integration.mixer_datapath_helpers import (  # noqa: E402
    REQUEST_COUNT,
    datapath_mesh,
    workload,
)
from integration.peers.jaeger import JaegerServer, start_jaeger  # noqa: E402
from meshfed.core.tracing import DISABLED, TracingSettings  # noqa: E402
from meshfed.mixer.settings import DataPathSettings  # noqa: E402

CLIENT_IP, API_IP = "127.0.134.2", "127.0.134.12"
API = "api.default.svc.cluster.local"
SERVICES = workload("client", "client.default.svc.cluster.local", CLIENT_IP, 9080) + workload(
    "api", API, API_IP, 9080
)
WARMUP, REQUESTS = 50, 1000
ARRIVAL_TIMEOUT = 60.0  # seconds to wait for the sampled run's traces in Jaeger


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def traces_in_jaeger(jaeger: JaegerServer, want: int) -> int:
    """How many traces of ``api`` Jaeger holds, once that stops growing (bounded in time)."""
    deadline = time.monotonic() + ARRIVAL_TIMEOUT
    count, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        found = len(await asyncio.to_thread(jaeger.traces, API, want * 2 + 10, "1h"))
        if found != count:
            count, last_change = found, time.monotonic()
        if count >= want or time.monotonic() - last_change > 10:
            break
        await asyncio.sleep(1.0)
    return count


async def scenario(name: str, jaeger: JaegerServer, sampling: float | None) -> dict[str, Any]:
    tracing = (
        DISABLED
        if sampling is None
        else TracingSettings(enabled=True, collector=jaeger.otlp_grpc, sampling=sampling)
    )
    before = len(await asyncio.to_thread(jaeger.traces, API, 10_000, "1h"))
    with tempfile.TemporaryDirectory(prefix="meshfed-bench-") as folder:
        async with datapath_mesh(
            Path(folder), SERVICES, REQUEST_COUNT, DataPathSettings(), tracing=tracing
        ) as mesh:
            await mesh.backend("api", API_IP, 8080)
            await mesh.proxy(API_IP, "api", "9080:8080")
            await mesh.proxy(CLIENT_IP, "client")
            timings: list[float] = []
            async with aiohttp.ClientSession() as session:
                for i in range(WARMUP + REQUESTS):
                    started = time.perf_counter()
                    async with session.get(
                        f"http://{CLIENT_IP}:15001/", headers={"Host": API}
                    ) as response:
                        await response.read()
                        assert response.status == 200, response.status
                    if i >= WARMUP:
                        timings.append((time.perf_counter() - started) * 1000)
            out: dict[str, Any] = {
                "scenario": name,
                "requests": REQUESTS,
                "p50_ms": round(statistics.median(timings), 3),
                "p90_ms": round(pct(timings, 0.90), 3),
                "p99_ms": round(pct(timings, 0.99), 3),
                "mean_ms": round(statistics.fmean(timings), 3),
            }
            if sampling:
                total = await traces_in_jaeger(jaeger, before + WARMUP + REQUESTS)
                out["traces_in_jaeger"] = total - before
                out["traces_expected"] = WARMUP + REQUESTS
            return out


async def main() -> None:
    with (
        tempfile.TemporaryDirectory(prefix="meshfed-bench-jaeger-") as folder,
        start_jaeger(Path(folder), host="127.0.134.50") as jaeger,
    ):
        results = [
            await scenario("tracing off", jaeger, None),
            await scenario("tracing on, sampling 0", jaeger, 0.0),
            await scenario("tracing on, sampling 100", jaeger, 100.0),
        ]
    base = results[0]["p50_ms"]
    for r in results:
        r["added_p50_ms"] = round(r["p50_ms"] - base, 3)
        print(json.dumps(r))
    out = ROOT / "bench" / "results" / "tracing.json"
    out.write_text(json.dumps({"results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main())
