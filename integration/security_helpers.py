"""Helpers for the security integration tests: a CA and node agents, Envoy bootstraps, backends.

Why a background event loop: the CA and the node agents are ``grpc.aio`` servers, while the
harness starts Envoy with blocking waits (``/ready`` is LIVE only after Envoy received its
secret files). Running the control-plane side on its own loop in a thread lets a plain,
synchronous test start Envoys and send traffic while the agents keep serving SDS.

The Envoy configs are built with :mod:`security.mtls`, the same functions Pilot calls, so these
tests exercise the hook itself, on real Envoys, with real traffic.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import http.server
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from integration.peers.process import PeerProcess
from meshfed.core import xds
from meshfed.nodeagent.agent import AgentConfig, NodeAgent
from meshfed.registry.model import spiffe_id
from meshfed.security import mtls
from meshfed.security.ca import CertificateAuthority
from meshfed.security.service import CAServer, SigningService
from meshfed.security.storage import FileStorage
from meshfed.security.tokens import JoinTokenStore

T = TypeVar("T")
TRUST_DOMAIN = "cluster.local"


class BackgroundLoop:
    """An asyncio loop in a daemon thread; :meth:`run` executes a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def agent_config(
    base: Path,
    ca: CAServer,
    tokens: JoinTokenStore,
    namespace: str,
    account: str,
    *,
    name: str = "",
    bootstrap: dict[str, Any] | None = None,
    ttl: dt.timedelta | None = None,
) -> AgentConfig:
    """A node agent's config for ns/sa against an in-process CA, joined with a fresh token;
    its secrets directory (and sidecar workdir when ``bootstrap`` is given) under ``base``."""
    name = name or account
    return AgentConfig(
        ca_address=ca.bootstrap_target,
        ca_renewal_address=ca.renewal_target,
        ca_root_pem=ca.service.ca.root_pem,
        trust_domain=TRUST_DOMAIN,
        namespace=namespace,
        service_account=account,
        secrets_dir=base / f"agent-{name}",
        join_token=tokens.create(namespace, account),
        ttl=ttl,
        sidecar_bootstrap=bootstrap,
        workdir=base / f"sidecar-{name}" if bootstrap is not None else None,
    )


class Mesh:
    """A CA (self-signed root in ``base``) and the node agents started against it."""

    def __init__(self, base: Path, loop: BackgroundLoop) -> None:
        self.base = base
        self.loop = loop
        self.ca = CertificateAuthority.load_or_create(FileStorage(base / "ca"), TRUST_DOMAIN)
        self.tokens = JoinTokenStore(base / "ca" / "tokens.json")
        self.server = CAServer(SigningService(self.ca, self.tokens), "127.0.0.1:0", "127.0.0.1:0")
        self.agents: list[NodeAgent] = []
        loop.run(self.server.start())

    def identity(self, namespace: str, service_account: str) -> str:
        return spiffe_id(TRUST_DOMAIN, namespace, service_account)

    def agent(
        self, name: str, namespace: str, service_account: str, ttl: dt.timedelta | None = None
    ) -> NodeAgent:
        """A started node agent for ns/sa (joined with a fresh token), its secret files written."""
        config = agent_config(
            self.base, self.server, self.tokens, namespace, service_account, name=name, ttl=ttl
        )
        config.ca_timeout = 5.0
        agent = NodeAgent(config)
        self.loop.run(agent.start())
        self.agents.append(agent)
        return agent

    def close(self) -> None:
        for agent in reversed(self.agents):
            self.loop.run(agent.stop())
        self.loop.run(self.server.stop())


@contextmanager
def mesh(base: Path) -> Iterator[Mesh]:
    loop = BackgroundLoop()
    m: Mesh | None = None
    try:
        m = Mesh(base, loop)
        yield m
    finally:
        if m is not None:
            m.close()
        loop.close()


# -- the CLI as real processes ----------------------------------------------------------------
MESHFED = [sys.executable, "-m", "meshfed.cli", "--log-level", "INFO"]


def json_line(proc: PeerProcess, key: str, timeout: float = 30.0) -> dict[str, Any]:
    """The first JSON line carrying ``key`` that the process printed to its log."""
    found: dict[str, Any] = {}

    def check() -> bool:
        for line in proc.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{") and key in line:
                found.update(json.loads(line))
                return True
        return False

    proc.wait_until(check, f"for the {key!r} line", timeout)
    return found


@contextmanager
def ca_process(
    state: Path, host: str, ports: list[int], log: Path, extra: list[str] | None = None
) -> Iterator[PeerProcess]:
    """``meshfed ca serve`` on ``host`` with (bootstrap, renewal, monitoring) ``ports``."""
    bootstrap, renewal, monitoring = ports
    proc = PeerProcess(
        "meshfed-ca",
        [
            *MESHFED,
            "ca",
            "serve",
            "--trust-domain",
            TRUST_DOMAIN,
            "--state-dir",
            str(state),
            "--listen",
            f"{host}:{bootstrap}",
            "--renew-listen",
            f"{host}:{renewal}",
            "--monitoring",
            f"{host}:{monitoring}",
            *(extra or []),
        ],
        log,
    ).start()
    try:
        json_line(proc, "bootstrap")
        yield proc
    finally:
        proc.stop()


def create_token(state: Path, namespace: str, account: str) -> str:
    out = subprocess.run(
        [*MESHFED, "ca", "token", "create", "--state-dir", str(state), "-n", namespace,
         "-s", account, "--ttl", "10m"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return out.stdout.strip()


def secret_file(path: Path, value: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    return path


def wait_for(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting {what}")


# -- Envoy config -----------------------------------------------------------------------------
def to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _addr(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=host, port_value=port)
    )


def plain_cluster(name: str, host: str, port: int) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STATIC)
    cluster.connect_timeout.FromMilliseconds(2000)
    cluster.load_assignment.cluster_name = name
    cluster.load_assignment.endpoints.add().lb_endpoints.add().endpoint.address.CopyFrom(
        _addr(host, port)
    )
    return cluster


def http_filter(stat_prefix: str, cluster: str) -> lc.Filter:
    manager = hcm.HttpConnectionManager(
        stat_prefix=stat_prefix,
        route_config=route_pb2.RouteConfiguration(
            name=stat_prefix,
            virtual_hosts=[
                rc.VirtualHost(
                    name="all",
                    domains=["*"],
                    routes=[
                        rc.Route(
                            match=rc.RouteMatch(prefix="/"),
                            route=rc.RouteAction(cluster=cluster),
                        )
                    ],
                )
            ],
        ),
        http_filters=[
            hcm.HttpFilter(
                name="envoy.filters.http.router",
                typed_config=xds.pack(router_pb2.Router()),
            )
        ],
    )
    return lc.Filter(
        name="envoy.filters.network.http_connection_manager", typed_config=xds.pack(manager)
    )


def tcp_filter(stat_prefix: str, cluster: str, access_log: Path | None = None) -> lc.Filter:
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix, cluster=cluster)
    if access_log is not None:
        file_log = file_pb2.FileAccessLog(path=str(access_log))
        file_log.log_format.text_format_source.inline_string = (
            "peer=%DOWNSTREAM_PEER_URI_SAN% bytes=%BYTES_RECEIVED%\n"
        )
        proxy.access_log.append(
            accesslog_pb2.AccessLog(
                name="envoy.access_loggers.file", typed_config=xds.pack(file_log)
            )
        )
    return lc.Filter(name="envoy.filters.network.tcp_proxy", typed_config=xds.pack(proxy))


def listener(name: str, host: str, port: int, filt: lc.Filter) -> listener_pb2.Listener:
    return listener_pb2.Listener(
        name=name, address=_addr(host, port), filter_chains=[lc.FilterChain(filters=[filt])]
    )


def bootstrap(
    node: str,
    admin_host: str,
    admin_port: int,
    secrets_dir: Path | None,
    listeners: list[listener_pb2.Listener],
    clusters: list[cluster_pb2.Cluster],
) -> dict[str, Any]:
    """A static bootstrap; with ``secrets_dir`` the mesh TLS that ``security.mtls`` built (for
    all proxies) names that agent's secret files, as Pilot's per-proxy copy does."""
    if secrets_dir is not None:
        for resource in [*listeners, *clusters]:
            mtls.use_secret_files(resource, str(secrets_dir))
    all_clusters = list(clusters)
    return {
        "node": {"id": node, "cluster": node},
        "admin": {"address": {"socket_address": {"address": admin_host, "port_value": admin_port}}},
        "static_resources": {
            "listeners": [to_dict(x) for x in listeners],
            "clusters": [to_dict(c) for c in all_clusters],
        },
    }


def server_sidecar(
    node: str,
    host: str,
    admin_port: int,
    port: int,
    backend_port: int,
    secrets_dir: Path,
    mode: mtls.Mode,
    protocol: str = "http",
    access_log: Path | None = None,
) -> dict[str, Any]:
    """An inbound sidecar: ``host:port`` (mTLS per ``mode``) -> plain backend on ``host``."""
    filt = (
        http_filter("inbound", "backend")
        if protocol == "http"
        else tcp_filter("inbound_tcp", "backend", access_log)
    )
    inbound = listener("inbound", host, port, filt)
    mtls.apply_inbound_mtls(inbound, mode)  # the hook Pilot calls
    return bootstrap(
        node,
        host,
        admin_port,
        secrets_dir,
        [inbound],
        [plain_cluster("backend", host, backend_port)],
    )


def client_sidecar(
    node: str,
    host: str,
    admin_port: int,
    port: int,
    upstream: tuple[str, int],
    secrets_dir: Path | None,
    transport_socket: base_pb2.TransportSocket | None,
    protocol: str = "http",
) -> dict[str, Any]:
    """An outbound sidecar: plain ``host:port`` -> ``upstream`` with ``transport_socket``."""
    cluster = plain_cluster("upstream", *upstream)
    if transport_socket is not None:
        cluster.transport_socket.CopyFrom(transport_socket)
    filt = (
        http_filter("outbound", "upstream")
        if protocol == "http"
        else tcp_filter("outbound_tcp", "upstream")
    )
    return bootstrap(
        node, host, admin_port, secrets_dir, [listener("outbound", host, port, filt)], [cluster]
    )


# -- backends -----------------------------------------------------------------------------
class _EchoHeaders(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None


class _Threading(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


class _EchoTCP(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _ThreadingTCP(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextmanager
def http_echo(host: str, port: int = 0) -> Iterator[int]:
    """A plain HTTP server on ``host`` answering JSON of the request headers; yields its port."""
    server = _Threading((host, port), _EchoHeaders)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def tcp_echo(host: str, port: int = 0) -> Iterator[int]:
    """A plain TCP echo server on ``host``; yields its port."""
    server = _ThreadingTCP((host, port), _EchoTCP)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def tcp_roundtrip(host: str, port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.sendall(payload)
        received = b""
        while len(received) < len(payload):
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


# -- Pilot with the proposed hook ------------------------------------------------------------


# -- root rotation ---------------------------------------------------------------------------
def limit_requests_per_connection(
    boot: dict[str, Any], limit: int, cluster_name: str = "upstream"
) -> dict[str, Any]:
    """Make the sidecar open a new upstream connection (a new handshake) every ``limit``
    requests, so traffic keeps exercising whatever certificates and roots are current."""
    for cluster in boot["static_resources"]["clusters"]:
        if cluster["name"] == cluster_name:
            cluster["typed_extension_protocol_options"] = {
                xds.HTTP_OPTIONS_KEY: {
                    "@type": "type.googleapis.com/"
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "common_http_protocol_options": {"max_requests_per_connection": limit},
                    "explicit_http_config": {"http_protocol_options": {}},
                }
            }
    return boot


def envoy_secret_pems(admin_url: str, name: str) -> bytes:
    """The PEM an Envoy currently holds for SDS secret ``name``: the trust bundle for a
    validation context, the certificate chain for a TLS certificate (keys are redacted)."""
    import base64
    import urllib.request

    url = f"{admin_url}/config_dump?resource=dynamic_active_secrets"
    with urllib.request.urlopen(url, timeout=5) as resp:
        dump = json.loads(resp.read())
    for entry in dump.get("configs", []):
        if entry.get("name") != name:
            continue
        secret = entry.get("secret", {})
        source = secret.get("validation_context", {}).get("trusted_ca") or secret.get(
            "tls_certificate", {}
        ).get("certificate_chain", {})
        if "inline_bytes" in source:
            return base64.b64decode(source["inline_bytes"])
        return source.get("inline_string", "").encode()
    return b""
