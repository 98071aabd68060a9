"""The ``eureka`` registry entry of the mesh config, validated into :class:`EurekaSettings`.

Why: the hub passes a registry's YAML keys through untouched; this module is the edge where they
are checked, so a typo (``fetchIntervall``) or a bad value (``fetchInterval: soon``) stops the hub
with an error naming the registry, the field and what was expected, instead of an adapter that
silently polls every 30 s or never authenticates. Every problem is reported at once.

Keys (see ``docs/eureka.md``): ``servers`` (required), ``fetchInterval``, ``fullFetchInterval``,
``emptyRegistryGrace``, ``timeout``,
``maxBackoff``, ``format``, ``auth {username, password}``, ``tls {caFile, certFile, keyFile}``,
``hostnameTemplate``, ``namespace``, ``servicePort``, ``secureServicePort``, ``region``,
``remoteRegions``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs

from meshfed.adapters.eureka.mapping import MappingSettings
from meshfed.core.resources import ConfigErrors, FieldReader

KNOWN_KEYS = {
    "servers",
    "fetchInterval",
    "fullFetchInterval",
    "emptyRegistryGrace",
    "timeout",
    "maxBackoff",
    "format",
    "auth",
    "tls",
    "hostnameTemplate",
    "namespace",
    "servicePort",
    "secureServicePort",
    "region",
    "remoteRegions",
}
# Eureka's own clients poll every 30 s (registryFetchIntervalSeconds): fine for a client-side load
# balancer that retries, too slow for a mesh where a DOWN instance keeps getting traffic until the
# next fetch (a status change took 27 s to reach Envoy at 30 s, 2.2 s at 5 s). A delta fetch is one
# small, server-cached GET, so 5 s costs a Eureka cluster 0.2 requests/s per hub.
DEFAULT_FETCH_INTERVAL = 5.0
# A full fetch at least this often bounds how long a stale cached delta can hide a change: the
# server's response cache may keep a delta computed just before a registration (the cache load
# races the invalidation) until it expires, 180 s by default; the hash code cannot notice when the
# stale delta agrees with the local copy.
DEFAULT_FULL_FETCH_INTERVAL = 60.0
# How long an empty answer is distrusted when the mesh knows instances: one default renewal
# interval of Eureka clients (30 s) is how long a restarted server takes to be re-populated.
DEFAULT_EMPTY_REGISTRY_GRACE = 30.0
DEFAULT_TIMEOUT = 5.0
DEFAULT_MAX_BACKOFF = 30.0
FORMATS = ("json", "xml")

# A region as Eureka names it in ``remote-region-urls-with-name.<region>``: the server lower-cases
# the ``regions=`` it is asked for and splits it at commas, so a name holds neither.
_REGION = re.compile(r"^[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?$")
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*$")  # ASCII digits only
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from ``250ms``, ``5s``, ``1.5s``, ``2m``, ``1h`` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 5s or 500ms, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"expected a duration such as 5s or 500ms, got {value!r}")
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"expected a duration such as 5s or 500ms, got {value!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


@attrs.frozen(slots=True)
class TLSSettings:
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


@attrs.frozen(slots=True)
class EurekaSettings:
    """Everything the adapter needs, validated."""

    servers: tuple[str, ...]
    mapping: MappingSettings
    fetch_interval: float = DEFAULT_FETCH_INTERVAL
    full_fetch_interval: float = DEFAULT_FULL_FETCH_INTERVAL
    empty_registry_grace: float = DEFAULT_EMPTY_REGISTRY_GRACE
    timeout: float = DEFAULT_TIMEOUT
    max_backoff: float = DEFAULT_MAX_BACKOFF
    format: str = "json"
    username: str = ""
    password: str = attrs.field(default="", repr=False)
    tls: TLSSettings | None = None
    # The region this Eureka cluster serves ("" = not said: local-only fetches are not possible,
    # see docs/eureka.md "Remote regions") and the remote regions to fetch through it.
    region: str = ""
    remote_regions: tuple[str, ...] = ()


def split_credentials(url: str) -> tuple[str, str, str]:
    """(url without user info, username, password): Spring configs often embed credentials."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, "", ""
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return clean, parts.username or "", parts.password or ""


def normalise_server(url: str) -> str:
    """A server URL ending in ``/`` so that ``apps/`` resolves under the Eureka context."""
    return url if url.endswith("/") else url + "/"


def parse_settings(
    params: Mapping[str, Any], registry: str, source: str = "mesh config"
) -> EurekaSettings:
    """Validate a registry entry's parameters; raise ConfigErrors naming every bad field."""
    reader = FieldReader(source, f"registry {registry}", params, "")
    reader.unknown_fields(KNOWN_KEYS)
    servers: list[str] = []
    username = password = ""
    for i, raw in enumerate(reader.str_list("servers", required=True)):
        url, user, pwd = split_credentials(raw)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            reader.error(f"servers[{i}]", f"expected an http(s) URL, got {raw!r}")
            continue
        servers.append(normalise_server(url))
        username, password = username or user, password or pwd

    def duration(name: str, default: float, minimum: float) -> float:
        value = params.get(name)
        if value is None:
            return default
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            reader.error(name, str(exc))
            return default
        if seconds < minimum:
            reader.error(name, f"expected at least {minimum:g}s, got {value!r}")
            return default
        return seconds

    fetch_interval = duration("fetchInterval", DEFAULT_FETCH_INTERVAL, 0.05)
    full_fetch_interval = duration("fullFetchInterval", DEFAULT_FULL_FETCH_INTERVAL, 0.05)
    empty_grace = duration("emptyRegistryGrace", DEFAULT_EMPTY_REGISTRY_GRACE, 0.0)
    timeout = duration("timeout", DEFAULT_TIMEOUT, 0.05)
    max_backoff = duration("maxBackoff", DEFAULT_MAX_BACKOFF, 0.05)
    fmt = reader.str("format", default="json").lower()
    if fmt not in FORMATS:
        reader.error("format", f"expected one of {', '.join(FORMATS)}, got {fmt!r}")
        fmt = "json"
    auth = reader.reader("auth")
    if auth is not None:
        auth.unknown_fields({"username", "password"})
        username = auth.str("username", required=True)
        password = auth.str("password")
    tls = None
    tls_reader = reader.reader("tls")
    if tls_reader is not None:
        tls_reader.unknown_fields({"caFile", "certFile", "keyFile"})
        tls = TLSSettings(
            ca_file=tls_reader.str("caFile"),
            cert_file=tls_reader.str("certFile"),
            key_file=tls_reader.str("keyFile"),
        )
        if bool(tls.cert_file) != bool(tls.key_file):
            tls_reader.error("certFile", "expected certFile and keyFile together (client cert)")
    region, remote_regions = _regions(reader)
    template = reader.str("hostnameTemplate", default="{vip}")
    try:
        template.format(vip="vip", app="app")
    except (KeyError, IndexError, ValueError) as exc:
        reader.error(
            "hostnameTemplate", f"expected a template using {{vip}} and/or {{app}}: {exc!r}"
        )
        template = "{vip}"
    mapping = MappingSettings(
        registry=registry,
        hostname_template=template,
        namespace=reader.str("namespace", default="default"),
        service_port=reader.int("servicePort", default=80, minimum=1, maximum=65535),
        secure_service_port=reader.int("secureServicePort", default=443, minimum=1, maximum=65535),
    )
    if reader.errors:
        raise ConfigErrors(reader.errors)
    return EurekaSettings(
        servers=tuple(servers),
        mapping=mapping,
        fetch_interval=fetch_interval,
        full_fetch_interval=full_fetch_interval,
        empty_registry_grace=empty_grace,
        timeout=timeout,
        max_backoff=max_backoff,
        format=fmt,
        username=username,
        password=password,
        tls=tls,
        region=region,
        remote_regions=remote_regions,
    )


def _regions(reader: FieldReader) -> tuple[str, tuple[str, ...]]:
    """``region`` and ``remoteRegions``, lower-cased (as Eureka treats them) and checked."""

    def check(field: str, name: str) -> str | None:
        value = name.strip().lower()
        if not _REGION.match(value):
            reader.error(
                field,
                f"expected a region name as configured in Eureka's "
                f"remote-region-urls-with-name (letters, digits, '.', '_', '-'), got {name!r}",
            )
            return None
        return value

    raw_region = reader.str("region")
    region = (check("region", raw_region) or "") if raw_region else ""
    remote: list[str] = []
    for i, name in enumerate(reader.str_list("remoteRegions")):
        value = check(f"remoteRegions[{i}]", name)
        if value is None:
            continue
        if value in remote:
            reader.error(f"remoteRegions[{i}]", f"expected each region once, got {name!r} again")
        elif region and value == region:
            reader.error(
                f"remoteRegions[{i}]",
                f"expected regions other than this cluster's own region {region!r}",
            )
        else:
            remote.append(value)
    if remote and not raw_region:
        reader.error(
            "region",
            "is required with remoteRegions: the name of the region this Eureka cluster serves "
            "(local instances get it as locality, and are told apart from remote ones by asking "
            "for regions=<region>)",
        )
    return region, tuple(remote)
