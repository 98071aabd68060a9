"""A per-route opt-out of Mixer's Check, through real Envoy: with ``dataPath.disabledRoutes``
naming ``web``'s ``/public`` prefix, a ``denier`` on ``web`` refuses ``/`` (403, Mixer's
message) while ``/public/...`` is served; the unchecked requests are still reported. The same
at a real ingress gateway: its ``/public`` route to ``web`` passes the denier without a Check,
its other routes to ``web`` on the same gateway are refused.

Real hub (static registry, Pilot with the Mixer plugin, Mixer), real sidecars and an ingress
gateway with their node-local Mixer clients, a real backend. Hosts: 127.0.134.x.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from integration.mixer_datapath_helpers import DENY_WEB, call, datapath_mesh, eventually, workload
from meshfed.mixer.settings import DataPathSettings

pytestmark = pytest.mark.timeout(120)

CLIENT_IP, WEB_IP = "127.0.134.2", "127.0.134.11"
WEB = "web.default.svc.cluster.local"
SERVICES = workload("client", "client.default.svc.cluster.local", CLIENT_IP, 9080) + workload(
    "web", WEB, WEB_IP, 9080
)


async def test_a_disabled_route_passes_a_denier_and_is_still_reported(tmp_path: Path) -> None:
    data_path = DataPathSettings(disabled_routes=((WEB, "/public"),))
    async with datapath_mesh(tmp_path, SERVICES, DENY_WEB, data_path, cache_entries=0) as mesh:
        backend = await mesh.backend("web", WEB_IP, 8080)
        await mesh.proxy(WEB_IP, "web", "9080:8080")
        await mesh.proxy(CLIENT_IP, "client", mixer_client=False)
        web_client = mesh.clients[0]
        sidecar = f"http://{CLIENT_IP}:15001"
        status, body = await call(sidecar, WEB, "/")
        assert status == 403 and "web is closed today" in body, (status, body)
        checks = web_client.checks
        for path in ("/public", "/public/logo.png", "/public/a/b?x=1"):
            status, body = await call(sidecar, WEB, path)
            assert (status, body) == (200, "web"), (path, status, body)
        assert web_client.checks == checks  # no Check left the sidecar for them
        assert [r["path"] for r in backend.requests] == [
            "/public",
            "/public/logo.png",
            "/public/a/b?x=1",
        ]
        status, body = await call(sidecar, WEB, "/private")
        assert status == 403, (status, body)  # the rest of web is still checked

        async def reported() -> bool:
            await web_client.flush_reports()
            return web_client.batcher.stats.sent >= 5

        await eventually(reported, 15, "all five requests to be reported")


GW_IP, GW_PORT = "127.0.134.3", 8134
FRONT = """---
apiVersion: config.meshfed.io/v1alpha1
kind: Gateway
metadata: {name: front, namespace: default}
spec:
  rules:
  - host: web.example.com
    http:
      paths:
      - {path: /public, backend: {serviceName: web, servicePort: 9080}}
      - {path: /, backend: {serviceName: web, servicePort: 9080}}
"""


async def test_a_disabled_route_at_the_ingress_gateway_passes_a_denier_and_the_others_do_not(
    tmp_path: Path,
) -> None:
    """North-south: the gateway is the only enforcement point here (web's sidecar runs no
    Mixer client, so it has no Mixer filters), and its routes to web are checked but for the
    one ``disabledRoutes`` names, which passes without a Check and is still reported."""
    data_path = DataPathSettings(disabled_routes=((WEB, "/public"),))
    services = SERVICES + FRONT
    async with datapath_mesh(tmp_path, services, DENY_WEB, data_path, cache_entries=0) as mesh:
        backend = await mesh.backend("web", WEB_IP, 8080)
        await mesh.proxy(WEB_IP, "web", "9080:8080", mixer_client=False)
        gateway = await mesh.proxy(GW_IP, "ingress", gateway_port=GW_PORT)
        (gateway_client,) = mesh.clients
        assert await mesh.problems(gateway) == []
        front = f"http://{GW_IP}:{GW_PORT}"

        async def routed() -> bool:  # the gateway's routes are in place
            return (await call(front, "web.example.com", "/"))[0] == 403

        await eventually(routed, 20, "the gateway's route to web")
        status, body = await call(front, "web.example.com", "/shop")
        assert status == 403 and "web is closed today" in body, (status, body)
        assert backend.requests == []  # the denier held at the gateway
        checks = gateway_client.checks
        for path in ("/public", "/public/logo.png", "/public/a?x=1"):
            status, body = await call(front, "web.example.com", path)
            assert (status, body) == (200, "web"), (path, status, body)
        assert gateway_client.checks == checks  # no Check left the gateway for them
        assert [r["path"] for r in backend.requests] == [
            "/public",
            "/public/logo.png",
            "/public/a?x=1",
        ]
        status, body = await call(front, "web.example.com", "/private")
        assert status == 403 and "web is closed today" in body, (status, body)
        assert gateway_client.checks == checks + 1

        async def reported() -> bool:  # the unchecked requests are reported all the same
            await gateway_client.flush_reports()
            return gateway_client.batcher.stats.sent >= 6

        await eventually(reported, 15, "all six gateway requests to be reported")
