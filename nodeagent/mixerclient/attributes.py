"""Envoy's view of a request or connection, as an Istio 0.2 attribute bag.

Pure functions, no I/O: an ext_authz ``CheckRequest`` (its ``AttributeContext``) becomes the
bag of a Mixer Check, and an ``HTTPAccessLogEntry`` / ``TCPAccessLogEntry`` the bag of a Report
entry. Values have the Python types of :mod:`mixer.attributes.types` (IP addresses as
``ipaddress`` objects, durations as ``timedelta``, times as aware ``datetime``), so the codec
encodes them with their Istio types.

The vocabulary is Istio 0.2's ``istioproxy`` manifest: ``request.*`` (``headers``, ``path``,
``host``, ``method``, ``scheme``, ``size``, ``id``, ``useragent``, ``referer``, ``time``),
``response.*`` (``code``, ``duration``, ``size``, ``time``), ``source.ip`` / ``source.port`` /
``source.user`` (the peer's SPIFFE ID from mutual TLS), ``destination.ip`` / ``port`` /
``service``, ``connection.*`` for TCP, and ``context.protocol`` (``http`` or ``tcp``, which
Mixer's rule selection reads). What Envoy does not know -- the destination service -- comes
from Pilot's config: ext_authz ``context_extensions`` and access-log custom tags
(:data:`pilot.mixer_plugin.DESTINATION_SERVICE`), or, at a gateway, the upstream cluster's name.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Mapping
from typing import Any

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from google.protobuf import duration_pb2, timestamp_pb2

from meshfed.pilot.mixer_plugin import DESTINATION_SERVICE
from meshfed.pilot.translate.names import parse_outbound_cluster

Bag = dict[str, Any]

# Where Envoy keeps the dynamic metadata an ext_authz answer carries (the filter's name).
AUTHZ_METADATA = "envoy.filters.http.ext_authz"

# Envoy's pseudo-headers are separate attributes in Istio's vocabulary, not request.headers.
_PSEUDO = (":authority", ":method", ":path", ":scheme")

# google.rpc.Code -> HTTP status, as Istio's proxy mapped Mixer's verdicts.
_HTTP_FOR_GRPC = {
    0: 200,
    1: 499,
    2: 500,
    3: 400,
    4: 504,
    5: 404,
    6: 409,
    7: 403,
    8: 429,
    9: 400,
    10: 409,
    11: 400,
    12: 501,
    13: 500,
    14: 503,
    15: 500,
    16: 401,
}


def http_status_for(grpc_code: int) -> int:
    """The HTTP status a denied request gets for Mixer's gRPC status code."""
    return _HTTP_FOR_GRPC.get(grpc_code, 500)


def _ip(address: address_pb2.Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not address.HasField("socket_address"):
        return None
    try:
        return ipaddress.ip_address(address.socket_address.address)
    except ValueError:
        return None


def _peer(bag: Bag, prefix: str, address: address_pb2.Address) -> None:
    ip = _ip(address)
    if ip is not None:
        bag[f"{prefix}.ip"] = ip
        bag[f"{prefix}.port"] = int(address.socket_address.port_value)


def _time(stamp: timestamp_pb2.Timestamp) -> dt.datetime:
    return stamp.ToDatetime(tzinfo=dt.UTC)


def _duration(value: duration_pb2.Duration) -> dt.timedelta:
    return value.ToTimedelta()


def _destination_service(
    bag: Bag, tagged: Mapping[str, str], cluster: str = "", checked: str = ""
) -> None:
    service = tagged.get(DESTINATION_SERVICE, "") or checked
    if not service and cluster:
        parsed = parse_outbound_cluster(cluster)
        service = parsed[0] if parsed else ""
    if service:
        bag["destination.service"] = service


def check_bag(request: external_auth_pb2.CheckRequest) -> Bag:
    """The attributes of one ext_authz Check (HTTP, or a TCP connection when there is no
    HTTP request in it)."""
    context: attribute_context_pb2.AttributeContext = request.attributes
    bag: Bag = {}
    _peer(bag, "source", context.source.address)
    _peer(bag, "destination", context.destination.address)
    if context.source.principal:
        bag["source.user"] = context.source.principal
    _destination_service(bag, context.context_extensions)
    if context.request.HasField("time"):
        bag["request.time"] = _time(context.request.time)
        bag["context.time"] = bag["request.time"]
    http = context.request.http
    if context.request.HasField("http"):
        bag["context.protocol"] = "http"
        headers = {k: v for k, v in http.headers.items() if k not in _PSEUDO}
        bag["request.headers"] = headers
        bag["request.path"] = http.path
        bag["request.host"] = http.host
        bag["request.method"] = http.method
        if http.scheme:
            bag["request.scheme"] = http.scheme
        if http.id:
            bag["request.id"] = http.id
        if http.size >= 0:
            bag["request.size"] = int(http.size)
        if "user-agent" in headers:
            bag["request.useragent"] = headers["user-agent"]
        if "referer" in headers:
            bag["request.referer"] = headers["referer"]
    else:
        bag["context.protocol"] = "tcp"
    return bag


def _peer_user(common: accesslog_pb2.AccessLogCommon) -> str:
    for san in common.tls_properties.peer_certificate_properties.subject_alt_name:
        if san.uri:
            return san.uri
    return ""


def _common(bag: Bag, common: accesslog_pb2.AccessLogCommon) -> None:
    _peer(bag, "source", common.downstream_remote_address)
    _peer(bag, "destination", common.downstream_local_address)
    user = _peer_user(common)
    if user:
        bag["source.user"] = user
    # A request the check denied never reached a cluster; the check's dynamic metadata (which
    # the client returns to Envoy, see server.Verdict) still names where it was going.
    checked = common.metadata.filter_metadata.get(AUTHZ_METADATA)
    checked_service = ""
    if checked is not None and DESTINATION_SERVICE in checked.fields:
        checked_service = checked.fields[DESTINATION_SERVICE].string_value
    _destination_service(bag, common.custom_tags, common.upstream_cluster, checked_service)
    if common.HasField("start_time"):
        bag["request.time"] = _time(common.start_time)
        bag["context.time"] = bag["request.time"]


def http_report_bag(entry: accesslog_pb2.HTTPAccessLogEntry) -> Bag:
    """The attributes Mixer's Report gets for one HTTP request Envoy logged."""
    bag: Bag = {"context.protocol": "http"}
    common = entry.common_properties
    _common(bag, common)
    request, response = entry.request, entry.response
    headers = dict(request.request_headers)
    if request.request_id:
        headers.setdefault("x-request-id", request.request_id)
        bag["request.id"] = request.request_id
    if request.user_agent:
        headers.setdefault("user-agent", request.user_agent)
        bag["request.useragent"] = request.user_agent
    if request.referer:
        headers.setdefault("referer", request.referer)
        bag["request.referer"] = request.referer
    bag["request.headers"] = headers
    bag["request.path"] = request.path
    bag["request.host"] = request.authority
    bag["request.method"] = _method_name(request.request_method)
    if request.scheme:
        bag["request.scheme"] = request.scheme
    bag["request.size"] = int(request.request_body_bytes)
    if response.HasField("response_code"):
        bag["response.code"] = int(response.response_code.value)
    bag["response.size"] = int(response.response_body_bytes)
    if response.response_headers:
        bag["response.headers"] = dict(response.response_headers)
    if common.HasField("time_to_last_downstream_tx_byte"):
        duration = _duration(common.time_to_last_downstream_tx_byte)
        bag["response.duration"] = duration
        if "request.time" in bag:
            bag["response.time"] = bag["request.time"] + duration
    return bag


def tcp_report_bag(entry: accesslog_pb2.TCPAccessLogEntry) -> Bag:
    """The attributes Mixer's Report gets for one TCP connection Envoy logged (at its close)."""
    bag: Bag = {"context.protocol": "tcp"}
    common = entry.common_properties
    _common(bag, common)
    received = int(entry.connection_properties.received_bytes)
    sent = int(entry.connection_properties.sent_bytes)
    # One report per connection: the per-report and the running totals are equal.
    bag["connection.received.bytes"] = received
    bag["connection.received.bytes_total"] = received
    bag["connection.sent.bytes"] = sent
    bag["connection.sent.bytes_total"] = sent
    if common.HasField("duration"):
        bag["connection.duration"] = _duration(common.duration)
    if common.stream_id:
        bag["connection.id"] = common.stream_id
    return bag


def _method_name(value: int) -> str:
    name = base_pb2.RequestMethod.Name(value)
    return "" if name == "METHOD_UNSPECIFIED" else name
