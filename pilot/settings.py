"""The mesh config's ``pilot:`` section, checked as a whole before the hub starts.

Why it exists: Pilot reads its settings at start from a plain mapping (debounce, mTLS, egress
resolvers, Ingress selection), and a reader that meets a bad value can only log it and fall back.
A typo or an impossible value must instead stop ``meshfed up`` and fail ``meshfed validate`` with
the field named, so the mesh config loader calls :func:`check_pilot_section` for both.

Promises: every key Pilot knows is listed in :data:`PILOT_KEYS` (anything else is an error), and
each value is checked with the same function Pilot applies at start (``mtls.Policy.from_dict``,
the Ingress modes) or with the shared validators, so a section that passes here is read by Pilot
exactly as written.
"""

from __future__ import annotations

import functools

from meshfed.core import validators as v
from meshfed.core.resources import FieldReader, describe
from meshfed.pilot.config.parse import INGRESS_MODES
from meshfed.security import mtls

PILOT_KEYS = frozenset(
    {
        "debounceQuiet",
        "debounceMax",
        "egressDnsResolvers",
        "egressCaFile",
        "gatewayCertsDir",
        "ingressClass",
        "ingressControllerMode",
        "mtls",
    }
)


def dns_resolver(value: str) -> str:
    """``ip`` or ``ip:port`` (``[v6]:port``): where sidecars send DNS queries for egress names."""
    try:
        return v.ip_address(value)
    except v.Invalid:
        pass
    try:
        host, port = v.host_port(value, hostnames=False)
    except v.Invalid:
        raise v.Invalid(f"expected an IP address or ip:port, got {v.show(value)}") from None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_pilot_section(reader: FieldReader) -> None:
    """Report every unknown key and bad value of a ``pilot:`` section into ``reader``."""
    reader.unknown_fields(set(PILOT_KEYS))
    for key in ("debounceQuiet", "debounceMax"):
        reader.number(key, maximum=3600.0)  # seconds
    reader.checked_list("egressDnsResolvers", dns_resolver)
    reader.str("egressCaFile")
    reader.str("gatewayCertsDir")
    reader.checked("ingressClass", v.dns1123_label)
    mode = reader.str("ingressControllerMode")
    if mode and mode.upper() not in INGRESS_MODES:
        reader.error(
            "ingressControllerMode",
            f"expected one of {', '.join(INGRESS_MODES)}, got {describe(mode)}",
        )
    section = reader.reader("mtls")
    if section is None:
        return
    section.unknown_fields({"mode", "destinations"})
    _mode(section, "mode")
    destinations = section.reader("destinations")
    if destinations is not None:
        host = functools.partial(v.hostname, wildcard=True)
        for name in list(destinations.data):
            try:
                host(name)
            except v.Invalid as exc:
                destinations.error(str(name), str(exc))
                continue
            _mode(destinations, name)
    if not reader.errors:
        try:
            mtls.Policy.from_dict(section.data)  # what Pilot applies at start
        except ValueError as exc:
            section.error("", str(exc))


def _mode(reader: FieldReader, name: str) -> None:
    if name not in reader.data:
        return
    value = reader.data[name]
    try:
        if not isinstance(value, str):
            raise ValueError(f"expected OFF, PERMISSIVE or STRICT, got {describe(value)}")
        mtls.Mode.parse(value)
    except ValueError as exc:
        reader.error(name, str(exc))
