"""Services registered in real Consul carry traffic through a real Envoy sidecar, via Pilot.

The chain under test is the whole product path: ``consul`` CLI / py-consul registration -> Consul
(a dev agent, or a three-server cluster losing its leader) -> the Consul adapter's blocking
queries -> the aggregate (merged with the real static registry) -> Pilot's ADS -> Envoy -> the
backend that answers. Assertions are on which backends actually answer requests.

Hosts: 127.0.97.x (sidecar .2, backends .10-.19).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import consul

from integration.peers.artifacts import consul_path
from integration.peers.consul import ConsulAgent, ConsulCluster
from integration.pilot_helpers import Mesh, get, running_mesh, spread
from meshfed.adapters.consul.testing import running_adapter
from meshfed.adapters.contract import AdapterContext
from meshfed.adapters.static.registry import create as create_static

A_IP = "127.0.97.2"
WEB = "web.service.consul"
PORT = 8080
STATIC_IP = "127.0.97.19"


def ip(n: int) -> str:
    return f"127.0.97.{10 + n}"


def static_yaml() -> str:
    """The same hostname in the static registry, with one VM endpoint of its own."""
    return f"""apiVersion: networking.meshfed.io/v1alpha1
kind: ServiceEntry
metadata: {{name: web, namespace: default}}
spec:
  hosts: [{WEB}]
  resolution: STATIC
  ports:
    - {{number: {PORT}, name: http, protocol: HTTP}}
  endpoints:
    - {{address: {STATIC_IP}, ports: {{http: {PORT}}}}}
"""


def register_cli(agent: ConsulAgent, n: int) -> None:
    result = subprocess.run(
        [
            str(consul_path()),
            "services",
            "register",
            f"-http-addr=http://{agent.http_addr}",
            "-name=web",
            f"-id=web-{n}",
            f"-address={ip(n)}",
            f"-port={PORT}",
            "-tag=protocol=http",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def register_catalog(agent: ConsulAgent, n: int) -> None:
    c = consul.Consul(host=agent.host, port=agent.http_port, connections_timeout=10)
    assert c.catalog.register(
        f"vm-{n}",
        ip(n),
        service={"Service": "web", "ID": f"web-{n}", "Port": PORT, "Tags": ["protocol=http"]},
    )


@contextlib.asynccontextmanager
async def static_registry(mesh: Mesh, tmp_path: Path) -> AsyncIterator[None]:
    path = tmp_path / "web.yaml"
    path.write_text(static_yaml())
    static = create_static(AdapterContext(mesh.member, {"paths": [str(path)]}))
    task = asyncio.create_task(static.run())
    try:
        yield
    finally:
        await static.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def until_spread(
    session: aiohttp.ClientSession, url: str, expected: set[str], timeout: float = 20.0
) -> dict[str, int]:
    """Send batches until the set of answering backends is exactly ``expected``."""
    deadline = time.monotonic() + timeout
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        counts = await spread(session, url, WEB, 30)
        if set(counts) == expected:
            return counts
        await asyncio.sleep(0.1)
    raise AssertionError(f"expected answers from {sorted(expected)}, got {counts}")


async def test_traffic_reaches_exactly_live_passing_instances(
    consul_agent: ConsulAgent, tmp_path: Path
) -> None:
    c = consul.Consul(host=consul_agent.host, port=consul_agent.http_port)
    for n in (1, 2):
        c.agent.service.register(
            "web",
            service_id=f"web-{n}",
            address=ip(n),
            port=PORT,
            tags=["protocol=http"],
            check=consul.Check.ttl("300s"),
        )
        c.agent.check.ttl_pass(f"service:web-{n}")
    params = {"address": consul_agent.http_addr, "wait": "20s", "rateLimit": 50}
    async with (
        running_mesh(quiet=0.01, max_delay=0.1) as mesh,
        static_registry(mesh, tmp_path),
        running_adapter(params, aggregate=mesh.aggregate) as run,
    ):
        for n in (1, 2, 3):
            await mesh.backend(f"web-{n}", ip(n), PORT)
        await mesh.backend("static", STATIC_IP, PORT)
        await run.wait_for(lambda: len(mesh.aggregate.endpoints(WEB)) == 3, "merged endpoints")
        service = mesh.aggregate.service(WEB)
        assert service is not None and service.registries == ("test", "consul")
        assert mesh.aggregate.conflicts() == ()
        a = await mesh.sidecar(A_IP, "a")
        url = a.outbound_url + "/"
        async with aiohttp.ClientSession() as session:
            # One service, the union of both registries' endpoints.
            await until_spread(session, url, {"web-1", "web-2", "static"})
            # Scale out with the command line.
            register_cli(consul_agent, 3)
            await until_spread(session, url, {"web-1", "web-2", "web-3", "static"})
            # A failing check takes web-2 out of rotation (its server keeps running).
            c.agent.check.ttl_fail("service:web-2", "unhealthy")
            await until_spread(session, url, {"web-1", "web-3", "static"})
            c.agent.check.ttl_pass("service:web-2")
            await until_spread(session, url, {"web-1", "web-2", "web-3", "static"})
            # Maintenance mode, then deregistration.
            c.agent.service.maintenance("web-1", True, "deploy")
            await until_spread(session, url, {"web-2", "web-3", "static"})
            c.agent.service.deregister("web-3")
            c.agent.service.maintenance("web-1", False)
            await until_spread(session, url, {"web-1", "web-2", "static"})
            counts = await spread(session, url, WEB, 60)
            assert set(counts) == {"web-1", "web-2", "static"}, counts


async def test_traffic_keeps_flowing_while_the_leader_is_lost(
    consul_cluster: ConsulCluster,
) -> None:
    leader = await asyncio.to_thread(consul_cluster.leader)
    followers = [a for a in consul_cluster.agents if a is not leader]
    for n in (1, 2, 3):
        register_catalog(followers[0], n)
    params = {
        "addresses": [leader.http_addr, *(f.http_addr for f in followers)],
        "wait": "20s",
        "rateLimit": 50,
    }
    async with (
        running_mesh(quiet=0.01, max_delay=0.1) as mesh,
        running_adapter(params, aggregate=mesh.aggregate) as run,
    ):
        for n in (1, 2, 3, 4):
            await mesh.backend(f"web-{n}", ip(n), PORT)
        await run.wait_for(lambda: len(mesh.aggregate.endpoints(WEB)) == 3, "three instances")
        a = await mesh.sidecar(A_IP, "a")
        url = a.outbound_url + "/"
        statuses: dict[int, int] = {}
        answered: dict[str, int] = {}
        stop = asyncio.Event()

        async def traffic(session: aiohttp.ClientSession) -> None:
            while not stop.is_set():
                try:
                    status, body = await get(session, url, WEB)
                except (TimeoutError, aiohttp.ClientError) as exc:
                    status, body = 0, type(exc).__name__
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    answered[body] = answered.get(body, 0) + 1

        async with aiohttp.ClientSession() as session:
            await until_spread(session, url, {"web-1", "web-2", "web-3"})
            workers = [asyncio.create_task(traffic(session)) for _ in range(4)]
            try:
                await asyncio.sleep(0.5)
                pushes = mesh.pilot.pushes
                started = time.monotonic()
                await asyncio.to_thread(consul_cluster.stop_member, leader, hard=True)
                new_leader = await asyncio.to_thread(consul_cluster.leader, 30.0, leader)
                elected = time.monotonic() - started
                await asyncio.sleep(1.0)
                assert mesh.pilot.pushes == pushes, "leader loss caused a push"
                # A change made after the election reaches Envoy and carries traffic.
                register_catalog(new_leader, 4)
                deadline = time.monotonic() + 20
                while "web-4" not in answered and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.5)
            finally:
                stop.set()
                await asyncio.gather(*workers, return_exceptions=True)
        total = sum(statuses.values())
        print(
            f"leader lost, new one after {elected:.2f}s; {total} requests, statuses {statuses}, "
            f"answered {answered}"
        )
        assert total > 200, statuses
        assert set(statuses) == {200}, f"failed requests during leader loss: {statuses}"
        assert set(answered) == {"web-1", "web-2", "web-3", "web-4"}, answered


async def test_istio_0_2_node_meta_protocol_gives_http_routing_by_host(
    consul_agent: ConsulAgent,
) -> None:
    # Istio 0.2's Consul platform read the protocol from the node's meta; a catalog registered
    # that way (no protocol tag or service meta) must route by Host as HTTP. A node without it
    # stays TCP: by Host through the HTTP listener it is unknown (404).
    legacy, plain = "legacy.service.consul", "plain.service.consul"
    # py-consul's catalog.register sends node_meta as query parameters, which Consul ignores on
    # register; the API's own body field is NodeMeta.
    for node, n, name, meta in (
        ("istio-vm", 5, "legacy", {"protocol": "http"}),
        ("vm", 6, "plain", {}),
    ):
        body = {
            "Node": node,
            "Address": ip(n),
            "NodeMeta": meta,
            "Service": {"Service": name, "ID": f"{name}-1", "Port": PORT},
        }
        request = urllib.request.Request(
            f"http://{consul_agent.http_addr}/v1/catalog/register",
            data=json.dumps(body).encode(),
            method="PUT",
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
    params = {"address": consul_agent.http_addr, "wait": "20s", "rateLimit": 50}
    async with (
        running_mesh(quiet=0.01, max_delay=0.1) as mesh,
        running_adapter(params, aggregate=mesh.aggregate) as run,
    ):
        await mesh.backend("legacy-1", ip(5), PORT)
        await mesh.backend("plain-1", ip(6), PORT)
        await run.wait_for(
            lambda: (
                bool(mesh.aggregate.endpoints(legacy)) and bool(mesh.aggregate.endpoints(plain))
            ),
            "both services",
        )
        service = mesh.aggregate.service(legacy)
        assert service is not None and [p.protocol.value for p in service.ports] == ["HTTP"]
        a = await mesh.sidecar(A_IP, "a")
        url = a.outbound_url + "/"
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 20
            counts: dict[str, int] = {}
            while time.monotonic() < deadline:
                counts = await spread(session, url, legacy, 10)
                if counts == {"legacy-1": 10}:
                    break
                await asyncio.sleep(0.1)
            assert counts == {"legacy-1": 10}, counts
            assert await spread(session, url, plain, 3) == {"HTTP 404": 3}
