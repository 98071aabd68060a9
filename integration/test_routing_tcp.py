"""Route rules for a TCP service on real Envoy: weighted subsets per connection, a source
subnet match that sends one client address's connections to v2, and Istio 0.2's ``l4Fault``
(a throttled echo takes seconds instead of milliseconds; a terminating rule closes a live
connection after its period and Envoy counts it).

Hosts: 127.0.106.x. The service's endpoints are TCP echo servers that prefix their version.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from integration.routing_helpers import routing_mesh
from meshfed.registry.model import Endpoint, Port, Protocol, Service

ECHO = "echo.default.svc.cluster.local"
PORT = 7400
A_IP = "127.0.106.2"
IPS = {"v1": "127.0.106.11", "v2": "127.0.106.12"}
CLIENT_SPECIAL, CLIENT_OTHER = "127.0.106.50", "127.0.106.51"


def rule(name: str, spec: str) -> str:
    body = "\n".join("  " + line for line in spec.strip().splitlines())
    return (
        "apiVersion: config.istio.io/v1alpha2\nkind: RouteRule\n"
        f"metadata: {{name: {name}}}\nspec:\n{body}\n"
    )


async def echo_server(version: str, address: str) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(100)
        writer.write(f"{version}:".encode() + data)
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, address, PORT)


async def ask(source: str = "127.0.106.60") -> str:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(A_IP, PORT, local_addr=(source, 0)), 5
    )
    writer.write(b"ping")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(100), 5)
    writer.close()
    return answer.decode().partition(":")[0]


async def tally(n: int, source: str = "127.0.106.60") -> dict[str, int]:
    out: dict[str, int] = {}
    for _ in range(n):
        version = await ask(source)
        out[version] = out.get(version, 0) + 1
    return out


async def test_tcp_weighted_subsets_and_source_subnet(tmp_path: Path) -> None:
    servers = [await echo_server(v, ip) for v, ip in IPS.items()]
    try:
        async with routing_mesh(tmp_path / "rules") as mesh:
            service = Service(ECHO, ports=(Port(PORT, "tcp", Protocol.TCP),))
            mesh.member.replace(
                [service],
                {
                    ECHO: [
                        Endpoint(ip, ports={"tcp": PORT}, labels={"version": v})
                        for v, ip in IPS.items()
                    ]
                },
            )
            await mesh.sidecar(A_IP, "client")
            assert set(await tally(20)) == {"v1", "v2"}  # no rule: both
            await mesh.apply(
                "v1", rule("echo-v1", "destination: {name: echo}\nroute: [{labels: {version: v1}}]")
            )
            assert await tally(10) == {"v1": 10}
            await mesh.apply(
                "special",
                rule(
                    "echo-special",
                    f"""
destination: {{name: echo}}
precedence: 2
match: {{tcp: {{sourceSubnet: ["{CLIENT_SPECIAL}/32"]}}}}
route: [{{labels: {{version: v2}}}}]
""",
                ),
            )
            assert await tally(10, CLIENT_SPECIAL) == {"v2": 10}
            assert await tally(10, CLIENT_OTHER) == {"v1": 10}
            await mesh.apply(
                "v1",
                rule(
                    "echo-v1",
                    """
destination: {name: echo}
route:
- {labels: {version: v1}, weight: 50}
- {labels: {version: v2}, weight: 50}
""",
                ),
            )
            counts = await tally(200, CLIENT_OTHER)
            assert 60 <= counts.get("v2", 0) <= 140, counts  # sd ~7
            assert await tally(5, CLIENT_SPECIAL) == {"v2": 5}
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()


STREAM = "stream.default.svc.cluster.local"
STREAM_PORT, STREAM_IP = 7401, "127.0.106.13"


async def stream_echo() -> asyncio.Server:
    """Echoes every byte back until the client closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, STREAM_IP, STREAM_PORT)


async def echo_seconds(size: int) -> float:
    """Send ``size`` random bytes through the sidecar and time the complete, unchanged echo."""
    payload = os.urandom(size)
    start = time.monotonic()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(A_IP, STREAM_PORT), 5)
    try:
        writer.write(payload)
        await writer.drain()
        echoed = await asyncio.wait_for(reader.readexactly(size), 30)
    finally:
        writer.close()
    assert echoed == payload
    return time.monotonic() - start


async def seconds_until_closed(limit: float) -> float | None:
    """Open a connection, prove it works, then wait up to ``limit`` s for the proxy to end it."""
    start = time.monotonic()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(A_IP, STREAM_PORT), 5)
    try:
        writer.write(b"hello")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
        try:
            data = await asyncio.wait_for(reader.read(1), limit)
        except TimeoutError:
            return None  # still open
        assert data == b""
        return time.monotonic() - start
    finally:
        writer.close()


async def test_l4_fault_throttles_and_terminates_connections(tmp_path: Path) -> None:
    server = await stream_echo()
    try:
        async with routing_mesh(tmp_path / "rules") as mesh:
            service = Service(STREAM, ports=(Port(STREAM_PORT, "tcp", Protocol.TCP),))
            mesh.member.replace(
                [service], {STREAM: [Endpoint(STREAM_IP, ports={"tcp": STREAM_PORT})]}
            )
            a = await mesh.sidecar(A_IP, "client")
            size = 96 * 1024
            unthrottled = await echo_seconds(size)
            assert unthrottled < 1.0, unthrottled
            assert await seconds_until_closed(2.5) is None
            # 32 KiB/s back to the app: 96 KiB take about 1.8 s here (3 s of rate, less what
            # the full bucket lets through at once); unthrottled they take about 1 ms.
            await mesh.apply(
                "slow",
                rule(
                    "stream-slow",
                    f"""
destination: {{name: stream}}
l4Fault: {{throttle: {{percent: 100, downstreamLimitBps: {8 * 32 * 1024}}}}}
""",
                ),
            )
            throttled = await echo_seconds(size)
            assert throttled >= 1.2, (unthrottled, throttled)
            await mesh.apply(
                "slow",
                rule(
                    "stream-slow",
                    "destination: {name: stream}\nl4Fault: {terminate: {terminateAfterPeriod: 1s}}",
                ),
            )
            assert await echo_seconds(1024) < 1.0  # the throttle is gone with the old rule
            closed_after = await seconds_until_closed(5.0)
            assert closed_after is not None and 0.8 <= closed_after <= 3.0, closed_after
            status, body = await a.admin("/stats?filter=max_downstream_connection_duration")
            assert status == 200
            reached = [
                int(v) for k, _, v in (line.partition(": ") for line in body.splitlines()) if v
            ]
            assert sum(reached) >= 1, body
    finally:
        server.close()
        await server.wait_closed()
