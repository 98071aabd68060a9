"""The init container's iptables rules (the project's REDIRECT interception mode). Pure.

``meshfed iptables`` (the injected init container's command) runs :func:`rules`: the app's
outbound TCP goes to the sidecar's 15001, inbound TCP to its 15006, exactly as
``docs/pilot.md`` describes for ``--interception redirect``, with Istio's annotations deciding
what is captured: ``includeOutboundIPRanges`` (``*`` = everything), ``excludeOutboundIPRanges``,
``excludeOutboundPorts``, ``includeInboundPorts`` (``*`` = every port) and
``excludeInboundPorts``. Envoy's own traffic (its uid) and loopback are never redirected.

Every value is checked again here (the init container may be given any arguments), and a bad
one raises :class:`ValueError` naming the flag.
"""

from __future__ import annotations

import attrs

from meshfed.injection import annotations as A

OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
OUTBOUND_CHAIN = "MESHFED_OUTPUT"
INBOUND_CHAIN = "MESHFED_INBOUND"
REDIRECT_CHAIN = "MESHFED_REDIRECT"
INBOUND_REDIRECT_CHAIN = "MESHFED_IN_REDIRECT"


@attrs.frozen(slots=True)
class Interception:
    proxy_uid: int = 1337
    include_outbound_ip_ranges: str = "*"
    exclude_outbound_ip_ranges: str = ""
    include_inbound_ports: str = "*"
    exclude_inbound_ports: str = ""
    exclude_outbound_ports: str = ""
    outbound_port: int = OUTBOUND_PORT
    inbound_port: int = INBOUND_PORT


def _checked(flag: str, parse: object, value: str, **kw: bool) -> str:
    try:
        return parse(value, **kw)  # type: ignore[operator,no-any-return]
    except A.BadAnnotation as exc:
        raise ValueError(f"{flag}: {exc}") from None


def rules(cfg: Interception) -> list[list[str]]:
    """The ``iptables -t nat`` argument lists, in order (each without the leading binary)."""
    if not 0 <= cfg.proxy_uid < 2**32:
        raise ValueError(f"--proxy-uid: expected a uid, got {cfg.proxy_uid}")
    include_out = _checked(
        "--include-outbound-ip-ranges", A.ip_ranges, cfg.include_outbound_ip_ranges, star=True
    )
    exclude_out = _checked(
        "--exclude-outbound-ip-ranges", A.ip_ranges, cfg.exclude_outbound_ip_ranges
    )
    include_in = _checked("--include-inbound-ports", A.ports, cfg.include_inbound_ports, star=True)
    exclude_in = _checked("--exclude-inbound-ports", A.ports, cfg.exclude_inbound_ports)
    exclude_outp = _checked("--exclude-outbound-ports", A.ports, cfg.exclude_outbound_ports)
    nat = ["-t", "nat"]
    out: list[list[str]] = []
    for chain in (INBOUND_CHAIN, INBOUND_REDIRECT_CHAIN, OUTBOUND_CHAIN, REDIRECT_CHAIN):
        out.append([*nat, "-N", chain])
    out.append(
        [
            *nat,
            "-A",
            REDIRECT_CHAIN,
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            str(cfg.outbound_port),
        ]
    )
    out.append(
        [
            *nat,
            "-A",
            INBOUND_REDIRECT_CHAIN,
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            str(cfg.inbound_port),
        ]
    )
    # Inbound: the app's ports (or all) go to the sidecar's inbound listener.
    if include_in:
        out.append([*nat, "-A", "PREROUTING", "-p", "tcp", "-j", INBOUND_CHAIN])
        for port in [p for p in exclude_in.split(",") if p]:
            out.append([*nat, "-A", INBOUND_CHAIN, "-p", "tcp", "--dport", port, "-j", "RETURN"])
        if include_in == "*":
            out.append([*nat, "-A", INBOUND_CHAIN, "-p", "tcp", "-j", INBOUND_REDIRECT_CHAIN])
        else:
            for port in include_in.split(","):
                out.append(
                    [
                        *nat,
                        "-A",
                        INBOUND_CHAIN,
                        "-p",
                        "tcp",
                        "--dport",
                        port,
                        "-j",
                        INBOUND_REDIRECT_CHAIN,
                    ]
                )
    # Outbound: what the app sends, except Envoy's own traffic and loopback.
    if include_out:
        out.append([*nat, "-A", "OUTPUT", "-p", "tcp", "-j", OUTBOUND_CHAIN])
        out.append(
            [
                *nat,
                "-A",
                OUTBOUND_CHAIN,
                "-m",
                "owner",
                "--uid-owner",
                str(cfg.proxy_uid),
                "-j",
                "RETURN",
            ]
        )
        out.append([*nat, "-A", OUTBOUND_CHAIN, "-d", "127.0.0.1/32", "-j", "RETURN"])
        for port in [p for p in exclude_outp.split(",") if p]:
            out.append([*nat, "-A", OUTBOUND_CHAIN, "-p", "tcp", "--dport", port, "-j", "RETURN"])
        for cidr in [c for c in exclude_out.split(",") if c]:
            out.append([*nat, "-A", OUTBOUND_CHAIN, "-d", cidr, "-j", "RETURN"])
        if include_out == "*":
            out.append([*nat, "-A", OUTBOUND_CHAIN, "-j", REDIRECT_CHAIN])
        else:
            for cidr in include_out.split(","):
                out.append([*nat, "-A", OUTBOUND_CHAIN, "-d", cidr, "-j", REDIRECT_CHAIN])
    return out
