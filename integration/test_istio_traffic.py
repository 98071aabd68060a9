"""Istio's own bookinfo VirtualService / DestinationRule samples move real traffic through real
Envoy the way their descriptions say, each measured over at least 1,000 requests.

The samples are those of Istio's ``samples/bookinfo/networking`` folder as written (short host
names, no namespace, ``networking.istio.io/v1``): ``destination-rule-all``, ``virtual-service-
all-v1``, ``virtual-service-reviews-v2-v3``, ``virtual-service-reviews-test-v2`` (the ``jason``
header) and ``virtual-service-ratings-test-delay`` / ``-abort``. The mesh is the one the
RouteRule traffic tests use (:mod:`integration.test_routing_rules`), plus ``ratings`` v1 and v2.
Every load loop is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path

import aiohttp

from integration.routing_helpers import (
    RoutingMesh,
    count,
    http_service,
    request,
    routing_mesh,
    versioned,
)
from integration.test_routing_rules import A_IP, reviews_mesh

N = 1000
RATINGS = "ratings.default.svc.cluster.local"
R1, R2 = "127.0.101.31", "127.0.101.32"
JASON = {"end-user": "jason"}

SUBSETS = {
    "productpage": ["v1"],
    "reviews": ["v1", "v2", "v3"],
    "ratings": ["v1", "v2", "v2-mysql", "v2-mysql-vm"],
    "details": ["v1", "v2"],
}
DESTINATION_RULE_ALL = "".join(
    f"""---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: {host}
spec:
  host: {host}
  subsets:
"""
    + "".join(f"  - name: {s}\n    labels:\n      version: {s}\n" for s in subsets)
    for host, subsets in SUBSETS.items()
)
VIRTUAL_SERVICE_ALL_V1 = "".join(
    f"""---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: {host}
spec:
  hosts:
  - {host}
  http:
  - route:
    - destination:
        host: {host}
        subset: v1
"""
    for host in SUBSETS
)
REVIEWS_V2_V3 = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - route:
    - destination:
        host: reviews
        subset: v2
      weight: 50
    - destination:
        host: reviews
        subset: v3
      weight: 50
"""
REVIEWS_TEST_V2 = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v1
"""
RATINGS_FAULT = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts:
  - ratings
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    fault:
{fault}
    route:
    - destination:
        host: ratings
        subset: v1
  - route:
    - destination:
        host: ratings
        subset: v1
"""
RATINGS_TEST_DELAY = RATINGS_FAULT.format(
    fault="      delay:\n        percentage:\n          value: 100.0\n        fixedDelay: 7s"
)
RATINGS_TEST_ABORT = RATINGS_FAULT.format(
    fault="      abort:\n        percentage:\n          value: 100.0\n        httpStatus: 500"
)


async def bookinfo(mesh: RoutingMesh) -> str:
    """reviews v1-v3 and ratings v1-v2 behind the productpage client's sidecar; its outbound URL."""
    await reviews_mesh(mesh)
    for name, ip in (("ratings-v1", R1), ("ratings-v2", R2)):
        await mesh.version_backend(name, ip)
    mesh.member.put_service(http_service(RATINGS), [versioned(R1, "v1"), versioned(R2, "v2")])
    a = await mesh.sidecar(A_IP, "productpage")
    return a.outbound_url + "/"


async def timed_counts(
    session: aiohttp.ClientSession,
    url: str,
    host: str,
    n: int,
    headers: Mapping[str, str],
    concurrency: int,
    budget: float,
) -> tuple[dict[str, int], list[float]]:
    """``n`` requests, ``concurrency`` at a time, all within ``budget`` seconds: answers counted
    as :func:`count` does, and each request's duration."""
    gate = asyncio.Semaphore(concurrency)
    durations: list[float] = []
    counts: dict[str, int] = {}

    async def one() -> None:
        async with gate:
            started = time.monotonic()
            status, body, _ = await request(session, url, host, headers, timeout=budget)
            durations.append(time.monotonic() - started)
            key = body if status == 200 else f"HTTP {status}"
            counts[key] = counts.get(key, 0) + 1

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), budget)
    return counts, durations


async def test_bookinfo_samples_route_as_described(tmp_path: Path) -> None:
    async with routing_mesh(tmp_path / "rules") as mesh:
        url = await bookinfo(mesh)
        mesh.write("destination-rule-all", DESTINATION_RULE_ALL)
        async with aiohttp.ClientSession() as session:
            # all-v1: every request to every service goes to its v1.
            await mesh.apply("virtual-service-all-v1", VIRTUAL_SERVICE_ALL_V1)
            assert await count(session, url, "reviews", N) == {"v1": N}
            assert await count(session, url, "ratings", N) == {"ratings-v1": N}

            # reviews-v2-v3: half to v2, half to v3, none to v1. Binomial(1000, 0.5): sd 15.8,
            # 5 sd either side.
            await mesh.apply("reviews", REVIEWS_V2_V3)
            split = await count(session, url, "reviews", N)
            print(f"reviews-v2-v3 over {N} requests: {split}")
            assert set(split) <= {"v2", "v3"}, split
            assert 421 <= split.get("v3", 0) <= 579, split

            # reviews-test-v2: the user jason sees v2, everyone else v1.
            await mesh.apply("reviews", REVIEWS_TEST_V2)
            assert await count(session, url, "reviews", N, JASON) == {"v2": N}
            assert await count(session, url, "reviews", N) == {"v1": N}
            assert await count(session, url, "reviews", N, {"end-user": "jasonx"}) == {"v1": N}


async def test_bookinfo_ratings_delay_and_abort_for_jason_only(tmp_path: Path) -> None:
    async with routing_mesh(tmp_path / "rules") as mesh:
        url = await bookinfo(mesh)
        mesh.write("destination-rule-all", DESTINATION_RULE_ALL)
        connector = aiohttp.TCPConnector(limit=N)
        async with aiohttp.ClientSession(connector=connector) as session:
            # ratings-test-abort: jason gets Envoy's 500 without reaching ratings; others v1.
            await mesh.apply("virtual-service-all-v1", VIRTUAL_SERVICE_ALL_V1)
            await mesh.apply("ratings", RATINGS_TEST_ABORT)
            reached = len(mesh.version_backends[3].requests)
            assert await count(session, url, "ratings", N, JASON) == {"HTTP 500": N}
            assert len(mesh.version_backends[3].requests) == reached
            assert await count(session, url, "ratings", N) == {"ratings-v1": N}

            # ratings-test-delay: every jason request waits the sample's 7 s, then reaches v1
            # (all at once: the delay is the proxy's timer, not a worker per request); others
            # are answered at once.
            await mesh.apply("ratings", RATINGS_TEST_DELAY)
            started = time.monotonic()
            counts, durations = await timed_counts(session, url, "ratings", N, JASON, N, 60)
            assert counts == {"ratings-v1": N}, counts
            took = time.monotonic() - started
            print(
                f"ratings-test-delay, jason, {N} at once: {min(durations):.3f}-"
                f"{max(durations):.3f} s each, {took:.1f} s in all"
            )
            assert min(durations) >= 6.9, min(durations)
            assert took < 40
            counts, durations = await timed_counts(session, url, "ratings", N, {}, 8, 60)
            print(f"ratings-test-delay, others, {N}: at most {max(durations):.3f} s each")
            assert counts == {"ratings-v1": N}, counts
            assert max(durations) < 2.0, max(durations)
