"""Benchmark: what Mixer in the data path adds to a request through real Envoy.

A real hub (static registry, Pilot, Mixer with a denier rule on another service and the
prometheus request count), a client sidecar, a destination sidecar with its node-local Mixer
client, and an aiohttp backend, all on loopback (127.0.131.x). Sequential requests on one
keep-alive connection, client -> client sidecar -> api sidecar (ext_authz Check + access log)
-> backend; latency per request at p50/p90/p99 for:

1. no Mixer (``dataPath.enabled: false``: Pilot adds no filter);
2. Mixer, Check cache on (the repeated request is answered by the client's cache);
3. Mixer, Check cache off (every request is a Check to the hub).

Also the cache hit ratio of scenario 2 and how many Report bags reached Mixer. The machine is
shared (2 vCPUs, other builds), so treat the figures as orders of magnitude.

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

from integration.mixer_datapath_helpers import datapath_mesh, workload  # noqa: E402
from meshfed.mixer.settings import DataPathSettings  # noqa: E402

CLIENT_IP, API_IP = "127.0.131.2", "127.0.131.12"
API = "api.default.svc.cluster.local"
SERVICES = workload("client", "client.default.svc.cluster.local", CLIENT_IP, 9080) + workload(
    "api", API, API_IP, 9080
)
POLICY = """
apiVersion: config.istio.io/v1alpha2
kind: denier
metadata: {name: closed, namespace: istio-system}
spec:
  status: {code: 7, message: closed}
---
apiVersion: config.istio.io/v1alpha2
kind: checknothing
metadata: {name: nothing, namespace: istio-system}
spec:
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: deny-web, namespace: istio-system}
spec:
  match: destination.service == "web.default.svc.cluster.local"
  actions:
  - handler: closed.denier
    instances: [nothing.checknothing]
---
apiVersion: config.istio.io/v1alpha2
kind: metric
metadata: {name: requestcount, namespace: istio-system}
spec:
  value: "1"
  dimensions:
    source_service: source.service | "unknown"
    destination_service: destination.service | "unknown"
    response_code: response.code | 200
---
apiVersion: config.istio.io/v1alpha2
kind: prometheus
metadata: {name: handler, namespace: istio-system}
spec:
  metrics:
  - name: request_count
    instance_name: requestcount.metric.istio-system
    kind: COUNTER
    label_names: [source_service, destination_service, response_code]
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: promhttp, namespace: istio-system, labels: {istio-protocol: http}}
spec:
  actions:
  - handler: handler.prometheus
    instances: [requestcount.metric]
"""
WARMUP, REQUESTS = 50, 1000


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def scenario(name: str, data_path: DataPathSettings, cache_entries: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="meshfed-bench-") as folder:
        async with datapath_mesh(Path(folder), SERVICES, POLICY, data_path, cache_entries) as mesh:
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
            api_client = next(
                (c for c in mesh.clients if f"mixer-{API_IP}" in str(c.socket_path)), None
            )
            out: dict[str, Any] = {
                "scenario": name,
                "requests": REQUESTS,
                "p50_ms": round(statistics.median(timings), 3),
                "p90_ms": round(pct(timings, 0.90), 3),
                "p99_ms": round(pct(timings, 0.99), 3),
                "mean_ms": round(statistics.fmean(timings), 3),
            }
            if api_client is not None:
                await asyncio.sleep(0.5)  # Envoy's access-log flush
                await api_client.flush_reports()
                out["report_bags_sent"] = api_client.batcher.stats.sent
                out["report_requests"] = api_client.batcher.stats.requests
                if api_client.cache is not None:
                    out["cache_hit_ratio"] = round(api_client.cache.stats.hit_ratio, 4)
            return out


async def main() -> None:
    results = [
        await scenario("no mixer", DataPathSettings(enabled=False), 10_000),
        await scenario("mixer, check cache on", DataPathSettings(), 10_000),
        await scenario("mixer, check cache off", DataPathSettings(), 0),
    ]
    base = results[0]["p50_ms"]
    for r in results:
        r["added_p50_ms"] = round(r["p50_ms"] - base, 3)
        print(json.dumps(r))
    out = ROOT / "bench" / "results" / "mixer_datapath.json"
    out.write_text(json.dumps({"results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main())
