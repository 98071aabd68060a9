"""The pod annotations and labels Istio users set for injection, read strictly.

Why a module of its own: these names are the user-facing contract (the same as Istio's), and
each value has a shape (port lists, CIDR lists, ``*``) that must be checked before it reaches
an init container's iptables rules. Every reader returns a canonical string or raises
:class:`BadAnnotation` saying what was expected.
"""

from __future__ import annotations

import ipaddress

INJECT = "sidecar.istio.io/inject"
STATUS = "sidecar.istio.io/status"
INTERCEPTION_MODE = "sidecar.istio.io/interceptionMode"
INCLUDE_OUTBOUND_IP_RANGES = "traffic.sidecar.istio.io/includeOutboundIPRanges"
EXCLUDE_OUTBOUND_IP_RANGES = "traffic.sidecar.istio.io/excludeOutboundIPRanges"
INCLUDE_INBOUND_PORTS = "traffic.sidecar.istio.io/includeInboundPorts"
EXCLUDE_INBOUND_PORTS = "traffic.sidecar.istio.io/excludeInboundPorts"
EXCLUDE_OUTBOUND_PORTS = "traffic.sidecar.istio.io/excludeOutboundPorts"

# Namespace labels that turn injection on (Istio's, and meshfed's own).
NAMESPACE_LABELS = ("istio-injection", "meshfed.io/injection")
ENABLED = "enabled"
DISABLED = "disabled"

MAX_ITEMS = 256


class BadAnnotation(ValueError):
    """An annotation value of the wrong shape (the message says what was expected)."""


def _items(value: str) -> list[str]:
    items = [item.strip() for item in value.split(",")]
    items = [item for item in items if item]
    if len(items) > MAX_ITEMS:
        raise BadAnnotation(f"expected at most {MAX_ITEMS} entries, got {len(items)}")
    return items


def ports(value: str, star: bool = False) -> str:
    """``"80, 8080"`` -> ``"80,8080"``; ``"*"`` when ``star`` allows it; ``""`` for none."""
    stripped = value.strip()
    if star and stripped == "*":
        return "*"
    out: list[int] = []
    for item in _items(stripped):
        if not (item.isascii() and item.isdigit()) or not 1 <= int(item) <= 65535:
            expected = "'*' or " if star else ""
            raise BadAnnotation(
                f"expected {expected}comma-separated ports 1..65535, got {item[:40]!r}"
            )
        if int(item) not in out:
            out.append(int(item))
    return ",".join(str(p) for p in out)


def ip_ranges(value: str, star: bool = False) -> str:
    """``"10.0.0.0/8, 10.96.0.1"`` -> ``"10.0.0.0/8,10.96.0.1/32"``; ``"*"`` when allowed."""
    stripped = value.strip()
    if star and stripped == "*":
        return "*"
    out: list[str] = []
    for item in _items(stripped):
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            expected = "'*' or " if star else ""
            raise BadAnnotation(
                f"expected {expected}comma-separated CIDRs (10.96.0.0/12), got {item[:60]!r}"
            ) from None
        if network.version != 4:
            raise BadAnnotation(
                f"expected IPv4 ranges (the init container sets up iptables), got {item[:60]!r}"
            )
        if str(network) not in out:
            out.append(str(network))
    return ",".join(out)


def interception_mode(value: str) -> str:
    mode = value.strip().upper()
    if mode not in ("REDIRECT", "NONE"):
        raise BadAnnotation(f"expected REDIRECT or NONE, got {value[:40]!r}")
    return mode


def inject_flag(value: str) -> bool | None:
    """``"true"``/``"false"`` (any case, as Istio reads them); None for anything else."""
    lowered = value.strip().lower()
    if lowered in ("true", "yes", "y", "enabled"):
        return True
    if lowered in ("false", "no", "n", "disabled"):
        return False
    return None
