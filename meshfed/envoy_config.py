"""What one Envoy holds, read from its admin port and cut into istioctl's ``proxy-config`` tables.

``meshfed proxy-config KIND PROXY`` reads ``/config_dump?include_eds`` (clusters, listeners,
routes, secrets, bootstrap) and ``/clusters?format=json`` (each endpoint's health, as Envoy sees
it) from the proxy's admin address, which Pilot knows from the node's metadata. The functions
here are pure: they take those JSON documents and return rows, so the CLI, a test and any other
reader cut them the same way. Cluster names follow ``direction|port|subset|host``; a name that
does not is shown whole, with its direction taken from its listener side when Envoy gives one.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
from typing import Any

import attrs

KINDS = ("cluster", "listener", "route", "endpoint", "secret", "bootstrap")

DUMP_TYPES = {
    "bootstrap": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
    "cluster": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
    "listener": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
    "route": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
    "secret": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
    "endpoint": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
}


@attrs.frozen
class Filters:
    """istioctl's filters; empty/0 means no filter."""

    fqdn: str = ""
    port: int = 0
    direction: str = ""
    subset: str = ""

    def keep(self, fqdn: str = "", port: int = 0, direction: str = "", subset: str = "") -> bool:
        if self.fqdn and not _fqdn_matches(self.fqdn, fqdn):
            return False
        if self.port and port != self.port:
            return False
        if self.direction and direction != self.direction:
            return False
        return not (self.subset and subset != self.subset)


def _fqdn_matches(wanted: str, have: str) -> bool:
    # istioctl accepts a short name: ``reviews`` finds reviews.default.svc.cluster.local
    return have == wanted or have.startswith(wanted + ".")


def section(dump: dict[str, Any], kind: str) -> dict[str, Any]:
    """One ``configs`` entry of an admin ``/config_dump`` (an empty dict when absent)."""
    wanted = DUMP_TYPES[kind]
    return next((c for c in dump.get("configs", []) if c.get("@type") == wanted), {})


def parse_cluster_name(name: str) -> tuple[str, int, str, str]:
    """(direction, port, subset, fqdn) of ``direction|port|subset|host``, else ("", 0, "", name)."""
    parts = name.split("|")
    if len(parts) == 4 and parts[0] in ("inbound", "outbound") and parts[1].isdigit():
        return parts[0], int(parts[1]), parts[2], parts[3]
    return "", 0, "", name


def _clusters(dump: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    sec = section(dump, "cluster")
    for entry in sec.get("static_clusters", []):
        yield "static", entry.get("cluster", {})
    for entry in sec.get("dynamic_active_clusters", []):
        yield "dynamic", entry.get("cluster", {})
    for entry in sec.get("dynamic_warming_clusters", []):
        yield "warming", entry.get("cluster", {})


CLUSTER_HEADERS = ["SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE", "SOURCE"]


def cluster_rows(dump: dict[str, Any], filters: Filters = Filters()) -> list[list[str]]:
    rows = []
    for source, cluster in _clusters(dump):
        name = cluster.get("name", "")
        direction, port, subset, fqdn = parse_cluster_name(name)
        if not filters.keep(fqdn, port, direction, subset):
            continue
        kind = cluster.get("type") or ("EDS" if "eds_cluster_config" in cluster else "-")
        rows.append([fqdn, str(port or "-"), subset or "-", direction or "-", kind, source.upper()])
    return sorted(rows)


LISTENER_HEADERS = ["NAME", "ADDRESS", "PORT", "DIRECTION", "MATCH", "DESTINATION"]


def _listeners(dump: dict[str, Any]) -> Iterator[dict[str, Any]]:
    sec = section(dump, "listener")
    for entry in sec.get("static_listeners", []):
        yield entry.get("listener", {})
    for entry in sec.get("dynamic_listeners", []):
        active = entry.get("active_state") or entry.get("warming_state") or {}
        if active.get("listener"):
            yield active["listener"]


def _chain_destination(chain: dict[str, Any]) -> str:
    for flt in chain.get("filters", []):
        typed = flt.get("typed_config", {})
        rds = typed.get("rds", {})
        if rds.get("route_config_name"):
            return f"Route: {rds['route_config_name']}"
        if typed.get("route_config", {}).get("name"):
            return f"Route: {typed['route_config']['name']} (inline)"
        if typed.get("cluster"):
            return f"Cluster: {typed['cluster']}"
    return "-"


def _chain_match(chain: dict[str, Any]) -> str:
    match = chain.get("filter_chain_match", {})
    parts = []
    if match.get("transport_protocol"):
        parts.append(f"transport={match['transport_protocol']}")
    if match.get("server_names"):
        parts.append("SNI=" + ",".join(match["server_names"]))
    if match.get("application_protocols"):
        parts.append("ALPN=" + ",".join(match["application_protocols"]))
    return " ".join(parts) or "ALL"


def listener_rows(dump: dict[str, Any], filters: Filters = Filters()) -> list[list[str]]:
    rows = []
    for listener in _listeners(dump):
        sock = listener.get("address", {}).get("socket_address", {})
        address, port = sock.get("address", ""), int(sock.get("port_value", 0))
        direction = str(listener.get("traffic_direction", "")).lower()
        direction = direction if direction in ("inbound", "outbound") else ""
        name = listener.get("name", "")
        if not direction and name.split("|")[0] in ("inbound", "outbound"):
            direction = name.split("|")[0]
        if filters.port and port != filters.port:
            continue
        if filters.direction and direction != filters.direction:
            continue
        chains = listener.get("filter_chains", []) or [{}]
        for chain in chains:
            destination = _chain_destination(chain)
            if filters.fqdn and filters.fqdn not in destination:
                continue
            rows.append(
                [name, address, str(port), direction or "-", _chain_match(chain), destination]
            )
    return rows


ROUTE_HEADERS = ["NAME", "VIRTUAL HOST", "DOMAINS", "MATCH", "DESTINATION"]


def _routes(dump: dict[str, Any]) -> Iterator[dict[str, Any]]:
    sec = section(dump, "route")
    for entry in sec.get("static_route_configs", []):
        yield entry.get("route_config", {})
    for entry in sec.get("dynamic_route_configs", []):
        yield entry.get("route_config", {})


def _route_destination(route: dict[str, Any]) -> str:
    action = route.get("route", {})
    if action.get("cluster"):
        return str(action["cluster"])
    weighted = action.get("weighted_clusters", {}).get("clusters", [])
    if weighted:
        return ", ".join(f"{c.get('name')} ({c.get('weight', 0)})" for c in weighted)
    if "redirect" in route:
        return "redirect"
    if "direct_response" in route:
        return f"direct {route['direct_response'].get('status', '')}"
    return "-"


def _route_match(route: dict[str, Any]) -> str:
    match = route.get("match", {})
    for key in ("prefix", "path", "path_separated_prefix"):
        if key in match:
            text = f"{key}={match[key]}" if key != "prefix" else f"{match[key]}*"
            break
    else:
        regex = match.get("safe_regex", {}).get("regex")
        text = f"regex={regex}" if regex else "-"
    headers = match.get("headers", [])
    if headers:
        text += " " + ",".join(h.get("name", "") for h in headers)
    return text


def route_rows(dump: dict[str, Any], filters: Filters = Filters()) -> list[list[str]]:
    rows = []
    for config in _routes(dump):
        name = config.get("name", "")
        for vhost in config.get("virtual_hosts", []):
            domains = vhost.get("domains", [])
            if filters.fqdn and not any(
                _fqdn_matches(filters.fqdn, d.split(":")[0]) for d in domains
            ):
                continue
            if filters.port and not any(d.endswith(f":{filters.port}") for d in domains):
                continue
            shown = ", ".join(domains[:2]) + (
                f" +{len(domains) - 2} more" if len(domains) > 2 else ""
            )
            for route in vhost.get("routes", []) or [{}]:
                rows.append(
                    [
                        name,
                        vhost.get("name", ""),
                        shown,
                        _route_match(route),
                        _route_destination(route),
                    ]
                )
    return rows


ENDPOINT_HEADERS = ["ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"]


def endpoint_rows(clusters: dict[str, Any], filters: Filters = Filters()) -> list[list[str]]:
    """Rows from Envoy's ``/clusters?format=json`` (what it resolved and how healthy)."""
    rows = []
    for status in clusters.get("cluster_statuses", []):
        name = status.get("name", "")
        direction, port, subset, fqdn = parse_cluster_name(name)
        if not filters.keep(fqdn, port, direction, subset):
            continue
        for host in status.get("host_statuses", []):
            sock = host.get("address", {}).get("socket_address", {})
            pipe = host.get("address", {}).get("pipe", {})
            where = (
                f"{sock.get('address')}:{sock.get('port_value')}"
                if sock
                else f"unix://{pipe.get('path', '')}"
            )
            health = host.get("health_status", {})
            failed = health.get("failed_outlier_check", False)
            state = health.get("eds_health_status", "HEALTHY")
            if health.get("failed_active_health_check"):
                state = "UNHEALTHY"
            rows.append([where, state, "FAILED" if failed else "OK", name])
    return sorted(rows, key=lambda r: (r[3], r[0]))


SECRET_HEADERS = ["RESOURCE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER", "NOT AFTER"]


def _secrets(dump: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    sec = section(dump, "secret")
    for entry in sec.get("static_secrets", []):
        yield "ACTIVE", entry
    for entry in sec.get("dynamic_active_secrets", []):
        yield "ACTIVE", entry
    for entry in sec.get("dynamic_warming_secrets", []):
        yield "WARMING", entry


def _certificate_facts(pem: bytes) -> tuple[str, str, str]:
    from datetime import UTC, datetime

    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return "false", "-", "-"
    now = datetime.now(UTC)
    valid = cert.not_valid_before_utc <= now <= cert.not_valid_after_utc
    return str(valid).lower(), format(cert.serial_number, "x"), cert.not_valid_after_utc.isoformat()


def secret_rows(dump: dict[str, Any]) -> list[list[str]]:
    rows = []
    for state, entry in _secrets(dump):
        secret = entry.get("secret", {})
        name = entry.get("name") or secret.get("name", "")
        if "tls_certificate" in secret:
            kind = "Cert Chain"
            inline = secret["tls_certificate"].get("certificate_chain", {}).get("inline_bytes")
        elif "validation_context" in secret:
            kind = "CA"
            inline = secret["validation_context"].get("trusted_ca", {}).get("inline_bytes")
        else:
            kind, inline = "-", None
        valid, serial, not_after = "-", "-", "-"
        if inline:
            valid, serial, not_after = _certificate_facts(base64.b64decode(inline))
        rows.append([name, kind, state, valid, serial, not_after])
    return rows


def bootstrap(dump: dict[str, Any]) -> dict[str, Any]:
    return dict(section(dump, "bootstrap").get("bootstrap", {}))


def bootstrap_rows(dump: dict[str, Any]) -> list[list[str]]:
    boot = bootstrap(dump)
    node = boot.get("node", {})
    admin = boot.get("admin", {}).get("address", {}).get("socket_address", {})
    rows = [
        ["node id", node.get("id", "-")],
        ["cluster", node.get("cluster", "-")],
        ["admin", f"{admin.get('address', '-')}:{admin.get('port_value', '-')}"],
    ]
    ads = boot.get("dynamic_resources", {}).get("ads_config", {})
    for service in ads.get("grpc_services", []):
        rows.append(["ADS cluster", service.get("envoy_grpc", {}).get("cluster_name", "-")])
    for cluster in boot.get("static_resources", {}).get("clusters", []):
        rows.append(["static cluster", cluster.get("name", "")])
    return rows


def resources(dump: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """The raw resources of a kind from a config dump (``-o json|yaml``)."""
    if kind == "cluster":
        return [c for _, c in _clusters(dump)]
    if kind == "listener":
        return list(_listeners(dump))
    if kind == "route":
        return list(_routes(dump))
    if kind == "secret":
        return [e for _, e in _secrets(dump)]
    if kind == "endpoint":
        sec = section(dump, "endpoint")
        entries: Iterable[dict[str, Any]] = [
            *sec.get("static_endpoint_configs", []),
            *sec.get("dynamic_endpoint_configs", []),
        ]
        return [e.get("endpoint_config", {}) for e in entries]
    return [bootstrap(dump)]
