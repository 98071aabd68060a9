"""Benchmark: what Mixer in the data path adds to a request through real Envoy, and what
it costs the hub.

A hub serving Pilot (in this process: static registry, the Mixer plugin) and a second hub, a
``meshfed up`` process, serving the Mixer that the clients call (a denier rule on another
service and the prometheus request count), so its CPU can be read from ``/proc`` apart
from the load generator's; a client sidecar, a destination sidecar with its node-local Mixer
client (in this process), an aiohttp backend, all on loopback (127.0.131.x). Figures:

1. Latency: sequential requests on one keep-alive connection, client -> client sidecar -> api
   sidecar (ext_authz Check + access log) -> backend, p50/p90/p99 for no Mixer
   (``dataPath.enabled: false``), Mixer with Check cache hits, Mixer with every Check a miss
   (cache off); the hit ratio of the cached run.
2. Hub CPU per 1,000 requests/s: requests paced at ``RATE``/s for ``SECONDS`` s; the Mixer hub
   process's user+system CPU seconds over the wall time, scaled to 1,000 requests/s (Istio
   0.8's sizing anchor: 0.5 vCPU per 1,000 requests/s at a > 80 % hit ratio), with cache hits
   and with misses.
3. Reports with and without batching at that paced rate: Report calls per second, bags
   delivered per second and hub CPU per 1,000 requests/s, with the client's batches (up to
   1,000 bags or 0.1 s) and with one Report call per access-log entry. (The client's maximum
   Report throughput without Envoy is ``bench/mixer_client_report.py``.)

The machine is shared (2 vCPUs, other builds), so treat the figures as orders of magnitude.

Writes ``bench/results/mixer_datapath.json``. Run (holding the integration lock):
``flock /tmp/meshfed-integration.lock .venv/bin/python bench/mixer_datapath.py``.
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
    DENY_WEB,
    REQUEST_COUNT,
    HubProcess,
    datapath_mesh,
    mixer_hub_process,
    paced,
    request_count,
    workload,
)
from meshfed.mixer.settings import DataPathSettings  # noqa: E402

CLIENT_IP, API_IP, HUB_IP = "127.0.131.2", "127.0.131.12", "127.0.131.50"
CLIENT = "client.default.svc.cluster.local"
API = "api.default.svc.cluster.local"
SERVICES = workload("client", "client.default.svc.cluster.local", CLIENT_IP, 9080) + workload(
    "api", API, API_IP, 9080
)
POLICY = DENY_WEB + "---\n" + REQUEST_COUNT  # web refused; every request counted
WARMUP, REQUESTS = 50, 1000
RATE, SECONDS = 200, 8  # the paced load of figures 2 and 3


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def hub_counted(hub: HubProcess) -> float:
    """Requests to api the Mixer hub's prometheus handler counted, from any source (that hub
    has no registry to name the caller)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{hub.monitoring}/metrics") as response,
    ):
        text = await response.text()
    return sum(request_count(text, source, API, 200) for source in {CLIENT, "unknown"})


async def scenario(
    name: str,
    hub: HubProcess,
    data_path: DataPathSettings,
    cache_entries: int,
    report_batch: int = 1000,
    latency: bool = True,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="meshfed-bench-") as folder:
        async with datapath_mesh(Path(folder), SERVICES, POLICY, data_path, cache_entries) as mesh:
            await mesh.backend("api", API_IP, 8080)
            await mesh.proxy(
                API_IP, "api", "9080:8080", mixer_address=hub.address, report_batch=report_batch
            )
            await mesh.proxy(CLIENT_IP, "client", mixer_client=False)
            api_client = mesh.clients[0] if mesh.clients else None
            out: dict[str, Any] = {"scenario": name}
            url = f"http://{CLIENT_IP}:15001/"
            if latency:
                timings: list[float] = []
                async with aiohttp.ClientSession() as session:
                    for i in range(WARMUP + REQUESTS):
                        started = time.perf_counter()
                        async with session.get(url, headers={"Host": API}) as response:
                            await response.read()
                            assert response.status == 200, response.status
                        if i >= WARMUP:
                            timings.append((time.perf_counter() - started) * 1000)
                out |= {
                    "requests": REQUESTS,
                    "p50_ms": round(statistics.median(timings), 3),
                    "p90_ms": round(pct(timings, 0.90), 3),
                    "p99_ms": round(pct(timings, 0.99), 3),
                    "mean_ms": round(statistics.fmean(timings), 3),
                }
                if api_client is not None and api_client.cache is not None:
                    out["cache_hit_ratio"] = round(api_client.cache.stats.hit_ratio, 4)
            if api_client is None or not data_path.enabled:
                return out
            # paced load: hub CPU, Report calls and bags
            await asyncio.sleep(1.0)
            await api_client.flush_reports()
            counted0 = await hub_counted(hub)
            calls0, bags0 = api_client.batcher.stats.requests, api_client.batcher.stats.sent
            hits0 = api_client.cache.stats.hits if api_client.cache else 0
            cpu0, wall0 = hub.cpu_seconds(), time.monotonic()
            answers = await paced(url, API, RATE, SECONDS)
            assert {code for _, code in answers} == {200}, {code for _, code in answers}
            # every bag delivered and counted by the hub ends the measured period
            deadline = time.monotonic() + 30
            while await hub_counted(hub) < counted0 + len(answers):
                assert time.monotonic() < deadline, (
                    f"the hub counted {await hub_counted(hub) - counted0} of {len(answers)}"
                )
                await asyncio.sleep(0.05)
            wall, cpu = time.monotonic() - wall0, hub.cpu_seconds() - cpu0
            rate = len(answers) / wall
            calls = api_client.batcher.stats.requests - calls0
            bags = api_client.batcher.stats.sent - bags0
            out |= {
                "paced_requests": len(answers),
                "achieved_rps": round(rate, 1),
                "hub_cpu_seconds": round(cpu, 3),
                "hub_vcpu_per_1000_rps": round(cpu / wall / (rate / 1000), 3),
                "report_calls_per_s": round(calls / wall, 1),
                "report_bags_per_s": round(bags / wall, 1),
                "bags_per_report_call": round(bags / calls, 1) if calls else None,
            }
            if api_client.cache is not None:
                out["paced_hit_ratio"] = round(
                    (api_client.cache.stats.hits - hits0) / len(answers), 4
                )
            return out


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="meshfed-bench-hub-") as folder:
        policy = Path(folder) / "policy"
        policy.mkdir()
        (policy / "mixer.yaml").write_text(POLICY)
        async with mixer_hub_process(Path(folder) / "hub", HUB_IP, policy) as hub:
            results = [
                await scenario("no mixer", hub, DataPathSettings(enabled=False), 10_000),
                await scenario("mixer, check cache hits", hub, DataPathSettings(), 10_000),
                await scenario("mixer, check cache misses", hub, DataPathSettings(), 0),
                await scenario(
                    "mixer, cache hits, one Report per entry",
                    hub,
                    DataPathSettings(),
                    10_000,
                    report_batch=1,
                    latency=False,
                ),
            ]
    base = results[0]["p50_ms"]
    for r in results:
        if "p50_ms" in r:
            r["added_p50_ms"] = round(r["p50_ms"] - base, 3)
        print(json.dumps(r))
    out = ROOT / "bench" / "results" / "mixer_datapath.json"
    summary = {
        "rate_rps": RATE,
        "seconds": SECONDS,
        "istio_0_8_anchor_vcpu_per_1000_rps": 0.5,
        "python": sys.version.split()[0],
    }
    out.write_text(json.dumps({"results": results, **summary}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main())
