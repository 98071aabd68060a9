"""Instances registered in a real Eureka server take real traffic through a real Envoy sidecar.

The chain under test: application registers in Eureka -> Eureka adapter -> aggregate -> Pilot
(ADS) -> Envoy -> the instance. Each instance is a tiny HTTP server answering with its name, so
the set of names seen in the answers is the set of instances in rotation; it must be exactly the
instances that are UP, through registration, STARTING -> UP, an OUT_OF_SERVICE override and its
removal, and cancellation. A second test merges one logical service from Eureka and from the
static registry (a ServiceEntry file) and shows traffic reaching both.

Hosts: 127.0.93.x. Envoy's panic threshold (it balances over every host when fewer than ~36 %
are healthy) is kept out of play: every step leaves at least half the endpoints healthy.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import aiohttp
import grpc

from integration.peers.eureka import EurekaServer
from integration.pilot_helpers import eventually, running_mesh, spread
from integration.routing_helpers import Greeter, say
from meshfed.adapters.contract import AdapterContext
from meshfed.adapters.eureka.testing import EurekaRest, instance_doc, running_adapter
from meshfed.adapters.static.registry import create as create_static
from meshfed.registry.model import Protocol

CLIENT_IP = "127.0.93.2"
INSTANCES = {"e1": "127.0.93.3", "e2": "127.0.93.4", "e3": "127.0.93.5"}
STATIC_IP = "127.0.93.6"
APP_PORT = 9080
SAMPLES = 24


def eureka_params(server: EurekaServer) -> dict[str, object]:
    return {
        "servers": [server.eureka_url],
        "fetchInterval": "200ms",
        "fullFetchInterval": "2s",
        "hostnameTemplate": "{vip}.eureka",
    }


async def until_exactly(
    session: aiohttp.ClientSession, url: str, host: str, names: set[str]
) -> dict[str, int]:
    """Wait until answers come from exactly ``names``, then check it holds over many requests."""

    async def settled() -> bool:
        return set(await spread(session, url, host, 8)) == names

    await eventually(settled, 30, f"traffic to reach exactly {sorted(names)}")
    counts = await spread(session, url, host, SAMPLES)
    assert set(counts) == names, counts
    return counts


async def test_traffic_reaches_exactly_the_up_instances(eureka_server: EurekaServer) -> None:
    app = f"shop-{uuid.uuid4().hex[:8]}"
    host = f"{app}.eureka"
    async with (
        running_mesh() as mesh,
        EurekaRest(eureka_server.eureka_url) as rest,
        running_adapter(eureka_params(eureka_server), mesh.aggregate) as (_, adapter),
    ):
        for name, ip in INSTANCES.items():
            await mesh.backend(name, ip, APP_PORT)

        def doc(name: str, status: str = "UP") -> dict[str, object]:
            return instance_doc(app, name, INSTANCES[name], APP_PORT, status=status)

        try:
            assert await rest.register(doc("e1")) == 204
            assert await rest.register(doc("e2")) == 204
            assert await rest.register(doc("e3", "STARTING")) == 204
            client = await mesh.sidecar(CLIENT_IP, "client")
            url = client.outbound_url + "/"
            async with aiohttp.ClientSession() as session:
                # STARTING is not in rotation.
                await until_exactly(session, url, host, {"e1", "e2"})
                # The application finishes starting and registers itself UP.
                assert await rest.register(doc("e3")) == 204
                await until_exactly(session, url, host, {"e1", "e2", "e3"})
                # An operator takes e2 out of service through Eureka's REST API.
                assert await rest.set_status(app, "e2", "OUT_OF_SERVICE") == 200
                await until_exactly(session, url, host, {"e1", "e3"})
                # e1 deregisters.
                assert await rest.cancel(app, "e1") == 200
                await until_exactly(session, url, host, {"e3"})
                # The override is lifted: e2 takes traffic again.
                assert await rest.delete_override(app, "e2") == 200
                counts = await until_exactly(session, url, host, {"e2", "e3"})
                assert sum(counts.values()) == SAMPLES  # every request answered, none failed
            # Envoy was configured, never restarted, and the proxy is in sync.
            state = mesh.syncz(client.spec.node_id)
            assert state["ready"]
            assert adapter.member.degraded is None
        finally:
            for name in INSTANCES:
                await rest.cancel(app, name)


def service_entry(host: str) -> str:
    return f"""apiVersion: networking.meshfed.io/v1alpha1
kind: ServiceEntry
metadata: {{name: shop-vm, namespace: default}}
spec:
  hosts: [{host}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
    - {{number: 80, name: http, protocol: HTTP}}
  endpoints:
    - {{address: {STATIC_IP}, ports: {{http: {APP_PORT}}}}}
"""


async def test_one_service_from_eureka_and_static_gets_traffic_on_both(
    tmp_path: Path, eureka_server: EurekaServer
) -> None:
    app = f"cart-{uuid.uuid4().hex[:8]}"
    host = f"{app}.eureka"
    path = tmp_path / "services.yaml"
    path.write_text(service_entry(host))
    async with (
        running_mesh() as mesh,
        EurekaRest(eureka_server.eureka_url) as rest,
    ):
        # The static registry is the mesh's first member (highest precedence), Eureka second.
        static = create_static(AdapterContext(mesh.member, {"paths": [str(path)]}))
        static_task = asyncio.create_task(static.run())
        try:
            async with running_adapter(eureka_params(eureka_server), mesh.aggregate) as (
                aggregate,
                _,
            ):
                await mesh.backend("vm", STATIC_IP, APP_PORT)
                await mesh.backend("eureka", INSTANCES["e1"], APP_PORT)
                doc = instance_doc(app, "c1", INSTANCES["e1"], APP_PORT)
                assert await rest.register(doc) == 204
                try:
                    client = await mesh.sidecar(CLIENT_IP, "client")
                    url = client.outbound_url + "/"
                    async with aiohttp.ClientSession() as session:
                        await until_exactly(session, url, host, {"vm", "eureka"})
                    service = aggregate.service(host)
                    assert service is not None
                    assert service.registries == ("test", "eureka")
                    # Same port name, number and protocol on both sides: merged, no conflict.
                    assert aggregate.conflicts() == ()
                finally:
                    await rest.cancel(app, "c1")
        finally:
            await static.stop()
            await asyncio.wait_for(static_task, 10)


async def test_istio_0_2_protocol_metadata_makes_a_grpc_service(
    eureka_server: EurekaServer,
) -> None:
    # An instance registered for Istio 0.2 says `istio.protocol: grpc`. Its server speaks only
    # HTTP/2, so a call through the sidecar succeeds only if the service is GRPC (HTTP/2
    # upstream); read as the default HTTP, Envoy would speak HTTP/1.1 to it and the call fail.
    app = f"greet-{uuid.uuid4().hex[:8]}"
    host = f"{app}.eureka"
    greeter = Greeter(f"{INSTANCES['e2']}:{APP_PORT}")
    await greeter.start()
    async with (
        running_mesh() as mesh,
        EurekaRest(eureka_server.eureka_url) as rest,
        running_adapter(eureka_params(eureka_server), mesh.aggregate) as (aggregate, _),
    ):
        doc = instance_doc(
            app, "g1", INSTANCES["e2"], APP_PORT, metadata={"istio.protocol": "grpc"}
        )
        assert await rest.register(doc) == 204
        try:

            async def known() -> bool:
                return aggregate.service(host) is not None and bool(aggregate.endpoints(host))

            await eventually(known, 30, "the Eureka instance in the mesh")
            service = aggregate.service(host)
            assert service is not None
            assert [p.protocol for p in service.ports] == [Protocol.GRPC]
            client = await mesh.sidecar(CLIENT_IP, "client")
            target = client.outbound_url.removeprefix("http://").rstrip("/")
            answer = b""
            for _ in range(50):
                try:
                    answer = await say(target, host, None)
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.2)
            assert answer == b"hello mesh"
            assert greeter.calls and set(greeter.calls) == {b"mesh"}
        finally:
            await rest.cancel(app, "g1")
            await greeter.stop()
