"""ADS requests as they arrive on the wire, each with a fingerprint of the names it repeats.

Why: a state-of-the-world request names the proxy's whole subscription, and Envoy repeats it on
every ACK: an EDS ACK at 50,000 services names 50,000 clusters. Turning those names into Python
strings and a set to learn that nothing changed cost far more than the change being ACKed
(25 ms per ACK at 50,000 services, once per proxy per push). The bytes that carry the names are
already in hand when gRPC hands over the request, so this module hashes them as they are, and
the watch compares hashes: an ACK that repeats its subscription costs one pass of a C hash over
those bytes and no Python object per name.

Promises:
- :func:`names_key` returns a digest of the encoded ``resource_names`` of a serialized
  ``DiscoveryRequest``, the same for two requests exactly when their encoded names are the same
  (whatever their version, nonce or error), or ``None`` when the request is not laid out the way
  a protobuf library writes one (fields in number order, no unknown fields): the caller then
  compares the names themselves. A false ``None`` costs time, never a wrong answer.
- :func:`add_to_server` serves an ADS servicer with these requests on state-of-the-world streams
  (as :class:`Received`); delta streams are parsed as usual (their ACKs name nothing).
"""

from __future__ import annotations

import hashlib
from typing import Any

import attrs
import grpc
from envoy.service.discovery.v3 import discovery_pb2

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"

# Field numbers of DiscoveryRequest: 1 version_info, 2 node, 3 resource_names, 4 type_url,
# 5 response_nonce, 6 error_detail, 7 resource_locators.
_NAMES_FIELD = 3
_LENGTH_DELIMITED = 2


@attrs.frozen(slots=True)
class Received:
    """A state-of-the-world request and the fingerprint of the names it carries."""

    message: discovery_pb2.DiscoveryRequest
    names_key: bytes | None


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """The varint at ``at`` and the offset after it; ValueError past the end."""
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _names_start(data: bytes) -> int | None:
    """Where the names begin: past fields 1 and 2, which come first when fields are written in
    number order. Only a few varints are read, whatever the number of names."""
    at = 0
    while at < len(data):
        tag, after = _varint(data, at)
        field, wire = tag >> 3, tag & 7
        if field >= _NAMES_FIELD:
            return at
        if wire != _LENGTH_DELIMITED:
            return None
        length, after = _varint(data, after)
        at = after + length
    return at


def names_key(data: bytes, message: discovery_pb2.DiscoveryRequest) -> bytes | None:
    """A digest of the encoded names of ``data`` (the serialized ``message``), or ``None``."""
    if message.resource_locators:
        return None
    try:
        start = _names_start(data)
    except ValueError:
        return None
    if start is None:
        return None
    # What follows the names, as written by any protobuf library: fields 4-6 in number order.
    rest = discovery_pb2.DiscoveryRequest(
        type_url=message.type_url, response_nonce=message.response_nonce
    )
    if message.HasField("error_detail"):
        rest.error_detail.CopyFrom(message.error_detail)
    tail = rest.SerializeToString()
    end = len(data) - len(tail)
    if end < start or not data.endswith(tail):
        return None
    view = memoryview(data)[start:end]
    if view and view[0] != (_NAMES_FIELD << 3 | _LENGTH_DELIMITED):
        return None
    return hashlib.sha1(view, usedforsecurity=False).digest()


def parse_sotw(data: bytes) -> Received:
    """The request deserializer of state-of-the-world streams."""
    message = discovery_pb2.DiscoveryRequest.FromString(data)
    return Received(message, names_key(data, message))


def add_to_server(servicer: Any, server: Any) -> None:
    """Serve ``servicer``'s two ADS methods on ``server`` (a ``grpc.aio`` server)."""
    handlers = {
        "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
            servicer.StreamAggregatedResources,
            request_deserializer=parse_sotw,
            response_serializer=discovery_pb2.DiscoveryResponse.SerializeToString,
        ),
        "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
            servicer.DeltaAggregatedResources,
            request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
            response_serializer=discovery_pb2.DeltaDiscoveryResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
