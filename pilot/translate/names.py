"""Resource names, in one place so that every translator and the cache agree on them.

Cluster names follow Istio's ``direction|port|subset|host`` form, which operators already know
from ``istioctl proxy-config``.
"""

from __future__ import annotations

OUTBOUND_HTTP_ROUTE = "outbound_http"
OUTBOUND_HTTP_LISTENER = "outbound_http"


def outbound_cluster(hostname: str, port: int, subset: str = "") -> str:
    return f"outbound|{port}|{subset}|{hostname}"


def parse_outbound_cluster(name: str) -> tuple[str, int, str] | None:
    """(hostname, port, subset) of an outbound cluster name, or None for any other name."""
    parts = name.split("|")
    if len(parts) != 4 or parts[0] != "outbound" or not parts[1].isdigit():
        return None
    return parts[3], int(parts[1]), parts[2]


def inbound_cluster(port: int) -> str:
    return f"inbound|{port}||"


def inbound_listener(ip: str, port: int) -> str:
    return f"inbound|{ip}:{port}"


def outbound_tcp_listener(ip: str, port: int) -> str:
    return f"outbound|{ip}:{port}"
