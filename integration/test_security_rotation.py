"""Certificate rotation under continuous traffic: 20 s certificates, real Envoys, no restart.

Two node agents get 20-second certificates and renew them at half-life (with jitter) while a
client sends a steady, bounded stream of HTTP requests through two sidecars over mutual TLS,
and pings over one long-lived TCP connection (also mutual TLS) opened before the first rotation.
The client's sidecar opens a new upstream connection every few requests, so fresh handshakes
keep happening with whatever certificates are current. Asserted: several rotations on both
sides, every request answered 200, every ping on the long-lived connection echoed (it outlives
the certificates it was established with), the server saw several distinct client certificates (the
``Hash`` in ``x-forwarded-client-cert``), both Envoys serve the agents' latest certificates, and
neither Envoy restarted (same process, hot-restart epoch 0, uptime covering the whole run).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from integration.peers.envoy import EnvoyProxy, start_envoy
from integration.peers.http import get
from integration.peers.ports import free_ports, loopback_host
from integration.security_helpers import (
    client_sidecar,
    http_echo,
    limit_requests_per_connection,
    listener,
    mesh,
    plain_cluster,
    server_sidecar,
    tcp_echo,
    tcp_filter,
    to_dict,
)
from meshfed.security import mtls

pytestmark = pytest.mark.timeout(240)

LIFETIME = dt.timedelta(seconds=20)
RUN_SECONDS = 50.0
REQUEST_INTERVAL = 0.02  # bounded load: at most ~50 requests per second
REQUESTS_PER_CONNECTION = 10


def _server_info(envoy: EnvoyProxy) -> dict[str, Any]:
    status, body = get(f"{envoy.admin_url}/server_info", timeout=5)
    assert status == 200
    return json.loads(body)


def _served_serials(envoy: EnvoyProxy) -> set[int]:
    status, body = get(f"{envoy.admin_url}/certs", timeout=5)
    assert status == 200
    serials = set()
    for entry in json.loads(body).get("certificates", []):
        for cert in entry.get("cert_chain", []):
            serials.add(int(cert["serial_number"], 16))
    return serials


def _failure_stats(envoy: EnvoyProxy) -> dict[str, int]:
    """The non-zero TLS, connect-failure and reset counters: what a failed request left behind."""
    status, body = get(f"{envoy.admin_url}/stats?format=json", timeout=5)
    if status != 200:
        return {}
    wanted = ("ssl.", "cx_connect_fail", "rq_5xx", "reset", "cx_destroy_with_active_rq")
    return {
        s["name"]: s["value"]
        for s in json.loads(body).get("stats", [])
        if "value" in s and s["value"] and any(w in s["name"] for w in wanted)
    }


def _add_tcp(
    boot: dict[str, Any],
    secrets: Path,
    name: str,
    at: tuple[str, int],
    to: tuple[str, int],
    tls: Any = None,
) -> None:
    """A TCP listener ``at`` proxying to ``to``; server side STRICT mTLS, client side ``tls``;
    the mesh secrets from the agent's files in ``secrets``."""
    cluster = plain_cluster(f"{name}-cluster", *to)
    if tls is not None:
        cluster.transport_socket.CopyFrom(tls)
    tcp = listener(name, *at, tcp_filter(name, cluster.name))
    if tls is None:
        mtls.apply_inbound_mtls(tcp, mtls.Mode.STRICT)
    mtls.use_secret_files(tcp, str(secrets))
    mtls.use_secret_files(cluster, str(secrets))
    boot["static_resources"]["listeners"].append(to_dict(tcp))
    boot["static_resources"]["clusters"].append(to_dict(cluster))


def test_rotation_under_traffic_without_failures_or_restarts(tmp_path: Path) -> None:
    server_host = loopback_host()
    with (
        mesh(tmp_path / "mesh") as m,
        http_echo(server_host) as backend,
        tcp_echo(server_host) as tcp_backend,
    ):
        server_agent = m.agent("server", "shop", "reviews", ttl=LIFETIME)
        client_agent = m.agent("client", "shop", "productpage", ttl=LIFETIME)
        s_admin, s_port, s_tcp = free_ports(3, server_host)
        client_host = loopback_host()
        c_admin, c_port, c_tcp = free_ports(3, client_host)
        server_boot = server_sidecar(
            "reviews",
            server_host,
            s_admin,
            s_port,
            backend,
            server_agent.config.secrets_dir,
            mtls.Mode.STRICT,
        )
        client_boot = limit_requests_per_connection(
            client_sidecar(
                "productpage",
                client_host,
                c_admin,
                c_port,
                (server_host, s_port),
                client_agent.config.secrets_dir,
                mtls.upstream_transport_socket([m.identity("shop", "reviews")]),
            ),
            REQUESTS_PER_CONNECTION,
        )
        # Plus one long-lived TCP connection over mTLS, opened before the first rotation.
        _add_tcp(
            server_boot,
            server_agent.config.secrets_dir,
            "inbound_tcp",
            (server_host, s_tcp),
            (server_host, tcp_backend),
        )
        _add_tcp(
            client_boot,
            client_agent.config.secrets_dir,
            "outbound_tcp",
            (client_host, c_tcp),
            (server_host, s_tcp),
            mtls.upstream_transport_socket([m.identity("shop", "reviews")]),
        )
        with (
            start_envoy(tmp_path / "server", server_boot) as server,
            start_envoy(tmp_path / "client", client_boot) as client,
        ):
            pids = (server.process.pid, client.process.pid)
            before = [_server_info(server), _server_info(client)]

            results: list[tuple[int, str]] = []
            failures: list[str] = []
            stop = threading.Event()

            def traffic() -> None:
                url = f"http://{client_host}:{c_port}/"
                while not stop.is_set():
                    try:
                        status, body = get(url, timeout=5)
                        if status != 200:
                            failures.append(f"{time.monotonic():.2f} {status}: {body[:300]!r}")
                        else:
                            xfcc = json.loads(body).get("x-forwarded-client-cert", "")
                            results.append((status, xfcc))
                    except Exception as exc:  # any error is a failed request
                        failures.append(f"{time.monotonic():.2f} {exc!r}")
                    time.sleep(REQUEST_INTERVAL)

            conn = socket.create_connection((client_host, c_tcp), timeout=5)
            pings: list[int] = []

            def long_lived() -> None:
                n = 0
                while not stop.is_set():
                    n += 1
                    payload = f"ping-{n:06d}".encode()
                    try:
                        conn.sendall(payload)
                        got = b""
                        while len(got) < len(payload):
                            chunk = conn.recv(len(payload) - len(got))
                            if not chunk:
                                raise ConnectionError("closed by the proxy")
                            got += chunk
                        if got != payload:
                            raise AssertionError(f"echo {got!r} != {payload!r}")
                        pings.append(n)
                    except Exception as exc:
                        failures.append(f"long-lived TCP: {exc!r}")
                        return
                    time.sleep(0.5)

            worker = threading.Thread(target=traffic, daemon=True)
            worker.start()
            pinger = threading.Thread(target=long_lived, daemon=True)
            pinger.start()
            try:
                deadline = time.monotonic() + RUN_SECONDS
                # When each side's new certificate appeared, to set against failures' times.
                seen: list[str] = []
                counts = (len(server_agent.serials), len(client_agent.serials))
                while time.monotonic() < deadline and not failures:
                    time.sleep(0.1)
                    now = (len(server_agent.serials), len(client_agent.serials))
                    if now != counts:
                        seen.append(f"{time.monotonic():.2f} server={now[0]} client={now[1]}")
                        counts = now
            finally:
                stop.set()
                worker.join(15)
                pinger.join(15)
                conn.close()

            assert not failures, (
                f"{len(failures)} failed of {len(results)}: {failures[:5]}; "
                f"new serials seen at {seen}; "
                f"server {_failure_stats(server)}; client {_failure_stats(client)}"
            )
            assert len(results) > RUN_SECONDS * 10  # the load really ran throughout
            # One TCP connection kept working through every rotation, and past the expiry of
            # the certificates its handshake used (the run is longer than their lifetime).
            assert len(pings) >= RUN_SECONDS * 1.5, pings[-3:]

            # Several rotations on both sides, each pushed to and served by Envoy.
            assert server_agent.rotator.rotations >= 3, server_agent.serials
            assert client_agent.rotator.rotations >= 3, client_agent.serials
            # The certificate handed over last may still be on its way; one of the last two.
            assert _served_serials(server) & set(server_agent.serials[-2:])
            assert _served_serials(client) & set(client_agent.serials[-2:])
            # The server saw the client's rotated certificates in real handshakes.
            hashes = {h for _, x in results for h in re.findall(r"Hash=([0-9a-f]+)", x)}
            assert len(hashes) >= 3, hashes

            # Nobody restarted: same processes, epoch 0, uptime spans the whole run.
            after = [_server_info(server), _server_info(client)]
            assert (server.process.pid, client.process.pid) == pids
            assert server.process.running() and client.process.running()
            for b, a in zip(before, after, strict=True):
                assert a["command_line_options"]["restart_epoch"] == 0
                up_before = int(b["uptime_current_epoch"].rstrip("s"))
                up_after = int(a["uptime_current_epoch"].rstrip("s"))
                assert up_after - up_before >= RUN_SECONDS - 2
