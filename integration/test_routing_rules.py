"""Route rules move real traffic through real Envoy sidecars configured by Pilot.

Hosts: 127.0.101.x. ``reviews`` has a v1, a v2 and a v3 endpoint (plain backends that answer
with their version); the client's sidecar routes to them. ``ratings`` is a second service for
mirroring and header tests. Rules are YAML files in a watched folder, applied while Envoy runs.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from integration.pilot_helpers import uptime_and_epoch
from integration.routing_helpers import (
    RoutingMesh,
    count,
    http_service,
    request,
    routing_mesh,
    versioned,
)
from meshfed.registry.model import Endpoint

REVIEWS = "reviews.default.svc.cluster.local"
A_IP = "127.0.101.2"
V1, V2, V3 = "127.0.101.11", "127.0.101.12", "127.0.101.13"
MIRROR_IP = "127.0.101.21"
WS_TIMEOUT = aiohttp.ClientWSTimeout(ws_receive=5, ws_close=5)

HEADER = "apiVersion: config.istio.io/v1alpha2\nkind: RouteRule\n"


def rule(name: str, spec: str, api: str = "config.istio.io/v1alpha2") -> str:
    body = "\n".join("  " + line for line in spec.strip().splitlines())
    return f"apiVersion: {api}\nkind: RouteRule\nmetadata: {{name: {name}}}\nspec:\n{body}\n"


async def reviews_mesh(mesh: RoutingMesh, client_labels: dict[str, str] | None = None) -> None:
    """Three versions of reviews, each its own backend; the client A has a sidecar."""
    for name, ip in (("v1", V1), ("v2", V2), ("v3", V3)):
        await mesh.version_backend(name, ip)
    services = [http_service(REVIEWS), http_service("productpage.default.svc.cluster.local")]
    endpoints = {
        REVIEWS: [versioned(V1, "v1"), versioned(V2, "v2"), versioned(V3, "v3")],
        # The client workload: source-matching rules look its labels up by its IP.
        "productpage.default.svc.cluster.local": [
            Endpoint(A_IP, ports={"http": 9080}, labels=client_labels or {"version": "v1"})
        ],
    }
    mesh.member.replace(services, endpoints)


async def test_weighted_split_and_live_change_without_restart(tmp_path: Path) -> None:
    async with routing_mesh(tmp_path / "rules") as mesh:
        await reviews_mesh(mesh)
        a = await mesh.sidecar(A_IP, "productpage")
        url = a.outbound_url + "/reviews"
        async with aiohttp.ClientSession() as session:
            await mesh.apply(
                "split",
                rule(
                    "reviews-split",
                    """
destination: {name: reviews}
route:
- {labels: {version: v1}, weight: 90}
- {labels: {version: v2}, weight: 10}
""",
                ),
            )
            n = 1000
            counts = await count(session, url, "reviews", n)
            assert set(counts) <= {"v1", "v2"}, counts
            # Binomial(1000, 0.1): sd ~ 9.5; 5 sd either side.
            assert 52 <= counts.get("v2", 0) <= 148, counts
            up_before, epoch = await uptime_and_epoch(a)
            await mesh.apply(
                "split",
                rule(
                    "reviews-split",
                    """
destination: {name: reviews}
route:
- {labels: {version: v1}, weight: 50}
- {labels: {version: v3}, weight: 50}
""",
                ),
            )
            counts = await count(session, url, "reviews", n)
            assert set(counts) <= {"v1", "v3"}, counts
            assert 420 <= counts.get("v3", 0) <= 580, counts  # sd ~ 15.8
            up_after, epoch_after = await uptime_and_epoch(a)
            assert epoch_after == epoch == 0 and up_after >= up_before  # same Envoy process
            await mesh.unapply("split")
            counts = await count(session, url, "reviews", 60)
            assert set(counts) == {"v1", "v2", "v3"}, counts  # round robin over all again


async def test_header_cookie_match_and_precedence(tmp_path: Path) -> None:
    async with routing_mesh(tmp_path / "rules") as mesh:
        await reviews_mesh(mesh)
        a = await mesh.sidecar(A_IP, "productpage")
        url = a.outbound_url + "/reviews/1"
        mesh.write(
            "default",
            rule(
                "reviews-default",
                """
destination: {name: reviews}
precedence: 1
route: [{labels: {version: v1}}]
""",
            ),
        )
        await mesh.apply(
            "jason",
            rule(
                "reviews-jason",
                """
destination: {name: reviews}
precedence: 2
match:
  request:
    headers:
      cookie: {regex: "^(.*?;)?(user=jason)(;.*)?$"}
route: [{labels: {version: v2}}]
""",
            ),
        )
        async with aiohttp.ClientSession() as session:
            jason = {"Cookie": "user=jason; theme=dark"}
            assert await count(session, url, "reviews", 20, jason) == {"v2": 20}
            assert await count(session, url, "reviews", 20) == {"v1": 20}
            other = {"Cookie": "user=jasonx"}
            assert await count(session, url, "reviews", 10, other) == {"v1": 10}
            # Uri prefix and an exact header, meshfed's own API group, higher precedence.
            await mesh.apply(
                "beta",
                rule(
                    "reviews-beta",
                    """
destination: {name: reviews}
precedence: 5
match:
  request:
    headers:
      uri: {prefix: /reviews/beta}
      x-tester: {exact: "yes"}
route: [{labels: {version: v3}}]
""",
                    api="config.meshfed.io/v1alpha1",
                ),
            )
            beta = a.outbound_url + "/reviews/beta/7"
            assert await count(session, beta, "reviews", 5, {"x-tester": "yes"}) == {"v3": 5}
            assert await count(session, beta, "reviews", 5, {"x-tester": "no"}) == {"v1": 5}
            # Precedence: the jason rule (2) loses against beta (5) for a beta URI.
            both = {**jason, "x-tester": "yes"}
            assert await count(session, beta, "reviews", 5, both) == {"v3": 5}


@pytest.mark.parametrize("labels,expect", [({"version": "v1"}, "v2"), ({"version": "v9"}, "v1")])
async def test_source_label_match(tmp_path: Path, labels: dict[str, str], expect: str) -> None:
    async with routing_mesh(tmp_path / "rules") as mesh:
        await reviews_mesh(mesh, client_labels=labels)
        mesh.write(
            "default",
            rule(
                "reviews-default",
                """
destination: {name: reviews}
route: [{labels: {version: v1}}]
""",
            ),
        )
        mesh.write(
            "from-pp-v1",
            rule(
                "reviews-from-productpage-v1",
                """
destination: {name: reviews}
precedence: 3
match:
  source: {name: productpage, labels: {version: v1}}
route: [{labels: {version: v2}}]
""",
            ),
        )
        a = await mesh.sidecar(A_IP, "productpage")
        await mesh.apply("noop", rule("noop", "destination: {name: nothing-here}"))
        async with aiohttp.ClientSession() as session:
            assert await count(session, a.outbound_url + "/", "reviews", 20) == {expect: 20}


async def test_timeout_and_retries(tmp_path: Path) -> None:
    async with routing_mesh(tmp_path / "rules") as mesh:
        await reviews_mesh(mesh)
        v1, v2 = mesh.version_backends[0], mesh.version_backends[1]
        a = await mesh.sidecar(A_IP, "productpage")
        url = a.outbound_url + "/"
        async with aiohttp.ClientSession() as session:
            await mesh.apply(
                "timeout",
                rule(
                    "reviews-timeout",
                    """
destination: {name: reviews}
route: [{labels: {version: v1}}]
httpReqTimeout: {simpleTimeout: {timeout: 0.5s}}
""",
                ),
            )
            v1.delay = 3.0
            started = time.monotonic()
            status, body, _ = await request(session, url, "reviews")
            took = time.monotonic() - started
            assert status == 504 and "timeout" in body, (status, body)
            assert 0.4 <= took < 2.0, took
            v1.delay = 0.0
            # Without a retry rule a backend's 503 reaches the client...
            await mesh.apply(
                "timeout",
                rule(
                    "reviews-v2",
                    """
destination: {name: reviews}
route: [{labels: {version: v2}}]
""",
                ),
            )
            v2.fail_first = 1
            status, body, _ = await request(session, url, "reviews")
            assert status == 503, (status, body)
            # ...with one it is retried and hidden.
            await mesh.apply(
                "timeout",
                rule(
                    "reviews-v2",
                    """
destination: {name: reviews}
route: [{labels: {version: v2}}]
httpReqRetries: {simpleRetry: {attempts: 3, perTryTimeout: 2s}}
""",
                ),
            )
            for _ in range(5):
                v2.fail_first = 2
                before = len(v2.requests)
                assert (await request(session, url, "reviews"))[:2] == (200, "v2")
                assert len(v2.requests) - before == 3  # two failures, then the answer
            # overrideHeaderName: the app picks the attempts of one request with its header.
            await mesh.apply(
                "timeout",
                rule(
                    "reviews-v2",
                    """
destination: {name: reviews}
route: [{labels: {version: v2}}]
httpReqRetries: {simpleRetry: {attempts: 3, perTryTimeout: 2s, overrideHeaderName: x-retries}}
""",
                ),
            )
            for header, status, tries in (({"x-retries": "0"}, 503, 1), ({}, 200, 3)):
                v2.fail_first = 2
                before = len(v2.requests)
                assert (await request(session, url, "reviews", header))[0] == status, header
                assert len(v2.requests) - before == tries, header
            v2.fail_first = 0


async def test_fault_abort_and_delay(tmp_path: Path) -> None:
    async with routing_mesh(tmp_path / "rules") as mesh:
        await reviews_mesh(mesh)
        a = await mesh.sidecar(A_IP, "productpage")
        url = a.outbound_url + "/"
        async with aiohttp.ClientSession() as session:
            await mesh.apply(
                "fault",
                rule(
                    "reviews-abort",
                    """
destination: {name: reviews}
route: [{labels: {version: v1}}]
httpFault: {abort: {percent: 100, httpStatus: 418}}
""",
                ),
            )
            hits = len(mesh.version_backends[0].requests)
            assert await count(session, url, "reviews", 20) == {"HTTP 418": 20}
            assert len(mesh.version_backends[0].requests) == hits  # never reached the backend
            await mesh.apply(
                "fault",
                rule(
                    "reviews-abort",
                    """
destination: {name: reviews}
route: [{labels: {version: v1}}]
httpFault: {abort: {percent: 50, httpStatus: 500}}
""",
                ),
            )
            counts = await count(session, url, "reviews", 400)
            assert 140 <= counts.get("HTTP 500", 0) <= 260, counts  # sd 10
            assert counts.get("HTTP 500", 0) + counts.get("v1", 0) == 400
            await mesh.apply(
                "fault",
                rule(
                    "reviews-delay",
                    """
destination: {name: reviews}
route: [{labels: {version: v2}}]
httpFault: {delay: {percent: 100, fixedDelay: 0.7s}}
""",
                ),
            )
            for _ in range(3):
                started = time.monotonic()
                assert (await request(session, url, "reviews"))[:2] == (200, "v2")
                assert 0.65 <= time.monotonic() - started < 2.0


async def test_rewrite_redirect_headers_and_mirror(tmp_path: Path) -> None:
    async with routing_mesh(tmp_path / "rules") as mesh:
        await reviews_mesh(mesh)
        mirror = await mesh.version_backend("mirror", MIRROR_IP)
        mesh.member.put_service(
            http_service("shadow.default.svc.cluster.local"),
            [Endpoint(MIRROR_IP, ports={"http": 9080})],
        )
        a = await mesh.sidecar(A_IP, "productpage")
        v1 = mesh.version_backends[0]
        async with aiohttp.ClientSession() as session:
            await mesh.apply(
                "rw",
                rule(
                    "reviews-rewrite",
                    """
destination: {name: reviews}
match: {request: {headers: {uri: {prefix: /old}}}}
rewrite: {uri: /new, authority: reviews.internal}
route: [{labels: {version: v1}}]
appendHeaders: {x-mesh: meshfed, x-route: rewrite}
mirror: {name: shadow}
""",
                ),
            )
            status, body, headers = await request(
                session, a.outbound_url + "/old/page?q=1", "reviews"
            )
            assert (status, body) == (200, "v1")
            seen = v1.requests[-1]
            assert seen["path"] == "/new/page?q=1" and seen["host"] == "reviews.internal"
            assert seen["headers"]["x-mesh"] == "meshfed"
            assert seen["headers"]["x-route"] == "rewrite"

            async def mirrored() -> bool:
                return any(r["path"] == "/new/page?q=1" for r in mirror.requests)

            deadline = time.monotonic() + 5
            while not await mirrored() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert await mirrored(), mirror.requests
            assert mirror.requests[-1]["host"].startswith("reviews.internal-shadow")
            # Paths not matched by the rule reach every version, unmirrored.
            before = len(mirror.requests)
            await count(session, a.outbound_url + "/other", "reviews", 6)
            await asyncio.sleep(0.3)
            assert len(mirror.requests) == before

            await mesh.apply(
                "redirect",
                rule(
                    "reviews-redirect",
                    """
destination: {name: reviews}
precedence: 9
match: {request: {headers: {uri: {exact: /moved}}}}
redirect: {uri: /here, authority: reviews.example.org}
""",
                ),
            )
            status, _, headers = await request(session, a.outbound_url + "/moved", "reviews")
            assert status == 301
            assert headers["Location"] == "http://reviews.example.org/here"


async def test_websocket_upgrade_needs_the_rule(tmp_path: Path) -> None:
    from aiohttp import web

    async def ws_echo(req: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(req)
        async for msg in ws:
            await ws.send_str("echo:" + msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", ws_echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, V1, 9080).start()
    try:
        async with routing_mesh(tmp_path / "rules") as mesh:
            mesh.member.replace([http_service(REVIEWS)], {REVIEWS: [versioned(V1, "v1")]})
            a = await mesh.sidecar(A_IP, "productpage")
            async with aiohttp.ClientSession() as session:
                url = a.outbound_url + "/ws"
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await session.ws_connect(url, headers={"Host": "reviews"}, timeout=WS_TIMEOUT)
                assert refused.value.status == 403  # upgrades are off unless a rule allows them
                await mesh.apply(
                    "ws",
                    rule(
                        "reviews-ws",
                        """
destination: {name: reviews}
match: {request: {headers: {uri: {prefix: /ws}}}}
websocketUpgrade: true
""",
                    ),
                )
                async with session.ws_connect(
                    url, headers={"Host": "reviews"}, timeout=WS_TIMEOUT
                ) as ws:
                    for text in ("one", "two"):
                        await ws.send_str(text)
                        msg = await asyncio.wait_for(ws.receive(), 5)
                        assert msg.data == "echo:" + text
    finally:
        await runner.cleanup()


async def test_cors_policy_answers_preflight_and_tags_responses(tmp_path: Path) -> None:
    async with routing_mesh(tmp_path / "rules") as mesh:
        await reviews_mesh(mesh)
        a = await mesh.sidecar(A_IP, "productpage")
        url = a.outbound_url + "/api"
        await mesh.apply(
            "cors",
            rule(
                "reviews-cors",
                """
destination: {name: reviews}
route: [{labels: {version: v1}}]
corsPolicy:
  allowOrigin: [https://app.example]
  allowMethods: [GET, PUT]
  allowHeaders: [x-custom]
  exposeHeaders: [x-backend]
  maxAge: 1m
  allowCredentials: true
""",
            ),
        )
        preflight = {
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "x-custom",
        }
        async with aiohttp.ClientSession() as session:
            hits = len(mesh.version_backends[0].requests)
            status, _, headers = await request(session, url, "reviews", preflight, method="OPTIONS")
            assert status == 200
            assert headers["access-control-allow-origin"] == "https://app.example"
            assert headers["access-control-allow-methods"] == "GET,PUT"
            assert headers["access-control-allow-headers"] == "x-custom"
            assert headers["access-control-max-age"] == "60"
            assert headers["access-control-allow-credentials"] == "true"
            assert len(mesh.version_backends[0].requests) == hits  # answered by the sidecar
            origin = {"Origin": "https://app.example"}
            status, body, headers = await request(session, url, "reviews", origin)
            assert (status, body) == (200, "v1")
            assert headers["access-control-allow-origin"] == "https://app.example"
            assert headers["access-control-expose-headers"] == "x-backend"
            status, _, headers = await request(
                session, url, "reviews", {"Origin": "https://evil.example"}
            )
            assert status == 200 and "access-control-allow-origin" not in headers
