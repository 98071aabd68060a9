"""A real Redis server (Debian's ``redis-server``) per test, for Mixer's quota tests.

Cheap to start, so fixtures give each test its own, on a free loopback port with no
persistence (``--save '' --appendonly no``) and a temporary working directory.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from integration.peers.artifacts import require_binary
from integration.peers.ports import free_port, loopback_host
from integration.peers.process import PeerProcess

START_TIMEOUT = 20.0


@dataclass
class RedisServer:
    """Where a Redis server listens."""

    host: str
    port: int
    log_path: Path
    process: PeerProcess

    @property
    def url(self) -> str:
        """``redis://host:port/0``, as redis-py's ``from_url`` takes it."""
        return f"redis://{self.host}:{self.port}/0"


def _ping(host: str, port: int) -> bool:
    with socket.create_connection((host, port), timeout=1.0) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")


@contextmanager
def start_redis(
    base: Path, host: str | None = None, port: int | None = None
) -> Iterator[RedisServer]:
    """Start ``redis-server`` and yield once it answers PING (``port``: to restart one)."""
    found = shutil.which("redis-server") or "/usr/bin/redis-server"
    binary = require_binary(Path(found), "redis-server", "apt", "redis")
    host = host or loopback_host()
    port = port or free_port(host)
    workdir = base / f"redis-{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        binary,
        "--bind",
        host,
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
        "--daemonize",
        "no",
        "--protected-mode",
        "no",
    ]
    proc = PeerProcess(f"redis@{host}:{port}", argv, workdir / "redis.log").start()
    try:
        proc.wait_until(lambda: _ping(host, port), "for PING", START_TIMEOUT)
        yield RedisServer(host, port, proc.log_path, proc)
    finally:
        proc.stop()
