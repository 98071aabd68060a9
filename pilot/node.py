"""What a proxy tells Pilot about itself, and therefore which view of the mesh it gets.

A sidecar's bootstrap carries a node id and metadata. Pilot reads:

- ``IP``: the proxy's own address; its outbound listeners bind there and endpoints at that
  address are the workload it fronts (inbound). Falls back to the second ``~`` field of an
  Istio-style id ``sidecar~IP~workload.namespace~domain``.
- ``NAMESPACE``, ``WORKLOAD_NAME``, ``IDENTITY`` (SPIFFE ID): who the proxy speaks for; the
  namespace decides which short host names (``b`` for ``b.<ns>.svc...``) resolve.
- ``APP_PORTS``: ``"9080:8080,9090"``, inbound port (the endpoint port the mesh dials) to the
  local application port; one number means both are equal. ``APP_ADDRESS``: where the app
  listens (default: the proxy IP).
- ``OUTBOUND_HTTP_PORT`` (default 15001) and ``ADMIN_PORT`` (default 15000), so Pilot never
  binds a TCP service listener on top of them.
- ``INTERCEPTION_MODE``: ``NONE`` (default: the app addresses the sidecar) or ``REDIRECT``
  (iptables sends the app's traffic to 15001 / 15006; see ``translate/interception.py``).
- ``node.locality`` (not metadata: Envoy's own field): where the proxy runs, for locality-aware
  failover (``pilot/translate/endpoints.py``, :func:`prioritized`).
- ``SDS`` ``"true"`` and ``SDS_PATH``: the absolute directory where the proxy's node agent
  keeps its secret files (``--secrets-dir``, :mod:`security.sds_files`), so the proxy can hold
  a mesh certificate; its mesh TLS names those files. A proxy without them (or with a path
  that is not absolute) gets plain clusters and a problem instead of mutual-TLS config it could
  never use (``pilot/sds_fallback.py``).
- ``MIXER_CLIENT``: ``"true"`` when the bootstrap has the static cluster of a node-local Mixer
  client (``meshfed proxy --mixer``); only such a proxy gets Mixer's filters
  (``pilot/mixer_plugin.py``), since a filter naming a missing cluster would break the listener.
  ``MIXER_CLIENT_STATUS_PORT``: where, on the proxy's IP, that client's metrics and state are
  served (shown by ``proxy-status``; no part of the proxy's view).

- ``LABELS``: the proxy's workload labels, as Istio's agent sends them (a map, or
  ``"k=v,k=v"``); a gateway's Istio ``Gateway`` objects are chosen by their ``selector``
  against them (``pilot/translate/istio_gateway.py``).

Malformed metadata never crashes the server: bad entries are ignored and listed in ``problems``.
"""

from __future__ import annotations

import ipaddress

import attrs
from envoy.config.core.v3 import base_pb2
from google.protobuf import struct_pb2

from meshfed.registry.model import Labels, Locality

DEFAULT_OUTBOUND_HTTP_PORT = 15001
DEFAULT_ADMIN_PORT = 15000
INTERCEPTION_MODES = frozenset({"NONE", "REDIRECT"})


@attrs.frozen(slots=True)
class ProxyNode:
    """A connected proxy's identity, parsed from its ``core.v3.Node``."""

    id: str
    cluster: str = ""
    ip: str = ""
    namespace: str = "default"
    workload: str = ""
    identity: str = ""
    app_address: str = ""
    app_ports: tuple[tuple[int, int], ...] = ()  # (inbound port, app port), sorted
    outbound_http_port: int = DEFAULT_OUTBOUND_HTTP_PORT
    admin_port: int = DEFAULT_ADMIN_PORT
    interception: str = "NONE"  # or "REDIRECT": iptables sends traffic to 15001 / 15006
    sds: bool = False  # a node agent hands it secrets (metadata SDS=true and SDS_PATH)
    secrets_dir: str = ""  # where: the agent's secret files for this proxy (SDS_PATH)
    mixer_client: bool = False  # the bootstrap has the node-local Mixer client's cluster
    mixer_status_port: int = 0  # the client's metrics / state port on ``ip`` (0: none)
    # Where the proxy runs (Envoy's node.locality, ``meshfed proxy --locality``); empty: Pilot
    # takes the locality of the registry endpoints at the proxy's IP, if they agree on one.
    locality: Locality = attrs.field(factory=Locality)
    labels: Labels = attrs.field(factory=Labels)
    problems: tuple[str, ...] = ()

    @property
    def view_key(self) -> tuple:
        """Everything that makes two proxies' views differ; equal keys share listeners."""
        return (
            self.ip,
            self.namespace,
            self.app_address,
            self.app_ports,
            self.outbound_http_port,
            self.admin_port,
            self.interception,
            self.sds,
            self.mixer_client,
            self.locality,
            self.labels,
        )

    @property
    def reserved_ports(self) -> frozenset[int]:
        return frozenset(
            {self.outbound_http_port, self.admin_port, *(p for p, _ in self.app_ports)}
        )


def _valid_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def parse_app_ports(value: str) -> tuple[tuple[tuple[int, int], ...], list[str]]:
    """Parse ``"9080:8080,9090"`` into sorted (inbound, app) pairs plus problems found."""
    pairs: dict[int, int] = {}
    problems: list[str] = []
    for raw in value.replace(" ", "").split(","):
        if not raw:
            continue
        inbound, _, app = raw.partition(":")
        try:
            port_in = int(inbound)
            port_app = int(app) if app else port_in
        except ValueError:
            problems.append(f"APP_PORTS entry {raw!r}: expected PORT or INBOUND:APP")
            continue
        if not (0 < port_in < 65536 and 0 < port_app < 65536):
            problems.append(f"APP_PORTS entry {raw!r}: ports must be 1..65535")
            continue
        pairs[port_in] = port_app
    return tuple(sorted(pairs.items())), problems


def _int_field(meta: dict, key: str, default: int, problems: list[str]) -> int:
    raw = meta.get(key)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except (TypeError, ValueError):
        problems.append(f"{key}={raw!r}: expected a port number")
        return default


def from_proto(node: base_pb2.Node) -> ProxyNode:
    """Read a ``ProxyNode`` from the node an Envoy sends in its first request."""
    meta = {k: _scalar(v) for k, v in node.metadata.fields.items()}
    problems: list[str] = []
    id_parts = node.id.split("~")
    ip = str(meta.get("IP") or "")
    if not ip and len(id_parts) >= 2:
        ip = id_parts[1]
    if ip and not _valid_ip(ip):
        problems.append(f"IP={ip!r}: not an IP address")
        ip = ""
    namespace = str(meta.get("NAMESPACE") or "")
    workload = str(meta.get("WORKLOAD_NAME") or "")
    if len(id_parts) >= 3 and "." in id_parts[2]:
        name, _, ns = id_parts[2].partition(".")
        workload = workload or name
        namespace = namespace or ns
    app_ports, port_problems = parse_app_ports(str(meta.get("APP_PORTS") or ""))
    problems.extend(port_problems)
    app_address = str(meta.get("APP_ADDRESS") or "") or ip
    secrets_dir = str(meta.get("SDS_PATH") or "")
    sds = str(meta.get("SDS") or "").lower() in ("true", "1")
    if sds and not secrets_dir.startswith("/"):
        problems.append(
            f"SDS_PATH={secrets_dir!r}: expected the absolute path of the node agent's secrets "
            "directory (meshfed proxy --secrets-dir); mesh mutual TLS is off for this proxy"
        )
        sds, secrets_dir = False, ""
    interception = str(meta.get("INTERCEPTION_MODE") or "NONE").upper()
    if interception not in INTERCEPTION_MODES:
        problems.append(f"INTERCEPTION_MODE={interception!r}: expected NONE or REDIRECT")
        interception = "NONE"
    return ProxyNode(
        id=node.id,
        cluster=node.cluster,
        ip=ip,
        namespace=namespace or "default",
        workload=workload,
        identity=str(meta.get("IDENTITY") or ""),
        app_address=app_address,
        app_ports=app_ports,
        outbound_http_port=_int_field(
            meta, "OUTBOUND_HTTP_PORT", DEFAULT_OUTBOUND_HTTP_PORT, problems
        ),
        admin_port=_int_field(meta, "ADMIN_PORT", DEFAULT_ADMIN_PORT, problems),
        interception=interception,
        sds=sds,
        secrets_dir=secrets_dir if sds else "",
        mixer_client=str(meta.get("MIXER_CLIENT") or "").lower() in ("true", "1"),
        mixer_status_port=_int_field(meta, "MIXER_CLIENT_STATUS_PORT", 0, problems),
        locality=Locality(node.locality.region, node.locality.zone, node.locality.sub_zone),
        labels=_labels(node.metadata.fields.get("LABELS"), problems),
        problems=tuple(problems),
    )


def _labels(value: struct_pb2.Value | None, problems: list[str]) -> Labels:
    if value is None:
        return Labels()
    kind = value.WhichOneof("kind")
    pairs: dict[str, str] = {}
    if kind == "struct_value":
        for key, item in value.struct_value.fields.items():
            if item.WhichOneof("kind") != "string_value":
                problems.append(f"LABELS.{key}: expected a string value")
                continue
            pairs[key] = item.string_value
    elif kind == "string_value":
        for raw in value.string_value.split(","):
            key, eq, val = raw.strip().partition("=")
            if not raw.strip():
                continue
            if not eq or not key:
                problems.append(f"LABELS entry {raw!r}: expected key=value")
                continue
            pairs[key] = val
    else:
        problems.append("LABELS: expected a map of labels or 'k=v,k=v'")
    return Labels(pairs)


def _scalar(value: struct_pb2.Value) -> object:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        return int(number) if number.is_integer() else number
    if kind == "bool_value":
        return value.bool_value
    return None
