"""Locality-aware failover on real Envoy: a sidecar sends a service's traffic to the endpoints
closest to it (its region/zone), spills to the next closest when those go unhealthy, and comes
back when they recover; a sidecar that names no locality takes the one the registry gives its
own IP (a VM registered in its datacenter).

Hosts: 127.0.112.x. Backends answer with their name.
"""

from __future__ import annotations

import aiohttp

from integration.routing_helpers import count, http_service, routing_mesh
from meshfed.registry.model import Endpoint, Locality

HOST = "api.default.svc.cluster.local"
EAST_A, EAST_B, WEST = "127.0.112.11", "127.0.112.12", "127.0.112.13"
CLIENT_EAST, CLIENT_WEST = "127.0.112.2", "127.0.112.3"
PLACES = {
    EAST_A: Locality("us-east", "a"),
    EAST_B: Locality("us-east", "b"),
    WEST: Locality("us-west", "a"),
}


def endpoints(unhealthy: frozenset[str] = frozenset()) -> list[Endpoint]:
    return [
        Endpoint(ip, {"http": 9080}, locality=place, healthy=ip not in unhealthy)
        for ip, place in PLACES.items()
    ]


async def test_traffic_stays_local_and_fails_over_by_closeness(tmp_path) -> None:
    async with routing_mesh(tmp_path / "rules") as mesh:
        names = {EAST_A: "east-a", EAST_B: "east-b", WEST: "west"}
        for ip, name in names.items():
            await mesh.version_backend(name, ip, 9080)
        service = http_service(HOST)
        # CLIENT_WEST is itself an endpoint in us-west (of another service): its locality.
        other = http_service("worker.default.svc.cluster.local")
        worker = [Endpoint(CLIENT_WEST, {"http": 9080}, locality=Locality("us-west", "b"))]
        mesh.member.replace([service, other], {HOST: endpoints(), other.hostname: worker})
        east = await mesh.sidecar(CLIENT_EAST, "client", locality="us-east/a")
        west = await mesh.sidecar(CLIENT_WEST, "worker")
        async with aiohttp.ClientSession() as session:
            assert await count(session, east.outbound_url + "/", HOST, 30) == {"east-a": 30}
            assert await count(session, west.outbound_url + "/", HOST, 30) == {"west": 30}
            # The closest endpoint goes: the same region's other zone takes over, not us-west.
            mesh.member.replace(
                [service, other], {HOST: endpoints(frozenset({EAST_A})), other.hostname: worker}
            )
            await mesh.converged()
            assert await count(session, east.outbound_url + "/", HOST, 30) == {"east-b": 30}
            # The whole region goes: the other region serves.
            mesh.member.replace(
                [service, other],
                {HOST: endpoints(frozenset({EAST_A, EAST_B})), other.hostname: worker},
            )
            await mesh.converged()
            assert await count(session, east.outbound_url + "/", HOST, 30) == {"west": 30}
            # Recovery brings the traffic home.
            mesh.member.replace([service, other], {HOST: endpoints(), other.hostname: worker})
            await mesh.converged()
            assert await count(session, east.outbound_url + "/", HOST, 30) == {"east-a": 30}
