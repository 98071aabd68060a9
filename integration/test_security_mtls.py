"""Mutual TLS between real Envoys whose certificates come from meshfed node agents' secret files.

Each test: a CA, one node agent per sidecar (joined with a join token), real Envoys from static
bootstraps built with :mod:`security.mtls` (the hook Pilot calls), and real traffic on loopback.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from integration.peers.envoy import start_envoy
from integration.peers.http import get
from integration.peers.ports import free_ports, loopback_host
from integration.security_helpers import (
    Mesh,
    client_sidecar,
    http_echo,
    mesh,
    server_sidecar,
    tcp_echo,
    tcp_roundtrip,
)
from meshfed.registry.model import Endpoint, Location, Port, Protocol, Service
from meshfed.security import mtls

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def m(tmp_path: Path) -> Iterator[Mesh]:
    with mesh(tmp_path / "mesh") as started:
        yield started


def _xfcc(status_body: tuple[int, bytes]) -> str:
    status, body = status_body
    assert status == 200, body
    return json.loads(body).get("x-forwarded-client-cert", "")


def _pair(
    m: Mesh,
    stack: ExitStack,
    tmp: Path,
    mode: mtls.Mode,
    protocol: str = "http",
    server_ids: list[str] | None = None,
) -> dict[str, object]:
    """Server sidecar (mode) in front of an echo backend, client sidecar originating mTLS."""
    server_host, client_host = loopback_host(), loopback_host()
    backend = stack.enter_context(
        http_echo(server_host) if protocol == "http" else tcp_echo(server_host)
    )
    s_admin, s_port = free_ports(2, server_host)
    c_admin, c_port = free_ports(2, client_host)
    server_agent = m.agent("server", "shop", "reviews")
    client_agent = m.agent("client", "shop", "productpage")
    access_log = tmp / "server-access.log"
    server = stack.enter_context(
        start_envoy(
            tmp / "server",
            server_sidecar(
                "reviews",
                server_host,
                s_admin,
                s_port,
                backend,
                server_agent.config.secrets_dir,
                mode,
                protocol,
                access_log,
            ),
        )
    )
    expected = server_ids if server_ids is not None else [m.identity("shop", "reviews")]
    client = stack.enter_context(
        start_envoy(
            tmp / "client",
            client_sidecar(
                "productpage",
                client_host,
                c_admin,
                c_port,
                (server_host, s_port),
                client_agent.config.secrets_dir,
                mtls.upstream_transport_socket(expected),
                protocol,
            ),
        )
    )
    return {
        "server": server,
        "client": client,
        "server_addr": (server_host, s_port),
        "client_addr": (client_host, c_port),
        "access_log": access_log,
    }


def test_http_over_mtls_server_sees_the_client_spiffe_id(m: Mesh, tmp_path: Path) -> None:
    with ExitStack() as stack:
        p = _pair(m, stack, tmp_path, mtls.Mode.STRICT)
        host, port = p["client_addr"]  # type: ignore[misc]
        # A forged header from the app is replaced by the verified identity.
        xfcc = _xfcc(
            get(
                f"http://{host}:{port}/hello",
                headers={"x-forwarded-client-cert": "URI=spiffe://evil/ns/x/sa/y"},
                timeout=5,
            )
        )
        assert f"URI={m.identity('shop', 'productpage')}" in xfcc
        assert "evil" not in xfcc
        assert f"By={m.identity('shop', 'reviews')}" in xfcc
        server = p["server"]
        stats = get(f"{server.admin_url}/stats?filter=ssl.handshake$", timeout=5)[1].decode()  # type: ignore[attr-defined]
        handshakes = [
            int(line.rsplit(":", 1)[1]) for line in stats.splitlines() if "listener" in line
        ]
        assert handshakes and sum(handshakes) >= 1, stats


def test_client_refuses_a_server_with_an_unexpected_identity(m: Mesh, tmp_path: Path) -> None:
    with ExitStack() as stack:
        p = _pair(m, stack, tmp_path, mtls.Mode.STRICT, server_ids=[m.identity("shop", "ratings")])
        host, port = p["client_addr"]  # type: ignore[misc]
        status, _ = get(f"http://{host}:{port}/", timeout=5)
        assert status == 503  # the SAN matcher rejected reviews' certificate
        client = p["client"]
        stats = get(f"{client.admin_url}/stats?filter=ssl.fail_verify_san", timeout=5)[1]  # type: ignore[attr-defined]
        assert b"fail_verify_san: 0" not in stats and b"fail_verify_san" in stats


def test_tcp_over_mtls_with_the_client_identity_in_the_access_log(m: Mesh, tmp_path: Path) -> None:
    with ExitStack() as stack:
        p = _pair(m, stack, tmp_path, mtls.Mode.STRICT, protocol="tcp")
        host, port = p["client_addr"]  # type: ignore[misc]
        payload = b"meshfed-tcp-" * 100
        assert tcp_roundtrip(host, port, payload) == payload
        log = p["access_log"]
        deadline = time.monotonic() + 15
        text = ""
        while time.monotonic() < deadline:
            text = log.read_text() if log.exists() else ""  # type: ignore[attr-defined]
            if "peer=" in text:
                break
            time.sleep(0.2)
        assert f"peer={m.identity('shop', 'productpage')}" in text


def _tls_client_without_certificate(host: str, port: int, root_pem: bytes) -> bytes:
    ctx = ssl.create_default_context(cadata=root_pem.decode())
    ctx.check_hostname = False
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return tls.recv(4096)


def _plain_http(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=5) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        try:
            return conn.recv(4096)
        except ConnectionResetError:
            return b""


def test_strict_refuses_clients_without_a_certificate(m: Mesh, tmp_path: Path) -> None:
    with ExitStack() as stack:
        p = _pair(m, stack, tmp_path, mtls.Mode.STRICT)
        host, port = p["server_addr"]  # type: ignore[misc]
        # TLS 1.3 reports the missing certificate after the handshake, on the first read:
        # either an alert (SSLError) or a closed connection, never an HTTP answer.
        try:
            answer = _tls_client_without_certificate(host, port, m.ca.root_pem)
        except (ssl.SSLError, ConnectionResetError) as exc:
            answer = repr(exc).encode()
        assert not answer.startswith(b"HTTP/"), answer
        assert not _plain_http(host, port).startswith(b"HTTP/1.1 200")
        # ... while a meshed client still gets through.
        chost, cport = p["client_addr"]  # type: ignore[misc]
        assert _xfcc(get(f"http://{chost}:{cport}/", timeout=5))


def test_permissive_serves_plain_and_mtls_clients_on_the_same_port(m: Mesh, tmp_path: Path) -> None:
    with ExitStack() as stack:
        p = _pair(m, stack, tmp_path, mtls.Mode.PERMISSIVE)
        host, port = p["server_addr"]  # type: ignore[misc]
        plain = _xfcc(get(f"http://{host}:{port}/", timeout=5))
        assert plain == ""  # served, and no identity claimed for a plain client
        chost, cport = p["client_addr"]  # type: ignore[misc]
        meshed = _xfcc(get(f"http://{chost}:{cport}/", timeout=5))
        assert f"URI={m.identity('shop', 'productpage')}" in meshed


def test_meshed_client_reaches_a_server_without_sidecar(m: Mesh, tmp_path: Path) -> None:
    host = loopback_host()
    policy = mtls.Policy(mtls.Mode.STRICT)
    legacy = Service("legacy.shop.svc.cluster.local", "shop", [Port(80, "http", Protocol.HTTP)])
    with ExitStack() as stack:
        backend = stack.enter_context(http_echo(host))
        # The registry knows its identity (a service account) but no sidecar terminates mesh
        # TLS there (no tlsMode label): the hook chooses plain traffic, even in STRICT mode.
        no_sidecar = Endpoint(host, identity=m.identity("shop", "legacy"))
        socket_ = mtls.outbound_transport_socket(legacy, [no_sidecar], policy)
        assert socket_ is None
        external = Service("api.example.com", location=Location.MESH_EXTERNAL)
        assert (
            mtls.outbound_transport_socket(external, [Endpoint(host, identity="x")], policy) is None
        )
        client_agent = m.agent("client", "shop", "productpage")
        chost = loopback_host()
        admin, port = free_ports(2, chost)
        stack.enter_context(
            start_envoy(
                tmp_path / "client",
                client_sidecar(
                    "productpage",
                    chost,
                    admin,
                    port,
                    (host, backend),
                    client_agent.config.secrets_dir,
                    socket_,
                ),
            )
        )
        assert _xfcc(get(f"http://{chost}:{port}/", timeout=5)) == ""
