"""A listener plugin through real Envoy: it reaches sidecars and gateways, and changing only its
config pushes only the listeners it touches.

The plugin adds a response header (Envoy's ``header_mutation`` HTTP filter) on every inbound
HTTP chain and every gateway chain, with a value that names the chain's direction. Traffic:
a client sidecar calls ``web`` through web's own sidecar (inbound), and a gateway routes to the
same ``web``; both answers carry the header. Then the plugin's value changes: Pilot pushes new
listeners to web's sidecar (delta, so only the changed listener travels) and to the gateway,
nothing to the client sidecar, and no clusters, endpoints or routes to anyone.

Hosts: 127.0.121.x.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import aiohttp
from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from prometheus_client import REGISTRY

from integration.routing_helpers import RoutingMesh
from meshfed.pilot import xds_types as T
from meshfed.pilot.mtls_plugin import MtlsPlugin
from meshfed.pilot.plugins import ChainContext, HttpChain, PluginBase
from meshfed.pilot.translate.protos import pack
from meshfed.pilot.watch import Status
from meshfed.proxy import EnvoyProcess, ProxySpec, wait_ready
from meshfed.registry.model import Endpoint, Port, Protocol, Service

CLIENT_IP, WEB_IP, GW_IP = "127.0.121.2", "127.0.121.11", "127.0.121.3"
GW_PORT = 8080
WEB = "web.default.svc.cluster.local"
HEADER = "x-mesh-plugin"

GATEWAY = """apiVersion: config.meshfed.io/v1alpha1
kind: Gateway
metadata: {name: front, namespace: default}
spec:
  rules:
  - host: web.example.com
    http:
      paths:
      - {path: /, backend: {serviceName: web, servicePort: 80}}
"""


class StampResponses(PluginBase):
    """``x-mesh-plugin: <value>-<direction>`` on every inbound and gateway response."""

    name = "stamp"

    def __init__(self, value: str) -> None:
        self.value = value

    def version(self) -> str:
        return self.value

    def _stamp(self, ctx: ChainContext, chain: HttpChain) -> None:
        add = mutation_rules_pb2.HeaderMutation(
            append=base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=HEADER, value=f"{self.value}-{ctx.direction.value}")
            )
        )
        config = header_mutation_pb2.HeaderMutation(
            mutations=header_mutation_pb2.Mutations(response_mutations=[add])
        )
        chain.add_filter(
            hcm.HttpFilter(name="envoy.filters.http.header_mutation", typed_config=pack(config))
        )

    def on_inbound_http(self, ctx: ChainContext, chain: HttpChain) -> None:
        self._stamp(ctx, chain)

    def on_gateway_http(self, ctx: ChainContext, chain: HttpChain) -> None:
        self._stamp(ctx, chain)


def pushed(type_short: str) -> float:
    labels = {"type": type_short}
    return REGISTRY.get_sample_value("meshfed_pilot_xds_pushes_total", labels) or 0.0


def pushed_resources(type_short: str) -> float:
    labels = {"type": type_short}
    return REGISTRY.get_sample_value("meshfed_pilot_xds_pushed_resources_total", labels) or 0.0


async def gateway(mesh: RoutingMesh) -> EnvoyProcess:
    spec = ProxySpec(
        ip=GW_IP,
        workload="ingress",
        pilot=f"127.0.0.1:{mesh.pilot.port}",
        outbound_http_port=GW_PORT,
        role="router",
    )
    envoy = EnvoyProcess(spec)
    mesh.envoys.append(envoy)
    await envoy.start()
    await wait_ready(envoy, mesh.hub_url, timeout=30)
    return envoy


async def stamps() -> tuple[list[str], list[str]]:
    """The header values seen through the client sidecar and through the gateway (each on a
    new connection: a listener update drains the old ones)."""
    out = []
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        for url, host in (
            (f"http://{CLIENT_IP}:15001/", WEB),
            (f"http://{GW_IP}:{GW_PORT}/", "web.example.com"),
        ):
            async with session.get(
                url, headers={"Host": host}, timeout=aiohttp.ClientTimeout(total=10)
            ) as response:
                assert response.status == 200, (url, response.status, await response.text())
                assert await response.text() == "web"
                out.append(sorted(response.headers.getall(HEADER, [])))
    return out[0], out[1]


async def eventually_stamped(value: str, timeout: float = 10.0) -> None:
    """Until both paths answer with ``value`` (Envoy drains replaced listeners for 1 s, and
    the client sidecar's pooled upstream connections with them)."""
    want = ([f"{value}-inbound"], [f"{value}-gateway", f"{value}-inbound"])
    deadline = time.monotonic() + timeout
    seen = await stamps()
    while seen != want and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        seen = await stamps()
    assert seen == want  # the gateway's stamp, then web's sidecar's


def snapshot(mesh: RoutingMesh) -> dict[str, dict]:
    """Per proxy: each type's nonce and each listener's version, as Pilot last sent them."""
    assert mesh.pilot.discovery is not None
    out = {}
    for conn in mesh.pilot.discovery.connections.values():
        out[conn.node.id] = {
            "nonces": {t: w.sent_nonce for t, w in conn.watches.items()},
            "listeners": {n: r.version for n, r in conn.sent.get(T.LISTENER, {}).items()},
        }
    return out


async def synced(mesh: RoutingMesh, timeout: float = 10.0) -> None:
    assert mesh.pilot.discovery is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(
            w.status in (Status.SYNCED, Status.NOT_SENT)
            for conn in mesh.pilot.discovery.connections.values()
            for w in conn.watches.values()
        ):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"proxies did not ACK within {timeout}s")


async def test_plugin_reaches_sidecars_and_gateways_and_its_change_pushes_only_listeners(
    tmp_path: Path,
) -> None:
    plugin = StampResponses("v1")
    mesh = RoutingMesh(tmp_path / "rules")
    mesh.pilot.plugins = [MtlsPlugin(), plugin]  # as the hub assembles Pilot, plus ours
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(mesh.stop)  # also after a start that failed half way
        await mesh.start()
        await mesh.version_backend("web", WEB_IP, 19080)
        mesh.member.replace(
            [Service(WEB, ports=(Port(80, "http", Protocol.HTTP),))],
            {WEB: [Endpoint(WEB_IP, ports={"http": 9080})]},
        )
        await mesh.apply("front", GATEWAY)
        await mesh.sidecar(CLIENT_IP, "client")
        await mesh.sidecar(WEB_IP, "web", app_ports="9080:19080", delta=True)
        await gateway(mesh)
        await mesh.converged()
        assert await stamps() == (["v1-inbound"], ["v1-gateway", "v1-inbound"])

        before = snapshot(mesh)
        counts = {t: pushed(t) for t in ("cds", "eds", "lds", "rds")}
        lds_resources = pushed_resources("lds")

        # A version that did not move: nothing at all is pushed.
        mesh.pilot.plugins_changed()
        await asyncio.sleep(0.5)
        assert snapshot(mesh) == before
        assert {t: pushed(t) for t in counts} == counts

        plugin.value = "v2"
        mesh.pilot.plugins_changed()
        deadline = time.monotonic() + 10
        while pushed("lds") < counts["lds"] + 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await synced(mesh)
        await asyncio.sleep(0.5)  # anything else that would be pushed has been by now
        after = snapshot(mesh)

        # Only listeners, only to the proxies whose listeners changed, only those listeners.
        assert {t: pushed(t) - counts[t] for t in counts} == {
            "cds": 0,
            "eds": 0,
            "lds": 2,
            "rds": 0,
        }
        assert pushed_resources("lds") - lds_resources == 2  # web (delta: 1 of 2), gateway
        changed = {
            (proxy, name)
            for proxy, state in after.items()
            for name, version in state["listeners"].items()
            if before[proxy]["listeners"].get(name) != version
        }
        web_id = next(p for p in after if p.startswith(f"sidecar~{WEB_IP}~"))
        gw_id = next(p for p in after if p.startswith(f"router~{GW_IP}~"))
        assert changed == {
            (web_id, f"inbound|{WEB_IP}:9080"),
            (gw_id, f"gateway|{GW_IP}:{GW_PORT}"),
        }
        for proxy, state in after.items():
            for type_url, nonce in state["nonces"].items():
                if type_url != T.LISTENER or proxy not in (web_id, gw_id):
                    assert nonce == before[proxy]["nonces"][type_url], (proxy, type_url)

        await eventually_stamped("v2")
