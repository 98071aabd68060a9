"""Mixer in the data path of real Envoy: policy and telemetry through sidecars and a gateway.

A real hub (static registry, Pilot with the Mixer plugin, Mixer) and real Envoys, each with its
node-local Mixer client on a Unix socket. ``client`` (127.0.130.2) calls ``web`` and ``api``
through its sidecar; each destination's own sidecar runs Mixer's Check (ext_authz) and Report
(gRPC access log). A ``denier`` rule on ``web`` answers 403 with Mixer's message while ``api``
is served; the gateway (127.0.130.3) enforces the same; a TCP service's denied connections are
closed and allowed ones carry bytes; Report bags reach the ``prometheus`` handler on the hub's
monitoring port; a memquota of 10/s answers 429 past it; with Mixer stopped, the fail policy
decides (open: pass, closed: 503).

Hosts: 127.0.130.x.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import attrs

from integration.mixer_datapath_helpers import (
    DENY_WEB,
    MEMQUOTA_API,
    REQUEST_COUNT,
    DataPathMesh,
    call,
    cli_proxy,
    datapath_mesh,
    eventually,
    request_count,
    workload,
)
from meshfed.mixer.settings import DataPathSettings

CLIENT_IP, GW_IP = "127.0.130.2", "127.0.130.3"
WEB_IP, API_IP, DB_IP = "127.0.130.11", "127.0.130.12", "127.0.130.13"
WEB = "web.default.svc.cluster.local"
API = "api.default.svc.cluster.local"
DB = "db.default.svc.cluster.local"
CLIENT = "client.default.svc.cluster.local"
GW_PORT = 8130

SERVICES = (
    workload("client", CLIENT, CLIENT_IP, 9080)
    + workload("web", WEB, WEB_IP, 9080)
    + workload("api", API, API_IP, 9080)
    + workload("db", DB, DB_IP, 5432, "TCP")
    + """---
apiVersion: config.meshfed.io/v1alpha1
kind: Gateway
metadata: {name: front, namespace: default}
spec:
  rules:
  - host: web.example.com
    http:
      paths:
      - {path: /, backend: {serviceName: web, servicePort: 9080}}
  - host: api.example.com
    http:
      paths:
      - {path: /, backend: {serviceName: api, servicePort: 9080}}
"""
)

DENY_WEB_AND_DB = (
    DENY_WEB
    + """---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: deny-db-from-client, namespace: istio-system, labels: {istio-protocol: tcp}}
spec:
  match: >-
    destination.service == "db.default.svc.cluster.local"
    && source.service == "client.default.svc.cluster.local"
  actions:
  - handler: closed.denier
    instances: [nothing.checknothing]
"""
)

TELEMETRY = REQUEST_COUNT


async def start_web_and_api(mesh: DataPathMesh) -> None:
    await mesh.backend("web", WEB_IP, 8080)
    await mesh.backend("api", API_IP, 8080)
    await mesh.proxy(WEB_IP, "web", "9080:8080")
    await mesh.proxy(API_IP, "api", "9080:8080")
    await mesh.proxy(CLIENT_IP, "client")


async def test_denier_through_sidecar_and_gateway_and_telemetry(tmp_path: Path) -> None:
    async with datapath_mesh(tmp_path, SERVICES, DENY_WEB_AND_DB + "---\n" + TELEMETRY) as mesh:
        await start_web_and_api(mesh)
        await mesh.proxy(GW_IP, "ingress", gateway_port=GW_PORT)
        sidecar = f"http://{CLIENT_IP}:15001"

        status, body = await call(sidecar, WEB)
        assert (status, body) == (403, "closed: web is closed today") or (
            status == 403 and "web is closed today" in body
        ), (status, body)
        assert await call(sidecar, API) == (200, "api")

        gateway = f"http://{GW_IP}:{GW_PORT}"
        status, body = await call(gateway, "web.example.com")
        assert status == 403 and "web is closed today" in body, (status, body)
        assert await call(gateway, "api.example.com") == (200, "api")

        # telemetry: N requests through the client's sidecar are N in the prometheus handler
        n = 20
        for _ in range(n):
            assert (await call(sidecar, API))[0] == 200

        async def counted() -> bool:
            text = await mesh.metrics()
            return (
                request_count(text, CLIENT, API, 200) >= n + 1
                and request_count(text, "unknown", WEB, 403) >= 1
                and request_count(text, "unknown", API, 200) >= 2
            )

        await eventually(counted, 15, f"{n + 1} reported requests client -> api, and the rest")
        # api's client answered the repeated checks from its cache (the deny rule looked at
        # destination.service and the protocol, never at the per-request attributes)
        api_client = next(c for c in mesh.clients if f"mixer-{API_IP}" in str(c.socket_path))
        assert api_client.cache is not None
        assert api_client.cache.stats.hits >= n - 1, api_client.cache.stats
        text = await mesh.metrics()
        assert request_count(text, CLIENT, API, 200) == n + 1
        assert request_count(text, CLIENT, WEB, 403) == 1
        # the gateway's denied request still names web (it never reached a cluster); its
        # allowed one is reported twice, by the gateway and by api's sidecar (neither the
        # outside caller nor the gateway is a registered workload)
        assert request_count(text, "unknown", WEB, 403) == 1
        assert request_count(text, "unknown", API, 200) == 2


async def test_a_proxy_without_a_local_client_is_served_without_mixer(tmp_path: Path) -> None:
    async with datapath_mesh(tmp_path, SERVICES, DENY_WEB_AND_DB) as mesh:
        await mesh.backend("web", WEB_IP, 8080)
        web = await mesh.proxy(WEB_IP, "web", "9080:8080", mixer_client=False)
        client = await mesh.proxy(CLIENT_IP, "client")
        # web's listener is served (no filter naming a missing cluster), without policy
        assert await call(f"http://{CLIENT_IP}:15001", WEB) == (200, "web")
        assert any("no node-local Mixer client" in p for p in await mesh.problems(web))
        assert not any("Mixer client" in p for p in await mesh.problems(client))
        status, body = await web.admin("/listeners")
        assert status == 200 and f"inbound|{WEB_IP}:9080" in body


async def test_tcp_policy_closes_denied_connections(tmp_path: Path) -> None:
    async with datapath_mesh(tmp_path, SERVICES, DENY_WEB_AND_DB) as mesh:
        echoed: list[bytes] = []

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = await reader.read(100)
            echoed.append(data)
            writer.write(data.upper())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, DB_IP, 15432)
        try:
            await mesh.proxy(DB_IP, "db", "5432:15432")
            await mesh.proxy(CLIENT_IP, "client")
            await mesh.proxy(API_IP, "api")

            async def exchange(via: str) -> bytes:
                reader, writer = await asyncio.open_connection(via, 5432)
                writer.write(b"ping")
                await writer.drain()
                try:
                    return await asyncio.wait_for(reader.read(100), 5)
                finally:
                    writer.close()

            # the client's sidecar listens for db on its own IP; the caller is client: closed
            assert await exchange(CLIENT_IP) == b""
            # api's sidecar: another source, allowed
            assert await exchange(API_IP) == b"PING"
            # tcp_proxy dials the app when it accepts, before the first bytes are checked, so
            # the denied connection reaches the app too, but not one byte of it
            assert [d for d in echoed if d] == [b"ping"]
        finally:
            server.close()
            await server.wait_closed()


async def test_memquota_gives_429_past_its_limit(tmp_path: Path) -> None:
    data_path = DataPathSettings(quotas=("requestcount",))
    async with datapath_mesh(tmp_path, SERVICES, MEMQUOTA_API, data_path) as mesh:
        await start_web_and_api(mesh)
        sidecar = f"http://{CLIENT_IP}:15001"
        codes = [(await call(sidecar, API))[0] for _ in range(25)]
        assert codes.count(200) <= 10 + 1, codes  # a window tick may let one more through
        assert codes.count(200) >= 8, codes
        assert set(codes) == {200, 429}, codes
        status, body = await call(sidecar, API)
        assert status == 429 and "quota" in body.lower(), (status, body)
        assert (await call(sidecar, WEB))[0] == 200  # no quota on web


async def test_mixer_down_fail_open_then_fail_closed(tmp_path: Path) -> None:
    # No Check cache: a cached answer would (rightly) keep serving while Mixer is away.
    async with datapath_mesh(tmp_path, SERVICES, DENY_WEB_AND_DB, cache_entries=0) as mesh:
        await start_web_and_api(mesh)
        sidecar = f"http://{CLIENT_IP}:15001"
        assert (await call(sidecar, WEB))[0] == 403
        await mesh.mixer.stop()  # Mixer unreachable from every client
        assert await call(sidecar, API) == (200, "api")  # fail open (the default)
        assert (await call(sidecar, WEB))[0] == 200  # the denier cannot be asked

        mesh.plugin.set_config(attrs.evolve(mesh.plugin.config, fail_open=False))
        mesh.pilot.plugins_changed()

        async def closed() -> bool:
            return (await call(sidecar, API))[0] == 503

        await eventually(closed, 15, "fail-closed 503 once Pilot pushed the policy")
        status, body = await call(sidecar, API)
        assert status == 503 and "mixer unavailable" in body, (status, body)


async def test_reports_logged_while_mixer_is_down_arrive_after_its_restart(tmp_path: Path) -> None:
    from integration.routing_helpers import free_port

    listen = f"127.0.0.1:{free_port()}"
    async with datapath_mesh(tmp_path, SERVICES, TELEMETRY, mixer_listen=listen) as mesh:
        await start_web_and_api(mesh)
        sidecar = f"http://{CLIENT_IP}:15001"
        for _ in range(5):
            assert (await call(sidecar, API))[0] == 200

        async def counted(n: int) -> bool:
            return request_count(await mesh.metrics(), CLIENT, API, 200) == n

        await eventually(lambda: counted(5), 15, "5 requests reported before the outage")
        await mesh.mixer.stop()
        for _ in range(10):  # served (cached answers, else fail open), logged, queued
            assert (await call(sidecar, API))[0] == 200
        await asyncio.sleep(1.5)  # Envoy flushed its log; the client tried and failed
        api_client = next(c for c in mesh.clients if f"mixer-{API_IP}" in str(c.socket_path))
        assert api_client.batcher.pending == 10, api_client.batcher.stats
        await mesh.restart_mixer()
        # the restarted Mixer's prometheus handler counts from 0: exactly the queued ten
        await eventually(lambda: counted(10), 20, "the ten queued reports delivered")
        await asyncio.sleep(0.5)
        assert await counted(10)
        assert api_client.batcher.pending == 0 and api_client.batcher.stats.dropped == 0


async def test_meshfed_proxy_runs_the_client_beside_its_envoy(tmp_path: Path) -> None:
    """``meshfed proxy --mixer`` as the user runs it: its sidecar enforces Mixer's policy."""
    async with datapath_mesh(tmp_path, SERVICES, DENY_WEB_AND_DB) as mesh:
        await mesh.backend("web", WEB_IP, 8080)
        await mesh.proxy(CLIENT_IP, "client")
        async with cli_proxy(
            *("--ip", WEB_IP, "--workload", "web", "--app-ports", "9080:8080"),
            *("--pilot", f"127.0.0.1:{mesh.pilot.port}", "--hub", mesh.hub_url),
            *("--mixer", f"127.0.0.1:{mesh.mixer.port}", "--status-port", "0"),
        ) as lines:
            assert any(line.startswith("mixer client on unix:") for line in lines), lines
            status, body = await call(f"http://{CLIENT_IP}:15001", WEB)
            assert status == 403 and "web is closed today" in body, (status, body)
