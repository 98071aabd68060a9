"""Egress rules on real Envoy: external services are unreachable from a sidecar without a rule and
reached directly from the sidecar with one, by HTTP (routed by Host, exact and wildcard domains),
by gRPC over HTTP/2 to a wildcard domain, and by TLS passed through untouched (the client sees
the external server's own certificate).

Hosts: 127.0.103.x. The "external" servers are loopback addresses outside every registry, named
``*.ext.test`` by a loopback DNS server the sidecars are pointed at; nothing leaves 127.0.0.0/8.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiohttp
import grpc
import pytest

from integration.routing_helpers import (
    Greeter,
    LoopbackDNS,
    TlsHttpServer,
    count,
    https_get,
    make_tls_pair,
    request,
    routing_mesh,
    say,
)
from meshfed.pilot.translate.traffic import TrafficOptions

A_IP = "127.0.103.2"
DNS_IP = "127.0.103.53"
API_IP, WILD_IP, SECURE_IP, OTHER_IP = (
    "127.0.103.30",
    "127.0.103.31",
    "127.0.103.32",
    "127.0.103.33",
)
TLS_PORT = 8443


def egress(name: str, service: str, ports: str) -> str:
    return f"""apiVersion: config.istio.io/v1alpha2
kind: EgressRule
metadata: {{name: {name}}}
spec:
  destination: {{service: "{service}"}}
  ports: {ports}
"""


@pytest.fixture
async def dns() -> object:
    server = LoopbackDNS(
        DNS_IP,
        5353,
        {
            "api.ext.test": API_IP,
            "*.wild.ext.test": WILD_IP,
            "secure.ext.test": SECURE_IP,
            "other.ext.test": OTHER_IP,
        },
    )
    await server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_http_egress_needs_a_rule_exact_and_wildcard(
    tmp_path: Path, dns: LoopbackDNS
) -> None:
    options = TrafficOptions(dns_resolvers=(dns.resolver,))
    async with routing_mesh(tmp_path / "rules", options) as mesh:
        api = await mesh.version_backend("external-api", API_IP, 8080)
        wild = await mesh.version_backend("external-wild", WILD_IP, 8080)
        a = await mesh.sidecar(A_IP, "app")
        url = a.outbound_url + "/v1/things"
        async with aiohttp.ClientSession() as session:
            # No rule: the sidecar knows no such host.
            assert await count(session, url, "api.ext.test:8080", 3) == {"HTTP 404": 3}
            assert await count(session, url, "x.wild.ext.test:8080", 3) == {"HTTP 404": 3}
            assert api.requests == [] and wild.requests == []
            await mesh.apply("api", egress("api", "api.ext.test", "[{port: 8080, protocol: http}]"))
            assert await count(session, url, "api.ext.test:8080", 5) == {"external-api": 5}
            assert api.requests[-1]["path"] == "/v1/things"
            # As the app's HTTP proxy, with an absolute URL.
            async with session.get("http://api.ext.test:8080/p", proxy=a.outbound_url) as resp:
                assert resp.status == 200 and await resp.text() == "external-api"
            # The rule is per domain: a sibling name is still unreachable.
            assert await count(session, url, "other.ext.test:8080", 2) == {"HTTP 404": 2}
            await mesh.apply("wild", egress("wild", "*.wild.ext.test", "[{port: 8080}]"))
            for host in ("a.wild.ext.test:8080", "b.c.wild.ext.test:8080"):
                assert await count(session, url, host, 3) == {"external-wild": 3}, host
            assert {r["host"] for r in wild.requests} == {
                "a.wild.ext.test:8080",
                "b.c.wild.ext.test:8080",
            }
            assert await count(session, url, "wild.ext.test:8080", 2) == {"HTTP 404": 2}
            # Removing the rule closes the door again, live.
            await mesh.unapply("api")
            assert await count(session, url, "api.ext.test:8080", 3) == {"HTTP 404": 3}
    assert "api.ext.test." in dns.queries


async def test_tls_egress_passes_through_by_sni(tmp_path: Path, dns: LoopbackDNS) -> None:
    ca, crt, key = make_tls_pair(tmp_path / "secure", ["secure.ext.test"])
    other_ca, other_crt, other_key = make_tls_pair(tmp_path / "other", ["other.ext.test"])
    options = TrafficOptions(dns_resolvers=(dns.resolver,), egress_ca_file=str(ca))
    secure = TlsHttpServer("secure-server", SECURE_IP, TLS_PORT, crt, key)
    other = TlsHttpServer("other-server", OTHER_IP, TLS_PORT, other_crt, other_key)
    await secure.start()
    await other.start()
    try:
        async with routing_mesh(tmp_path / "rules", options) as mesh:
            a = await mesh.sidecar(A_IP, "app")
            # No rule: nothing listens for external TLS on the sidecar.
            with pytest.raises(OSError):
                await https_get(A_IP, TLS_PORT, "secure.ext.test", ca)
            await mesh.apply(
                "secure",
                egress("secure", "secure.ext.test", f"[{{port: {TLS_PORT}, protocol: https}}]"),
            )
            line, der = await https_get(A_IP, TLS_PORT, "secure.ext.test", ca)
            assert line == "secure-server"
            # End to end TLS: the certificate is the external server's own, not the mesh's.
            assert der == ssl.PEM_cert_to_DER_cert(crt.read_text())
            assert secure.sni[-1] == "secure.ext.test"
            # Another name on the same port has no rule: the sidecar closes the connection.
            with pytest.raises((OSError, ssl.SSLError, asyncio.IncompleteReadError)):
                await https_get(A_IP, TLS_PORT, "other.ext.test", other_ca)
            assert other.sni == []
            # A wildcard rule admits it (through the SNI dynamic forward proxy).
            await mesh.apply(
                "others",
                egress("others", "*.ext.test", f"[{{port: {TLS_PORT}, protocol: tls}}]"),
            )
            line, der = await https_get(A_IP, TLS_PORT, "other.ext.test", other_ca)
            assert line == "other-server" and other.sni[-1] == "other.ext.test"
            assert der == ssl.PEM_cert_to_DER_cert(other_crt.read_text())
            # The exact rule still wins for its own name.
            line, _ = await https_get(A_IP, TLS_PORT, "secure.ext.test", ca)
            assert line == "secure-server"
            async with aiohttp.ClientSession() as session:
                # Istio 0.2 style: plain HTTP to host:443-like port, TLS originated by the
                # sidecar and the server's certificate verified (CA + SAN).
                host = f"secure.ext.test:{TLS_PORT}"
                status, body, _ = await request(session, a.outbound_url + "/", host)
                assert (status, body) == (200, "secure-server")
                assert secure.sni[-1] == "secure.ext.test"
                # Only exact domains: the wildcard rule's names get no origination.
                status, _, _ = await request(session, a.outbound_url, f"other.ext.test:{TLS_PORT}")
                assert status == 404
    finally:
        await secure.stop()
        await other.stop()


async def test_grpc_egress_to_a_wildcard_domain_speaks_http2(
    tmp_path: Path, dns: LoopbackDNS
) -> None:
    """A grpcio server only speaks HTTP/2: the call succeeds only if the wildcard rule's dynamic
    cluster goes upstream in HTTP/2, and fails without a rule."""
    greeter = Greeter(f"{WILD_IP}:9090")
    await greeter.start()
    try:
        options = TrafficOptions(dns_resolvers=(dns.resolver,))
        async with routing_mesh(tmp_path / "rules", options) as mesh:
            a = await mesh.sidecar(A_IP, "app")
            target = f"{A_IP}:{a.spec.outbound_http_port}"
            with pytest.raises(grpc.aio.AioRpcError):
                await say(target, "greeter.wild.ext.test:9090", None)
            assert greeter.calls == []
            await mesh.apply(
                "grpc", egress("grpc", "*.wild.ext.test", "[{port: 9090, protocol: grpc}]")
            )
            for name in ("greeter.wild.ext.test", "a.b.wild.ext.test"):
                assert await say(target, f"{name}:9090", None) == b"hello mesh", name
            assert greeter.calls == [b"mesh", b"mesh"]
    finally:
        await greeter.stop()
