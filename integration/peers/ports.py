"""Free loopback addresses and ports for real peers.

Every peer the suite starts listens on 127.0.0.0/8 only. Distinct 127.0.0.x addresses
stand for distinct hosts (a three-server Consul cluster uses three of them); ports are
asked from the kernel so parallel runs and leftover servers do not collide.
"""

from __future__ import annotations

import random
import socket

_used_hosts: set[str] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (and free for UDP too, for gossip)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free TCP+UDP port on {host}")


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free ports on ``host``."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port(host)
        if port not in ports:
            ports.append(port)
    return ports


def loopback_host() -> str:
    """A 127.0.0.x address (x in 2..254) not yet handed out by this process."""
    candidates = [f"127.0.0.{i}" for i in range(2, 255) if f"127.0.0.{i}" not in _used_hosts]
    if not candidates:
        _used_hosts.clear()
        candidates = [f"127.0.0.{i}" for i in range(2, 255)]
    host = random.choice(candidates)
    _used_hosts.add(host)
    return host


def loopback_hosts(n: int) -> list[str]:
    """``n`` distinct 127.0.0.x addresses, to stand for ``n`` hosts."""
    return [loopback_host() for _ in range(n)]
