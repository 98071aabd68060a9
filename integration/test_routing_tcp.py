"""Route rules for a TCP service on real Envoy: weighted subsets per connection, and a source
subnet match that sends one client address's connections to v2.

Hosts: 127.0.106.x. The service's endpoints are TCP echo servers that prefix their version.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from integration.routing_helpers import routing_mesh
from registry.model import Endpoint, Port, Protocol, Service

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
