"""Mixer's Check on an Istio ``Gateway``'s HTTP server, through a real gateway Envoy: with a
``denier`` on ``web``, a request for ``web.example.com`` is refused at the gateway (403,
Mixer's message) and never reaches web, while ``api.example.com`` on the same server answers.

Real hub (static registry, Pilot with the Mixer plugin, Mixer), a real gateway Envoy with its
node-local Mixer client, real backends at the services' endpoint addresses. Hosts: 127.0.193.x.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from integration.mixer_datapath_helpers import DENY_WEB, call, datapath_mesh, eventually, workload

pytestmark = pytest.mark.timeout(90)

GW_IP, WEB_IP, API_IP = "127.0.193.2", "127.0.193.11", "127.0.193.12"
GW_PORT, SERVER_PORT, APP_PORT = 8193, 8194, 9080
WEB = "web.default.svc.cluster.local"
API = "api.default.svc.cluster.local"
CONFIG = (
    workload("web", WEB, WEB_IP, APP_PORT)
    + workload("api", API, API_IP, APP_PORT)
    + f"""---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: front, namespace: default}}
spec:
  servers:
  - port: {{number: {SERVER_PORT}, name: http, protocol: HTTP}}
    hosts: [web.example.com, api.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: web-edge, namespace: default}}
spec:
  hosts: [web.example.com]
  gateways: [front]
  http: [{{route: [{{destination: {{host: web}}}}]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api-edge, namespace: default}}
spec:
  hosts: [api.example.com]
  gateways: [front]
  http: [{{route: [{{destination: {{host: api}}}}]}}]
"""
)


async def test_a_denier_holds_one_host_of_an_istio_gateway_server_and_not_the_other(
    tmp_path: Path,
) -> None:
    async with datapath_mesh(tmp_path, CONFIG, DENY_WEB, cache_entries=0) as mesh:
        web = await mesh.backend("web", WEB_IP, APP_PORT)
        api = await mesh.backend("api", API_IP, APP_PORT)
        gateway = await mesh.proxy(GW_IP, "ingress", gateway_port=GW_PORT)
        (gateway_client,) = mesh.clients
        assert await mesh.problems(gateway) == []
        front = f"http://{GW_IP}:{SERVER_PORT}"

        async def routed() -> bool:
            return (await call(front, "api.example.com", "/"))[0] == 200

        await eventually(routed, 20, "the Gateway server's route to api")
        checks = gateway_client.checks
        status, body = await call(front, "web.example.com", "/shop")
        assert status == 403 and "web is closed today" in body, (status, body)
        assert web.requests == []  # held at the gateway
        assert gateway_client.checks > checks  # by a Check from the gateway's Mixer filter
        status, body = await call(front, "api.example.com", "/items")
        assert (status, body) == (200, "api"), (status, body)
        assert [r["path"] for r in api.requests][-1] == "/items"
