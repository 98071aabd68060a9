"""Today's Istio ``Gateway`` with VirtualServices bound to it, through a real gateway Envoy
(``router~``, selected by Istio's default ``istio: ingressgateway`` label) and a real sidecar:
host routing over HTTP, TLS terminated with a certificate made here, TLS passed through by SNI
to a backend that holds its own certificate, a gateway-only VirtualService leaving the sidecar's
routing as it was, and an invalid Gateway keeping the last good config with a named error.

Hosts: 127.0.157.x. Backends are plain servers at the services' endpoint addresses.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import aiohttp

from integration.routing_helpers import (
    RoutingMesh,
    TlsHttpServer,
    count,
    https_get,
    make_tls_pair,
    request,
    routing_mesh,
)
from meshfed.pilot.translate.traffic import TrafficOptions
from meshfed.proxy import EnvoyProcess, ProxySpec, wait_ready
from meshfed.registry.model import Endpoint, Port, Protocol, Service

GW_IP, SIDECAR_IP = "127.0.157.2", "127.0.157.3"
WEB_IP, API_IP, SECURE_IP = "127.0.157.11", "127.0.157.12", "127.0.157.13"
HTTP_PORT, HTTPS_PORT, PASSTHROUGH_PORT = 8080, 8443, 9443
REDIRECT_PORT, TCP_PORT = 8081, 9000
WEB = "web.default.svc.cluster.local"
API = "api.default.svc.cluster.local"
SECURE = "secure.default.svc.cluster.local"

GATEWAY = f"""apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: front, namespace: default}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {HTTP_PORT}, name: http, protocol: HTTP}}
    hosts: [shop.example.com, "default/{WEB}"]
  - port: {{number: {HTTPS_PORT}, name: https, protocol: HTTPS}}
    hosts: [shop.example.com]
    tls: {{mode: SIMPLE, credentialName: shop-cert}}
  - port: {{number: {HTTPS_PORT}, name: https-mutual, protocol: HTTPS}}
    hosts: [mtls.example.com]
    tls: {{mode: MUTUAL, serverCertificate: {{mtls_crt}}, privateKey: {{mtls_key}},
          caCertificates: {{client_ca}}, minProtocolVersion: TLSV1_2}}
  - port: {{number: {PASSTHROUGH_PORT}, name: tls, protocol: TLS}}
    hosts: [secure.example.com]
    tls: {{mode: PASSTHROUGH}}
  - port: {{number: {REDIRECT_PORT}, name: http-redirect, protocol: HTTP}}
    hosts: [shop.example.com]
    tls: {{httpsRedirect: true}}
  - port: {{number: {TCP_PORT}, name: tcp, protocol: TCP}}
    hosts: ["*"]
"""

ROUTES = """apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: shop, namespace: default}
spec:
  hosts: [shop.example.com]
  gateways: [front]
  http:
  - match: [{uri: {prefix: /api}}]
    route: [{destination: {host: api}}]
  - route: [{destination: {host: web}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: web-at-the-edge, namespace: default}
spec:
  hosts: [web]
  gateways: [default/front]
  http: [{route: [{destination: {host: api}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: secure, namespace: default}
spec:
  hosts: [secure.example.com]
  gateways: [front]
  tls:
  - match: [{sniHosts: [secure.example.com]}]
    route: [{destination: {host: secure, port: {number: 8443}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: raw, namespace: default}
spec:
  hosts: [raw.example.com]
  gateways: [front]
  tcp: [{route: [{destination: {host: api, port: {number: 80}}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mtls, namespace: default}
spec:
  hosts: [mtls.example.com]
  gateways: [front]
  http: [{route: [{destination: {host: api}}]}]
"""


async def start_proxy(mesh: RoutingMesh, spec: ProxySpec) -> EnvoyProcess:
    envoy = EnvoyProcess(spec)
    mesh.envoys.append(envoy)
    await envoy.start()
    await wait_ready(envoy, mesh.hub_url, timeout=30)
    return envoy


async def wait_for_error(mesh: RoutingMesh, text: str, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        errors = [str(e) for e in mesh.store.errors]
        if any(text in e for e in errors):
            return errors
        await asyncio.sleep(0.05)
    raise AssertionError(f"no error with {text!r}: {mesh.store.errors}")


def client_pair(folder: Path) -> tuple[Path, Path, Path]:
    """A client CA and a client certificate it signed: (ca.crt, client.crt, client.key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from integration.peers.certs import issue_leaf, new_ca, write_pem

    folder.mkdir(parents=True, exist_ok=True)
    ca = new_ca("client test CA")
    cert, key = issue_leaf(
        ca, "client", None, ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName("client")]
    )
    paths = folder / "ca.crt", folder / "client.crt", folder / "client.key"
    paths[0].write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    write_pem(paths[1], cert, paths[2], key)
    return paths


async def mutual_get(
    server_name: str, ca: Path, client: tuple[Path, Path] | None, timeout: float = 5.0
) -> str:
    """GET / over TLS with (or without) a client certificate; the last line of the answer."""
    context = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        context.load_cert_chain(client[0], client[1])
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(GW_IP, HTTPS_PORT, ssl=context, server_hostname=server_name),
        timeout,
    )
    try:
        writer.write(f"GET / HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    return data.decode(errors="replace").splitlines()[-1] if data else ""


async def raw_http(port: int, host: str, timeout: float = 5.0) -> str:
    """A plain HTTP/1.1 request over TCP; the last line of the answer."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(GW_IP, port), timeout)
    try:
        writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    return data.decode(errors="replace").splitlines()[-1] if data else ""


async def test_gateway_routes_terminates_and_passes_through_tls(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    ca, crt, _ = make_tls_pair(certs / "shop-cert", ["shop.example.com"], name="shop")
    mtls_ca, mtls_crt, mtls_key = make_tls_pair(
        tmp_path / "mtls", ["mtls.example.com"], name="mtls"
    )
    client_ca, client_crt, client_key = client_pair(tmp_path / "client")
    gateway_text = (
        GATEWAY.replace("{mtls_crt}", str(mtls_crt))
        .replace("{mtls_key}", str(mtls_key))
        .replace("{client_ca}", str(client_ca))
    )
    secure_ca, secure_crt, secure_key = make_tls_pair(
        tmp_path / "secure", ["secure.example.com"], name="secure"
    )
    secure = TlsHttpServer("secure", SECURE_IP, 8443, secure_crt, secure_key)
    await secure.start()
    options = TrafficOptions(gateway_certs_dir=str(certs))
    try:
        async with routing_mesh(tmp_path / "rules", options) as mesh:
            await mesh.version_backend("web", WEB_IP)
            api = await mesh.version_backend("api", API_IP)
            mesh.member.replace(
                [
                    Service(WEB, ports=(Port(80, "http", Protocol.HTTP),)),
                    Service(API, ports=(Port(80, "http", Protocol.HTTP),)),
                    Service(SECURE, ports=(Port(8443, "tls", Protocol.TLS),)),
                ],
                {
                    WEB: [Endpoint(WEB_IP, ports={"http": 9080})],
                    API: [Endpoint(API_IP, ports={"http": 9080})],
                    SECURE: [Endpoint(SECURE_IP, ports={"tls": 8443})],
                },
            )
            mesh.write("routes", ROUTES)
            await mesh.apply("front", gateway_text)
            pilot = f"127.0.0.1:{mesh.pilot.port}"
            await start_proxy(
                mesh,
                ProxySpec(
                    ip=GW_IP,
                    workload="ingress",
                    pilot=pilot,
                    outbound_http_port=18080,
                    role="router",
                ),
            )
            await start_proxy(mesh, ProxySpec(ip=SIDECAR_IP, workload="client", pilot=pilot))
            base = f"http://{GW_IP}:{HTTP_PORT}"
            sidecar = f"http://{SIDECAR_IP}:15001"
            async with aiohttp.ClientSession() as session:
                # HTTP: the bound VirtualService routes by host and path.
                assert await count(session, base + "/", "shop.example.com", 5) == {"web": 5}
                assert await count(session, base + "/api/v1", "shop.example.com", 5) == {"api": 5}
                assert api.requests[-1]["path"] == "/api/v1"
                assert await count(session, base + "/", "other.example.com", 2) == {"HTTP 404": 2}
                # A VirtualService bound only to the gateway: web goes to api at the gateway...
                assert await count(session, base + "/", WEB, 3) == {"api": 3}
                # ...and the sidecar still sends web to web.
                assert await count(session, sidecar + "/", "web", 5) == {"web": 5}
                # SIMPLE TLS terminated with the credential's certificate; web answers.
                line, der = await https_get(GW_IP, HTTPS_PORT, "shop.example.com", ca)
                assert line == "web" and der == ssl.PEM_cert_to_DER_cert(crt.read_text())
                # PASSTHROUGH: the backend's own certificate, and the SNI reached it.
                line, der = await https_get(
                    GW_IP, PASSTHROUGH_PORT, "secure.example.com", secure_ca
                )
                assert line == "secure"
                assert der == ssl.PEM_cert_to_DER_cert(secure_crt.read_text())
                assert secure.sni[-1] == "secure.example.com"

                # An invalid Gateway: a named error, and the last good one stays in force.
                # MUTUAL: a client certificate from the trusted CA is required.
                assert await mutual_get("mtls.example.com", mtls_ca, (client_crt, client_key)) == (
                    "api"
                )
                try:
                    refused = await mutual_get("mtls.example.com", mtls_ca, None)
                except (ssl.SSLError, ConnectionError):
                    refused = ""
                assert refused == ""
                # httpsRedirect: a 301 to https.
                status, _, headers = await request(
                    session, f"http://{GW_IP}:{REDIRECT_PORT}/a", "shop.example.com"
                )
                assert status == 301
                assert headers["location"] == "https://shop.example.com/a"
                # TCP: the bytes reach the tcp route's backend, whatever they say.
                assert await raw_http(TCP_PORT, "anything") == "api"

                mesh.write("front", gateway_text.replace("mode: SIMPLE", "mode: ISTIO_MUTUAL"))
                errors = await wait_for_error(mesh, "tls.mode")
                assert any(
                    e.startswith(
                        f"{mesh.rules_dir / 'front.yaml'}: Gateway default/front: "
                        "spec.servers[1].tls.mode: not supported by meshfed"
                    )
                    for e in errors
                ), errors
                await asyncio.sleep(1.0)  # what a push would have taken
                assert await count(session, base + "/", "shop.example.com", 3) == {"web": 3}
                line, _ = await https_get(GW_IP, HTTPS_PORT, "shop.example.com", ca)
                assert line == "web"
    finally:
        await secure.stop()
