"""Destination policies on real Envoy: circuit breaking rejects overflow, outlier detection ejects a
failing endpoint, and a per-version policy guards only that version's subset cluster.

Hosts: 127.0.102.x.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from integration.pilot_helpers import eventually
from integration.routing_helpers import count, http_service, request, routing_mesh, versioned

REVIEWS = "reviews.default.svc.cluster.local"
A_IP = "127.0.102.2"
IPS = {"v1": "127.0.102.11", "v2": "127.0.102.12", "v3": "127.0.102.13"}

ROUTE_V1 = """apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {name: reviews-v1}
spec:
  destination: {name: reviews}
  route: [{labels: {version: v1}}]
"""

BREAKER_V1 = """apiVersion: config.istio.io/v1alpha2
kind: DestinationPolicy
metadata: {name: reviews-v1-cb}
spec:
  destination: {name: reviews, labels: {version: v1}}
  loadBalancing: {name: LEAST_CONN}
  connectTimeout: 1s
  circuitBreaker:
    simpleCb:
      maxConnections: 1
      httpMaxPendingRequests: 1
      httpMaxRequests: 1
"""

OUTLIER = """apiVersion: config.istio.io/v1alpha2
kind: DestinationPolicy
metadata: {name: reviews-outlier}
spec:
  destination: {name: reviews}
  circuitBreaker:
    simpleCb:
      httpConsecutiveErrors: 2
      httpDetectionInterval: 1s
      sleepWindow: 60s
      httpMaxEjectionPercent: 50
"""


async def stat(admin_get, name: str) -> int:  # type: ignore[no-untyped-def]
    status, body = await admin_get(f"/stats?filter={name}")
    assert status == 200
    for line in body.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return 0


async def start(mesh) -> None:  # type: ignore[no-untyped-def]
    for version, ip in IPS.items():
        await mesh.version_backend(version, ip)
    mesh.member.replace(
        [http_service(REVIEWS)], {REVIEWS: [versioned(ip, v) for v, ip in IPS.items()]}
    )


async def test_circuit_breaker_rejects_overflow_of_one_version_only(tmp_path: Path) -> None:
    async with routing_mesh(tmp_path / "rules") as mesh:
        await start(mesh)
        mesh.write("route", ROUTE_V1)
        a = await mesh.sidecar(A_IP, "productpage")
        await mesh.apply("cb", BREAKER_V1)
        v1 = mesh.version_backends[0]
        url = a.outbound_url + "/"
        async with aiohttp.ClientSession() as session:
            assert await count(session, url, "reviews", 5) == {"v1": 5}
            v1.hold = asyncio.Event()
            tasks = [
                asyncio.create_task(request(session, url, "reviews", timeout=15)) for _ in range(12)
            ]
            # Everything that will be rejected is rejected at once; the rest waits on the hold.
            await asyncio.sleep(1.0)
            assert v1.in_flight == 1  # max connections 1, max requests 1
            v1.hold.set()
            results = await asyncio.gather(*tasks)
            ok = [r for r in results if r[0] == 200]
            overflow = [r for r in results if r[0] == 503]
            assert len(ok) + len(overflow) == 12
            assert 1 <= len(ok) <= 2, [r[:2] for r in results]  # one active, one pending
            assert all(r[2].get("x-envoy-overloaded") == "true" for r in overflow)
            assert v1.max_in_flight == 1
            cluster = f"cluster.outbound|80|version=v1|{REVIEWS}"
            rejected = await stat(a.admin, f"{cluster}.upstream_rq_pending_overflow")
            assert rejected == len(overflow)
            # The whole-service cluster has no breaker: with the rule gone, 12 concurrent
            # requests all succeed.
            await mesh.unapply("route")
            v1.hold = asyncio.Event()
            tasks = [
                asyncio.create_task(request(session, url, "reviews", timeout=15)) for _ in range(12)
            ]
            await asyncio.sleep(0.5)
            v1.hold.set()
            results = await asyncio.gather(*tasks)
            assert all(r[0] == 200 for r in results), [r[:2] for r in results]


async def test_outlier_detection_ejects_the_failing_endpoint(tmp_path: Path) -> None:
    async with routing_mesh(tmp_path / "rules") as mesh:
        await start(mesh)
        v2 = mesh.version_backends[1]
        v2.fail_always = True
        a = await mesh.sidecar(A_IP, "productpage")
        url = a.outbound_url + "/"
        async with aiohttp.ClientSession() as session:
            # Without a policy the failing endpoint keeps getting its share.
            first = await count(session, url, "reviews", 30)
            assert first.get("HTTP 503", 0) >= 8, first
            await mesh.apply("outlier", OUTLIER)
            await count(session, url, "reviews", 12)  # v2 fails twice in a row and is ejected
            hits = len(v2.requests)
            after = await count(session, url, "reviews", 40)
            assert after == {"v1": 20, "v3": 20} or set(after) == {"v1", "v3"}, after
            assert len(v2.requests) == hits
            ejected = await stat(
                a.admin,
                f"cluster.outbound|80||{REVIEWS}.outlier_detection.ejections_enforced_total",
            )
            assert ejected >= 1
            status, body, _ = await request(session, url, "reviews")
            assert status == 200 and body in ("v1", "v3")


SOURCE_BREAKER = """apiVersion: config.istio.io/v1alpha2
kind: DestinationPolicy
metadata: {name: reviews-from-productpage}
spec:
  destination: {name: reviews}
  source: {name: productpage, labels: {version: v1}}
  circuitBreaker:
    simpleCb: {maxConnections: 1, httpMaxPendingRequests: 1, httpMaxRequests: 1}
"""


async def concurrent(session, url: str, backend, n: int = 10) -> list[int]:  # type: ignore[no-untyped-def]
    backend.hold = asyncio.Event()
    tasks = [asyncio.create_task(request(session, url, "reviews", timeout=15)) for _ in range(n)]
    await asyncio.sleep(1.0)
    backend.hold.set()
    return [r[0] for r in await asyncio.gather(*tasks)]


async def test_per_source_policy_guards_only_that_source(tmp_path: Path) -> None:
    async with routing_mesh(tmp_path / "rules") as mesh:
        await start(mesh)
        pp = "productpage.default.svc.cluster.local"
        mesh.member.put_service(
            http_service(pp), [versioned(A_IP, "v1")]
        )  # A is productpage v1; B is not in the registry
        mesh.write("route", ROUTE_V1)
        a = await mesh.sidecar(A_IP, "productpage")
        b = await mesh.sidecar("127.0.102.3", "other")
        await mesh.apply("cb", SOURCE_BREAKER)
        v1 = mesh.version_backends[0]
        async with aiohttp.ClientSession() as session:
            from_a = await concurrent(session, a.outbound_url + "/", v1)
            assert from_a.count(503) >= 8 and from_a.count(200) >= 1, from_a
            from_b = await concurrent(session, b.outbound_url + "/", v1)
            assert from_b == [200] * 10
            cluster = f"cluster.outbound|80|version=v1|{REVIEWS}"
            assert await stat(a.admin, f"{cluster}.upstream_rq_pending_overflow") >= 8
            assert await stat(b.admin, f"{cluster}.upstream_rq_pending_overflow") == 0


HEALTH = """apiVersion: config.meshfed.io/v1alpha1
kind: DestinationPolicy
metadata: {name: reviews-health}
spec:
  destination: {name: reviews}
  healthCheck: {path: /healthz, interval: 0.2s, timeout: 0.5s, unhealthyThreshold: 1}
"""


async def test_active_health_check_takes_a_failing_endpoint_out_and_back(tmp_path: Path) -> None:
    async with routing_mesh(tmp_path / "rules") as mesh:
        await start(mesh)
        v2 = mesh.version_backends[1]
        v2.unhealthy = True  # it still answers requests: only the health check says no
        a = await mesh.sidecar(A_IP, "productpage")
        url = a.outbound_url + "/"
        async with aiohttp.ClientSession() as session:
            assert "v2" in await count(session, url, "reviews", 15)  # no policy: v2 serves
            await mesh.apply("health", HEALTH)

            async def v2_out() -> bool:
                return v2.health_checks > 0 and "v2" not in await count(session, url, "reviews", 9)

            await eventually(v2_out, 10, "the active health check to eject v2")
            assert set(await count(session, url, "reviews", 30)) == {"v1", "v3"}
            v2.unhealthy = False

            async def v2_back() -> bool:
                return "v2" in await count(session, url, "reviews", 9)

            await eventually(v2_back, 10, "v2 to pass its health check and come back")
