"""The ``consul`` registry entry of the mesh config, read and checked in one place.

The hub passes a registry entry's YAML keys through untouched; this module turns them into a typed
:class:`ConsulParams` or a list of errors that each name the field and what was expected, so a
typo fails at start-up (and in ``meshfed validate``) instead of as a silent empty registry.

Keys (all optional)::

    address: 127.0.0.1:8500          # or "https://consul.example:8501"
    addresses: [host:port, ...]      # several agents/servers: tried in turn when one is down
    datacenters: [dc1, dc2]          # default: the agent's own datacenter
    token: <ACL token>
    tls: {caFile: ..., certFile: ..., keyFile: ...}
    tagFilter: mesh                  # or a list: only instances carrying every tag
    namespace: default               # Consul Enterprise namespace; also the mesh namespace
    filter: 'Service.Meta.team == "a"'   # a Consul filter expression on health entries
    hostnameTemplate: "{service}.service.consul"   # fields: service, datacenter, namespace
    consistency: stale               # stale | default | consistent
    wait: 5m                         # blocking query wait (Consul adds up to wait/16 jitter)
    timeout: 10s                     # connect/read timeout on top of wait + jitter
    rateLimit: 10                    # blocking queries per second, per watch, at most
    maxWatches: 128                  # per-service blocking queries in all, at most (0: none)
    reconcile: 60s                   # catalog-wide mode: read every service this often
    fetchRate: 500                   # catalog-wide mode: non-blocking reads per second, at most
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import attrs

from meshfed.adapters.consul.mapping import (
    DEFAULT_HOSTNAME_TEMPLATE,
    HOSTNAME_FIELDS,
    template_fields,
)

DEFAULT_ADDRESS = "127.0.0.1:8500"
KNOWN_KEYS = frozenset(
    {
        "address",
        "addresses",
        "datacenters",
        "token",
        "tls",
        "tagFilter",
        "namespace",
        "filter",
        "hostnameTemplate",
        "consistency",
        "wait",
        "timeout",
        "rateLimit",
        "maxWatches",
        "reconcile",
        "fetchRate",
    }
)
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$")  # ASCII digits only (\d is Unicode)
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class ConsulParamsError(ValueError):
    """The registry entry is invalid; ``errors`` lists every problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@attrs.frozen(slots=True)
class TLSParams:
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


@attrs.frozen(slots=True)
class ConsulParams:
    addresses: tuple[str, ...] = (DEFAULT_ADDRESS,)
    datacenters: tuple[str, ...] = ()  # empty: the agent's own datacenter
    token: str = ""
    tls: TLSParams | None = None
    tag_filter: tuple[str, ...] = ()
    namespace: str = ""  # Consul Enterprise namespace; "" sends none
    filter: str = ""
    hostname_template: str = DEFAULT_HOSTNAME_TEMPLATE
    consistency: str = "stale"
    wait_s: float = 300.0
    timeout_s: float = 10.0
    rate_limit: float = 10.0
    max_watches: int = 128
    reconcile_s: float = 60.0
    fetch_rate: float = 500.0

    @property
    def mesh_namespace(self) -> str:
        return self.namespace or "default"


def parse_duration(value: Any) -> float | None:
    """``5m``, ``30s``, ``250ms`` or a number of seconds -> seconds; None when malformed."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    match = _DURATION.match(str(value).strip())
    return float(match.group(1)) * _UNITS[match.group(2)] if match else None


def go_duration(seconds: float) -> str:
    """Seconds as a duration Consul's ``wait`` parameter accepts."""
    return f"{round(seconds * 1000)}ms"


def _str_list(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        return list(value)
    return None


def parse_params(params: Mapping[str, Any], where: str = "consul") -> ConsulParams:
    """Read a ``consul`` registry entry; raise :class:`ConsulParamsError` naming every bad field."""
    errors: list[str] = []

    def err(field: str, expected: str) -> None:
        errors.append(f"{where}.{field}: expected {expected}, got {params.get(field)!r}")

    for key in sorted(set(params) - KNOWN_KEYS):
        known = ", ".join(sorted(KNOWN_KEYS))
        errors.append(f"{where}.{key}: unknown key (expected one of {known})")

    addresses: list[str] = []
    if "address" in params:
        if isinstance(params["address"], str) and params["address"]:
            addresses.append(params["address"])
        else:
            err("address", "host:port or a URL")
    if "addresses" in params:
        listed = _str_list(params["addresses"])
        if listed is None:
            err("addresses", "a list of host:port or URLs")
        else:
            addresses.extend(a for a in listed if a not in addresses)
    for address in addresses:
        _, _, rest = address.rpartition("://")
        host, _, port = rest.rstrip("/").rpartition(":")
        if not host or not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            errors.append(f"{where}.addresses: expected host:port or a URL, got {address!r}")

    datacenters = _str_list(params.get("datacenters", []))
    if datacenters is None:
        err("datacenters", "a list of datacenter names")
        datacenters = []

    tag_filter = _str_list(params.get("tagFilter", []))
    if tag_filter is None:
        err("tagFilter", "a tag or a list of tags")
        tag_filter = []

    tls = None
    if "tls" in params:
        raw = params["tls"]
        if not isinstance(raw, Mapping) or set(raw) - {"caFile", "certFile", "keyFile"}:
            err("tls", "a mapping with caFile, certFile, keyFile")
        else:
            tls = TLSParams(*(str(raw.get(k, "")) for k in ("caFile", "certFile", "keyFile")))
            if bool(tls.cert_file) != bool(tls.key_file):
                err("tls", "certFile and keyFile together")

    template = params.get("hostnameTemplate", DEFAULT_HOSTNAME_TEMPLATE)
    try:
        unknown = template_fields(template) - HOSTNAME_FIELDS if isinstance(template, str) else {""}
    except ValueError:
        unknown = {"<malformed>"}
    if unknown or "{service}" not in str(template):
        err("hostnameTemplate", "a template with {service} (optionally {datacenter}, {namespace})")

    consistency = params.get("consistency", "stale")
    if consistency not in ("stale", "default", "consistent"):
        err("consistency", "stale, default or consistent")

    durations = {}
    for key, default in (("wait", 300.0), ("timeout", 10.0), ("reconcile", 60.0)):
        value = parse_duration(params.get(key, default))
        if value is None or value <= 0:
            err(key, "a positive duration such as 30s or 5m")
            value = default
        durations[key] = value
    if durations["wait"] > 600:
        err("wait", "at most 10m (Consul's limit)")

    rate = params.get("rateLimit", 10.0)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0:
        err("rateLimit", "a positive number of queries per second")
        rate = 10.0

    fetch_rate = params.get("fetchRate", 500.0)
    if isinstance(fetch_rate, bool) or not isinstance(fetch_rate, int | float) or fetch_rate <= 0:
        err("fetchRate", "a positive number of reads per second")
        fetch_rate = 500.0

    max_watches = params.get("maxWatches", 128)
    if isinstance(max_watches, bool) or not isinstance(max_watches, int) or max_watches < 0:
        err("maxWatches", "a whole number >= 0")
        max_watches = 128

    for key in ("token", "namespace", "filter"):
        if key in params and not isinstance(params[key], str):
            err(key, "a string")

    if errors:
        raise ConsulParamsError(errors)
    return ConsulParams(
        addresses=tuple(addresses) or (DEFAULT_ADDRESS,),
        datacenters=tuple(dict.fromkeys(datacenters)),
        token=params.get("token", ""),
        tls=tls,
        tag_filter=tuple(sorted(set(tag_filter))),
        namespace=params.get("namespace", ""),
        filter=params.get("filter", ""),
        hostname_template=template,
        consistency=consistency,
        wait_s=durations["wait"],
        timeout_s=durations["timeout"],
        rate_limit=float(rate),
        max_watches=max_watches,
        reconcile_s=durations["reconcile"],
        fetch_rate=float(fetch_rate),
    )
