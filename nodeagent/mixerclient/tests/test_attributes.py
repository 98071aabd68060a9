"""Envoy's ext_authz and access-log messages become Istio 0.2 attribute bags."""

from __future__ import annotations

import datetime as dt
import ipaddress

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.auth.v3 import external_auth_pb2

from meshfed.mixer.attributes import codec
from meshfed.nodeagent.mixerclient.attributes import (
    check_bag,
    http_report_bag,
    http_status_for,
    tcp_report_bag,
)

WEB = "web.default.svc.cluster.local"
SPIFFE = "spiffe://cluster.local/ns/default/sa/client"


def sock(ip: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=ip, port_value=port)
    )


def http_check() -> external_auth_pb2.CheckRequest:
    req = external_auth_pb2.CheckRequest()
    ctx = req.attributes
    ctx.source.address.CopyFrom(sock("127.0.0.2", 40000))
    ctx.source.principal = SPIFFE
    ctx.destination.address.CopyFrom(sock("127.0.0.11", 9080))
    ctx.context_extensions["destination.service"] = WEB
    ctx.request.time.FromDatetime(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    http = ctx.request.http
    http.method, http.path, http.host, http.scheme, http.id = "GET", "/a?b=1", WEB, "http", "r-1"
    http.size = 12
    http.headers.update(
        {":authority": WEB, ":path": "/a?b=1", "x-user": "ann", "user-agent": "curl/8"}
    )
    return req


def test_http_check_bag() -> None:
    bag = check_bag(http_check())
    assert bag["source.ip"] == ipaddress.ip_address("127.0.0.2")
    assert bag["source.port"] == 40000
    assert bag["source.user"] == SPIFFE
    assert bag["destination.ip"] == ipaddress.ip_address("127.0.0.11")
    assert bag["destination.port"] == 9080
    assert bag["destination.service"] == WEB
    assert bag["context.protocol"] == "http"
    assert bag["request.headers"] == {"x-user": "ann", "user-agent": "curl/8"}
    assert (bag["request.path"], bag["request.host"], bag["request.method"]) == (
        "/a?b=1",
        WEB,
        "GET",
    )
    assert bag["request.size"] == 12 and bag["request.id"] == "r-1"
    assert bag["request.useragent"] == "curl/8"
    assert bag["request.time"] == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    # the bag survives Mixer's wire form with its types
    decoded = codec.decode(codec.encode(bag))
    assert decoded["source.ip"] == ipaddress.ip_address("127.0.0.2").packed
    assert decoded["request.headers"]["x-user"] == "ann"
    assert decoded["request.time"] == bag["request.time"]


def test_tcp_check_bag_has_no_request_attributes() -> None:
    req = external_auth_pb2.CheckRequest()
    req.attributes.source.address.CopyFrom(sock("127.0.0.3", 5555))
    req.attributes.destination.address.CopyFrom(sock("127.0.0.12", 5432))
    bag = check_bag(req)
    assert bag["context.protocol"] == "tcp"
    assert not any(k.startswith("request.") for k in bag)
    assert "destination.service" not in bag  # Mixer derives it from destination.ip
    assert "source.user" not in bag


def test_http_report_bag() -> None:
    entry = accesslog_pb2.HTTPAccessLogEntry()
    common = entry.common_properties
    common.downstream_remote_address.CopyFrom(sock("127.0.0.2", 40000))
    common.downstream_local_address.CopyFrom(sock("127.0.0.11", 9080))
    common.custom_tags["destination.service"] = WEB
    common.tls_properties.peer_certificate_properties.subject_alt_name.add(uri=SPIFFE)
    common.start_time.FromDatetime(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    common.time_to_last_downstream_tx_byte.FromMilliseconds(25)
    entry.request.request_method = base_pb2.POST
    entry.request.path, entry.request.authority = "/x", WEB
    entry.request.request_id, entry.request.user_agent = "r-2", "curl/8"
    entry.request.request_body_bytes = 5
    entry.request.request_headers["content-type"] = "text/plain"
    entry.response.response_code.value = 404
    entry.response.response_body_bytes = 9
    bag = http_report_bag(entry)
    assert bag["response.code"] == 404 and bag["response.size"] == 9
    assert bag["response.duration"] == dt.timedelta(milliseconds=25)
    assert bag["response.time"] == dt.datetime(2026, 1, 1, 0, 0, 0, 25000, tzinfo=dt.UTC)
    assert bag["request.method"] == "POST" and bag["request.size"] == 5
    assert bag["request.headers"] == {
        "content-type": "text/plain",
        "x-request-id": "r-2",
        "user-agent": "curl/8",
    }
    assert bag["source.user"] == SPIFFE
    assert bag["destination.service"] == WEB
    assert bag["context.protocol"] == "http"
    assert codec.encode_batches([bag, bag])  # encodable as a delta batch


def test_a_gateway_entry_names_the_service_from_its_upstream_cluster() -> None:
    entry = accesslog_pb2.HTTPAccessLogEntry()
    entry.common_properties.upstream_cluster = f"outbound|80|v1|{WEB}"
    assert http_report_bag(entry)["destination.service"] == WEB
    entry.common_properties.upstream_cluster = "inbound|9080||"
    assert "destination.service" not in http_report_bag(entry)


def test_tcp_report_bag() -> None:
    entry = accesslog_pb2.TCPAccessLogEntry()
    entry.common_properties.downstream_remote_address.CopyFrom(sock("127.0.0.3", 5555))
    entry.common_properties.duration.FromMilliseconds(1500)
    entry.connection_properties.received_bytes = 10
    entry.connection_properties.sent_bytes = 20
    bag = tcp_report_bag(entry)
    assert bag["context.protocol"] == "tcp"
    assert bag["connection.received.bytes"] == 10 and bag["connection.sent.bytes"] == 20
    assert bag["connection.duration"] == dt.timedelta(seconds=1.5)
    assert bag["source.ip"] == ipaddress.ip_address("127.0.0.3")


def test_grpc_codes_map_to_http_statuses() -> None:
    assert http_status_for(7) == 403
    assert http_status_for(8) == 429
    assert http_status_for(14) == 503
    assert http_status_for(16) == 401
    assert http_status_for(99) == 500
