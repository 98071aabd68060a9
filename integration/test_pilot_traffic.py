"""Real Envoy sidecars get their config from Pilot and carry traffic between services.

Hosts: 127.<run>.81.x. A (client) has a sidecar only; B has an app behind its sidecar's inbound
listener, reached through A's outbound HTTP listener by Host header, as an HTTP proxy, and
over a per-service TCP port; both SotW and delta ADS are exercised.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from integration.pilot_helpers import addr, endpoint, get, http_service, running_mesh
from meshfed.proxy import wait_ready
from meshfed.registry.model import Endpoint, Port, Protocol, Service

B_HOST = "b.default.svc.cluster.local"
A_IP, B_IP, T_IP = addr(81, 2), addr(81, 3), addr(81, 4)


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_sidecar_a_reaches_b_through_the_mesh(delta: bool) -> None:
    async with running_mesh() as mesh:
        mesh.member.replace([http_service(B_HOST)], {B_HOST: [endpoint(B_IP, 9080)]})
        backend = await mesh.backend("b", B_IP, 8080)
        a = await mesh.sidecar(A_IP, "a", delta=delta)
        await mesh.sidecar(B_IP, "b", app_ports="9080:8080", delta=delta)
        async with aiohttp.ClientSession() as session:
            for host in (B_HOST, f"{B_HOST}:80", "b", "b.default"):
                status, body = await get(session, a.outbound_url + "/hello", host)
                assert (status, body) == (200, "b"), host
            # The sidecar as the app's HTTP proxy: absolute URL, no Host trickery.
            async with session.get(f"http://{B_HOST}/via-proxy", proxy=a.outbound_url) as response:
                assert response.status == 200 and await response.text() == "b"
            status, _ = await get(session, a.outbound_url + "/", "unknown.example.com")
            assert status == 404
        assert backend.hits == 5
        state = mesh.syncz(a.spec.node_id)
        assert state["ready"] and state["protocol"] == ("delta" if delta else "sotw")
        assert {t["status"] for t in state["types"].values()} == {"SYNCED"}


async def test_tcp_service_gets_a_local_port() -> None:
    async with running_mesh() as mesh:
        received: list[bytes] = []

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = await reader.read(100)
            received.append(data)
            writer.write(b"echo:" + data)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, T_IP, 7379)
        try:
            svc = Service("t.default.svc.cluster.local", ports=(Port(7379, "tcp", Protocol.TCP),))
            mesh.member.replace([svc], {svc.hostname: [Endpoint(T_IP, ports={"tcp": 7379})]})
            await mesh.sidecar(A_IP, "a")
            reader, writer = await asyncio.wait_for(asyncio.open_connection(A_IP, 7379), 5)
            writer.write(b"ping")
            await writer.drain()
            assert await asyncio.wait_for(reader.read(100), 5) == b"echo:ping"
            writer.close()
            assert received == [b"ping"]
        finally:
            server.close()
            await server.wait_closed()


async def test_proxy_is_not_served_before_registries_sync() -> None:
    """A sidecar started before the registries loaded must not ACK a half-empty config."""
    async with running_mesh(synced=False) as mesh:
        await mesh.backend("b", B_IP, 9080)
        a = await mesh.sidecar(A_IP, "a", ready=False)
        await asyncio.sleep(1.0)
        assert mesh.syncz(a.spec.node_id) == {}  # held until the registries sync
        assert mesh.pilot.not_ready()
        mesh.member.replace([http_service(B_HOST)], {B_HOST: [endpoint(B_IP, 9080)]})
        mesh.member.mark_synced()
        state = await wait_ready(a, mesh.hub_url, timeout=30)
        assert state["types"]["cds"]["resources"] == 1
        async with aiohttp.ClientSession() as session:
            assert await get(session, a.outbound_url + "/", B_HOST) == (200, "b")
