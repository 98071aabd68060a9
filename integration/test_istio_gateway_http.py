"""An Istio ``Gateway``'s HTTP server through a real gateway Envoy. Mixer's Check applies on
it: with a ``denier`` on ``web``, a request for ``web.example.com`` is refused at the gateway
(403, Mixer's message) and never reaches web, while ``api.example.com`` on the same server
answers. A destination port the service lacks takes no traffic: alone it answers 503, in a
split its share goes to the other destination, and the gateway's problems name it.

Real hub (static registry, Pilot with the Mixer plugin, Mixer), a real gateway Envoy with its
node-local Mixer client, real backends at the services' endpoint addresses. Hosts: 127.0.193.x.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from integration.mixer_datapath_helpers import DENY_WEB, call, datapath_mesh, eventually, workload

pytestmark = pytest.mark.timeout(90)

GW_IP, WEB_IP, API_IP = "127.0.193.2", "127.0.193.11", "127.0.193.12"
GW_PORT, SERVER_PORT, APP_PORT, OTHER_PORT = 8193, 8194, 9080, 9070
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
    hosts: [web.example.com, api.example.com, ports.example.com]
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


# api with a second, lower HTTP port: a fallback to "the first HTTP port" would go there.
API_TWO_PORTS = f"""---
apiVersion: networking.meshfed.io/v1alpha1
kind: ServiceEntry
metadata: {{name: api, namespace: default}}
spec:
  hosts: [{API}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {{number: {OTHER_PORT}, name: http-other, protocol: HTTP}}
  - {{number: {APP_PORT}, name: http, protocol: HTTP}}
  endpoints:
  - address: {API_IP}
    ports: {{http-other: {OTHER_PORT}, http: {APP_PORT}}}
"""
BAD_PORTS = f"""---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ports, namespace: default}}
spec:
  hosts: [ports.example.com]
  gateways: [front]
  http:
  - match: [{{uri: {{prefix: /split}}}}]
    route:
    - {{destination: {{host: api, port: {{number: 9999}}}}, weight: 50}}
    - {{destination: {{host: api, port: {{number: {APP_PORT}}}}}, weight: 50}}
  - route: [{{destination: {{host: api, port: {{number: 9999}}}}}}]
"""


async def test_a_destination_port_the_service_lacks_is_a_503_never_another_port(
    tmp_path: Path,
) -> None:
    config = CONFIG.replace(workload("api", API, API_IP, APP_PORT), API_TWO_PORTS) + BAD_PORTS
    async with datapath_mesh(tmp_path, config, DENY_WEB) as mesh:
        api = await mesh.backend("api", API_IP, APP_PORT)
        other = await mesh.backend("api-other", API_IP, OTHER_PORT)
        gateway = await mesh.proxy(GW_IP, "ingress", gateway_port=GW_PORT)
        front = f"http://{GW_IP}:{SERVER_PORT}"

        async def routed() -> bool:
            return (await call(front, "ports.example.com", "/"))[0] == 503

        await eventually(routed, 20, "the Gateway server's routes for ports.example.com")
        for _ in range(8):  # half the split names port 9999: all of it goes to 9080
            assert await call(front, "ports.example.com", "/split") == (200, "api")
        assert [r["path"] for r in api.requests] == ["/split"] * 8
        assert other.requests == []  # never the service's other port
        problems = await mesh.problems(gateway)
        assert sum(f"{API} has no HTTP port 9999" in p for p in problems) == 2, problems
