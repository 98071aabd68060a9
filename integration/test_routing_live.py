"""Rules applied live: under continuous traffic no request fails while routes and subset clusters
change (the seed's 404/503 known issue), and the real hub process (``meshfed up``) reads rules
from the mesh config's ``configPaths`` and pushes each edit to a running Envoy.

Hosts: 127.0.105.x.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import aiohttp

from integration.pilot_helpers import eventually, uptime_and_epoch
from integration.routing_helpers import (
    VersionBackend,
    count,
    free_port,
    http_service,
    hub_ready,
    kill,
    request,
    routing_mesh,
    start_hub,
    versioned,
)
from meshfed.proxy import EnvoyProcess, ProxySpec, wait_ready

REVIEWS = "reviews.default.svc.cluster.local"
A_IP = "127.0.105.2"
IPS = {"v1": "127.0.105.11", "v2": "127.0.105.12", "v3": "127.0.105.13"}


def split(weights: dict[str, int], precedence: int = 1) -> str:
    routes = "\n".join(f"  - {{labels: {{version: {v}}}, weight: {w}}}" for v, w in weights.items())
    return f"""apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {{name: reviews-split}}
spec:
  destination: {{name: reviews}}
  precedence: {precedence}
  route:
{routes}
"""


async def test_rule_changes_under_continuous_traffic_fail_no_request(tmp_path: Path) -> None:
    async with routing_mesh(tmp_path / "rules") as mesh:
        for version, ip in IPS.items():
            await mesh.version_backend(version, ip)
        mesh.member.replace(
            [http_service(REVIEWS)], {REVIEWS: [versioned(ip, v) for v, ip in IPS.items()]}
        )
        a = await mesh.sidecar(A_IP, "productpage")
        url = a.outbound_url + "/"
        results: dict[str, int] = {}
        stop = asyncio.Event()

        async def client(session: aiohttp.ClientSession) -> None:
            while not stop.is_set():
                try:
                    status, body, _ = await request(session, url, "reviews", timeout=5)
                    key = body if status == 200 else f"HTTP {status}: {body[:60]}"
                except (TimeoutError, aiohttp.ClientError) as exc:
                    key = f"error {exc!r}"
                results[key] = results.get(key, 0) + 1

        steps = [
            split({"v1": 100}),
            split({"v1": 50, "v2": 50}),
            split({"v2": 100}),
            split({"v3": 100}),
            split({"v1": 10, "v3": 90}),
            None,  # rule removed: back to the whole service
            split({"v2": 100}),
        ]
        async with aiohttp.ClientSession() as session:
            workers = [asyncio.create_task(client(session)) for _ in range(4)]
            try:
                for step in steps:
                    if step is None:
                        await mesh.unapply("split")
                    else:
                        await mesh.apply("split", step)
                    await asyncio.sleep(0.5)
            finally:
                stop.set()
                await asyncio.gather(*workers)
            failures = {k: n for k, n in results.items() if k not in IPS}
            assert sum(results.values()) > 200, results
            assert failures == {}, results
            # The last step is in force.
            assert await count(session, url, "reviews", 10) == {"v2": 10}


async def test_hub_reads_config_paths_and_pushes_rule_edits(tmp_path: Path) -> None:
    services = tmp_path / "services.yaml"
    eps = "\n".join(
        f"    - {{address: {ip}, ports: {{http: 9080}}, labels: {{version: {v}}}}}"
        for v, ip in IPS.items()
    )
    services.write_text(
        f"""apiVersion: networking.meshfed.io/v1alpha1
kind: ServiceEntry
metadata: {{name: reviews, namespace: default}}
spec:
  hosts: [{REVIEWS}]
  resolution: STATIC
  ports:
    - {{number: 80, name: http, protocol: HTTP}}
  endpoints:
{eps}
"""
    )
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "split.yaml").write_text(split({"v1": 100}))
    monitoring, discovery = free_port(), free_port()
    config = tmp_path / "mesh.yaml"
    config.write_text(
        f"""apiVersion: meshfed.io/v1alpha1
kind: MeshConfig
metadata: {{name: test}}
spec:
  listen: {{monitoring: "127.0.0.1:{monitoring}", discovery: "127.0.0.1:{discovery}"}}
  pilot: {{debounceQuiet: 0.02, debounceMax: 0.2}}
  registries:
    - {{name: static, kind: static, paths: [{services}]}}
  configPaths: [{rules}]
"""
    )
    hub_url = f"http://127.0.0.1:{monitoring}"
    log = tmp_path / "hub.log"
    envoy = EnvoyProcess(ProxySpec(ip=A_IP, workload="a", pilot=f"127.0.0.1:{discovery}"))
    hub = await start_hub(config, log)
    async with contextlib.AsyncExitStack() as stack:
        for version, ip in IPS.items():
            backend = VersionBackend(version, ip)
            await backend.start()
            stack.push_async_callback(backend.stop)
        try:
            await eventually(
                lambda: hub_ready(hub_url), 30, f"hub ready ({log.read_text()[-800:]})"
            )
            await envoy.start()
            await wait_ready(envoy, hub_url, timeout=30)
            url = envoy.outbound_url + "/"
            async with aiohttp.ClientSession() as session:
                # The rule was in force before the proxy's first config.
                assert await count(session, url, "reviews", 10) == {"v1": 10}
                async with session.get(hub_url + "/debug/configz") as response:
                    configz = await response.json()
                assert configz["stores"][0]["route_rules"] == ["RouteRule default/reviews-split"]
                (rules / "split.yaml").write_text(split({"v3": 100}))

                async def moved() -> bool:
                    return await count(session, url, "reviews", 3) == {"v3": 3}

                started = time.monotonic()
                await eventually(moved, 15, "the rule edit to reach Envoy")
                assert time.monotonic() - started < 10
                # A broken edit keeps the last good rule in force and is reported.
                (rules / "split.yaml").write_text(split({"v1": 60, "v2": 60}))
                await asyncio.sleep(1.5)
                assert await count(session, url, "reviews", 5) == {"v3": 5}
                async with session.get(hub_url + "/debug/configz") as response:
                    configz = await response.json()
                assert any("summing to 100" in e for e in configz["stores"][0]["errors"])
                _, epoch = await uptime_and_epoch(envoy)
                assert envoy.running and epoch == 0  # never restarted
        finally:
            await envoy.stop()
            await kill(hub)
