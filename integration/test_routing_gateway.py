"""The ingress gateway (a real Envoy run as ``router~``) configured by Pilot from a meshfed
Gateway and a Kubernetes Ingress read by the file store: host and path routing, gRPC (a grpcio
client through the gateway to a grpcio server), TLS termination with a certificate from a
secret folder, and live changes.

Hosts: 127.0.104.x. Backends are plain servers at the services' endpoint addresses.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import grpc
import pytest

from integration.routing_helpers import (
    Greeter,
    RoutingMesh,
    count,
    https_get,
    make_tls_pair,
    routing_mesh,
    say,
)
from meshfed.pilot.translate.traffic import TrafficOptions
from meshfed.proxy import EnvoyProcess, ProxySpec, wait_ready
from meshfed.registry.model import Endpoint, Port, Protocol, Service

GW_IP = "127.0.104.2"
WEB_IP, API_IP, GRPC_IP = "127.0.104.11", "127.0.104.12", "127.0.104.13"
HTTP_PORT, TLS_PORT = 8080, 8443
WEB = "web.default.svc.cluster.local"
API = "api.default.svc.cluster.local"
GREETER = "greeter.default.svc.cluster.local"

GATEWAY = """apiVersion: config.meshfed.io/v1alpha1
kind: Gateway
metadata: {name: front, namespace: default}
spec:
  rules:
  - host: web.example.com
    http:
      paths:
      - {path: /, backend: {serviceName: web, servicePort: 80}}
      - {path: /api, backend: {serviceName: api, servicePort: http}}
  - host: grpc.example.com
    http:
      paths:
      - {path: /, grpc: true, backend: {serviceName: greeter, servicePort: 9090}}
  tls:
  - hosts: [web.example.com, grpc.example.com]
    secretName: front-tls
"""

INGRESS = """apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop, namespace: default}
spec:
  ingressClassName: meshfed
  defaultBackend: {service: {name: web, port: {number: 80}}}
  rules:
  - host: shop.example.com
    http:
      paths:
      - path: /cart
        pathType: Prefix
        backend: {service: {name: api, port: {number: 80}}}
"""


async def gateway(mesh: RoutingMesh) -> EnvoyProcess:
    spec = ProxySpec(
        ip=GW_IP,
        workload="ingress",
        pilot=f"127.0.0.1:{mesh.pilot.port}",
        outbound_http_port=HTTP_PORT,
        role="router",
    )
    envoy = EnvoyProcess(spec)
    mesh.envoys.append(envoy)
    await envoy.start()
    await wait_ready(envoy, mesh.hub_url, timeout=30)
    return envoy


@pytest.fixture
async def greeter() -> object:
    server = Greeter(f"{GRPC_IP}:9090")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_gateway_routes_host_path_grpc_and_terminates_tls(
    tmp_path: Path, greeter: Greeter
) -> None:
    certs = tmp_path / "certs"
    ca, crt, _ = make_tls_pair(certs / "front-tls", ["web.example.com", "grpc.example.com"])
    options = TrafficOptions(gateway_certs_dir=str(certs))
    async with routing_mesh(tmp_path / "rules", options) as mesh:
        await mesh.version_backend("web", WEB_IP)
        api = await mesh.version_backend("api", API_IP)
        mesh.member.replace(
            [
                Service(WEB, ports=(Port(80, "http", Protocol.HTTP),)),
                Service(API, ports=(Port(80, "http", Protocol.HTTP),)),
                Service(GREETER, ports=(Port(9090, "grpc", Protocol.GRPC),)),
            ],
            {
                WEB: [Endpoint(WEB_IP, ports={"http": 9080})],
                API: [Endpoint(API_IP, ports={"http": 9080})],
                GREETER: [Endpoint(GRPC_IP, ports={"grpc": 9090})],
            },
        )
        mesh.write("front", GATEWAY)
        mesh.write("shop", INGRESS)
        await mesh.apply("front", GATEWAY)
        gw = await gateway(mesh)
        base = f"http://{GW_IP}:{HTTP_PORT}"
        async with aiohttp.ClientSession() as session:
            assert await count(session, base + "/index.html", "web.example.com", 3) == {"web": 3}
            assert await count(session, base + "/api/v1", "web.example.com", 3) == {"api": 3}
            assert api.requests[-1]["path"] == "/api/v1"
            # The Kubernetes Ingress from the same file store.
            assert await count(session, base + "/cart/1", "shop.example.com", 2) == {"api": 2}
            # Its defaultBackend answers what no path matched, for its host and any other.
            assert await count(session, base + "/", "shop.example.com", 2) == {"web": 2}
            assert await count(session, base + "/x", "unknown.example.com", 2) == {"web": 2}
            # gRPC over h2c through the gateway to the grpcio server.
            assert await say(f"{GW_IP}:{HTTP_PORT}", "grpc.example.com", None) == b"hello mesh"
            # TLS terminated at the gateway with the secret's certificate.
            line, der = await https_get(GW_IP, TLS_PORT, "web.example.com", ca)
            assert line == "web" and der == ssl.PEM_cert_to_DER_cert(crt.read_text())
            creds = grpc.ssl_channel_credentials(ca.read_bytes())
            assert await say(f"{GW_IP}:{TLS_PORT}", "grpc.example.com", creds) == b"hello mesh"
            assert len(greeter.calls) == 2
            # Live change: move /api to web, without restarting the gateway.
            await mesh.apply("front", GATEWAY.replace("serviceName: api", "serviceName: web"))
            assert await count(session, base + "/api/v1", "web.example.com", 3) == {"web": 3}
            await mesh.apply("shop", INGRESS.replace("/cart", "/basket"))
            assert await count(session, base + "/basket", "shop.example.com", 2) == {"api": 2}
            assert await count(session, base + "/cart", "shop.example.com", 2) == {"web": 2}
        state = mesh.syncz(gw.spec.node_id)
        assert state["ready"] and not state["problems"]


async def test_grpc_through_sidecars_with_a_metadata_match(tmp_path: Path) -> None:
    """gRPC end to end app -> sidecar (h2c) -> grpcio servers, a RouteRule on gRPC metadata."""
    v1, v2 = Greeter(f"{GRPC_IP}:9090"), Greeter("127.0.104.14:9090")
    await v1.start()
    await v2.start()
    try:
        async with routing_mesh(tmp_path / "rules") as mesh:
            mesh.member.replace(
                [Service(GREETER, ports=(Port(9090, "grpc", Protocol.GRPC),))],
                {
                    GREETER: [
                        Endpoint(GRPC_IP, ports={"grpc": 9090}, labels={"version": "v1"}),
                        Endpoint("127.0.104.14", ports={"grpc": 9090}, labels={"version": "v2"}),
                    ]
                },
            )
            a = await mesh.sidecar("127.0.104.3", "client")
            await mesh.apply(
                "canary",
                """apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {name: greeter-canary}
spec:
  destination: {name: greeter}
  precedence: 2
  match: {request: {headers: {x-canary: {exact: "yes"}}}}
  route: [{labels: {version: v2}}]
---
apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {name: greeter-default}
spec:
  destination: {name: greeter}
  route: [{labels: {version: v1}}]
""",
            )
            target = f"{a.spec.ip}:{a.spec.outbound_http_port}"
            async with grpc.aio.insecure_channel(
                target, options=[("grpc.default_authority", "greeter:9090")]
            ) as channel:
                call = channel.unary_unary("/test.Greeter/Say")
                for _ in range(4):
                    assert await call(b"a", timeout=5) == b"hello a"
                    canary = await call(b"b", timeout=5, metadata=(("x-canary", "yes"),))
                    assert canary == b"hello b"
            assert v1.calls == [b"a"] * 4 and v2.calls == [b"b"] * 4
    finally:
        await v1.stop()
        await v2.stop()


PATH_TYPES = """apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: paths
  namespace: default
  annotations: {kubernetes.io/ingress.class: istio}   # Istio 0.2's way of claiming it
spec:
  defaultBackend: {service: {name: web, port: {number: 80}}}
  rules:
  - host: paths.example.com
    http:
      paths:
      - {path: /exactpath, pathType: Exact, backend: {service: {name: api, port: {number: 80}}}}
      - {path: /foo, pathType: Prefix, backend: {service: {name: api, port: {number: 80}}}}
      - {path: /bar, pathType: ImplementationSpecific,
         backend: {service: {name: api, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: theirs
  namespace: default
  annotations: {kubernetes.io/ingress.class: nginx}   # another controller's: not served
spec:
  rules:
  - host: paths.example.com
    http:
      paths:
      - {path: /foobar, pathType: Exact, backend: {service: {name: api, port: {number: 80}}}}
"""


async def test_path_types_exact_and_segment_prefix_through_real_envoy(tmp_path: Path) -> None:
    """Exact answers only its path; Prefix matches whole segments (/foo, /foo/bar, not
    /foobar); ImplementationSpecific stays a string prefix; an nginx-class Ingress is ignored."""
    async with routing_mesh(tmp_path / "rules") as mesh:
        await mesh.version_backend("web", WEB_IP)
        api = await mesh.version_backend("api", API_IP)
        mesh.member.replace(
            [
                Service(WEB, ports=(Port(80, "http", Protocol.HTTP),)),
                Service(API, ports=(Port(80, "http", Protocol.HTTP),)),
            ],
            {
                WEB: [Endpoint(WEB_IP, ports={"http": 9080})],
                API: [Endpoint(API_IP, ports={"http": 9080})],
            },
        )
        await mesh.apply("paths", PATH_TYPES)
        gw = await gateway(mesh)
        base = f"http://{GW_IP}:{HTTP_PORT}"
        host = "paths.example.com"
        expected = {
            "/exactpath": "api",
            "/exactpath?q=1": "api",  # the query string is not part of the path
            "/exactpath/more": "web",  # not the exact path: the default backend answers
            "/exactpathx": "web",
            "/foo": "api",
            "/foo/": "api",
            "/foo/bar": "api",
            "/foo?x=1": "api",
            "/foobar": "web",  # not a /foo segment; and the nginx Ingress is not served
            "/barbaz": "api",  # ImplementationSpecific: a plain string prefix
        }
        async with aiohttp.ClientSession() as session:
            got = {}
            for path in expected:
                answers = await count(session, base + path, host, 1)
                (got[path],) = answers
        assert got == expected
        assert [r["path"] for r in api.requests][:2] == ["/exactpath", "/exactpath?q=1"]
        state = mesh.syncz(gw.spec.node_id)
        assert state["ready"] and not state["problems"]
