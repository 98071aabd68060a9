"""ADS requests as they arrive on the wire, parsed only as far as the answer needs.

Why: a state-of-the-world request names the proxy's whole subscription, and Envoy repeats it on
every ACK: an EDS ACK at 50,000 services names 50,000 clusters (2.4 MB). Parsing those names
(even in C) and comparing them with the last ones cost more than the change being ACKed, once
per proxy per push. An ACK that repeats its subscription carries, byte for byte, the names the
stream sent before; this module keeps those bytes (once, whichever streams send them) and
recognises a repetition with one ``memcmp``, parsing only the few fields around the names.

Promises:
- :class:`Received` is a serialized ``DiscoveryRequest``; ``message`` parses it in full.
- ``Received.repeating(names)`` returns the request without its names, parsed, exactly when
  its encoded names are the bytes of ``names`` (an :class:`EncodedNames` that an earlier
  request produced); any other layout, more or fewer names, names elsewhere in the message:
  ``None``, and the caller parses in full. The fields it returns are those a full parse gives.
- ``Received.encoded_names()`` returns the request's names as :class:`EncodedNames` when they
  are one run of field-3 entries (how every protobuf library writes them), else ``None``.
  Equal bytes give the same object, shared by every stream that sends them, held only while
  some stream holds it. A ``None`` costs time, never a wrong answer.
- :func:`add_to_server` serves an ADS servicer with :class:`Received` requests on
  state-of-the-world streams; delta streams are parsed as usual (their ACKs name nothing).
"""

from __future__ import annotations

import hashlib
import weakref
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import DecodeError

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"

# Field numbers of DiscoveryRequest: 1 version_info, 2 node, 3 resource_names, 4 type_url,
# 5 response_nonce, 6 error_detail, 7 resource_locators.
_NAMES_FIELD = 3
_LENGTH_DELIMITED = 2
_NAMES_TAG = _NAMES_FIELD << 3 | _LENGTH_DELIMITED


class EncodedNames:
    """The encoded ``resource_names`` of a request, shared by every stream that sends them."""

    __slots__ = ("__weakref__", "data")

    def __init__(self, data: bytes) -> None:
        self.data = data


_SHARED: weakref.WeakValueDictionary[bytes, EncodedNames] = weakref.WeakValueDictionary()


def shared_names(data: bytes) -> EncodedNames:
    """The one :class:`EncodedNames` for ``data``."""
    digest = hashlib.sha1(data, usedforsecurity=False).digest()
    found = _SHARED.get(digest)
    if found is not None and found.data == data:
        return found
    created = EncodedNames(data)
    if found is None:  # a digest collision keeps the first one shared and this one private
        _SHARED[digest] = created
    return created


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


def _varint_size(value: int) -> int:
    size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


def _names_start(data: bytes) -> int | None:
    """Where the names begin: past fields 1 and 2, which come first when fields are written in
    number order. Only a few varints are read, whatever the number of names."""
    at = 0
    try:
        while at < len(data):
            tag, after = _varint(data, at)
            field, wire = tag >> 3, tag & 7
            if field >= _NAMES_FIELD:
                return at
            if wire != _LENGTH_DELIMITED:
                return None
            length, after = _varint(data, after)
            at = after + length
    except ValueError:
        return None
    return at if at == len(data) else None


class Received:
    """A serialized state-of-the-world request, parsed on demand."""

    __slots__ = ("_message", "data")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._message: discovery_pb2.DiscoveryRequest | None = None

    @property
    def message(self) -> discovery_pb2.DiscoveryRequest:
        """The whole request (DecodeError when it is not one)."""
        if self._message is None:
            self._message = discovery_pb2.DiscoveryRequest.FromString(self.data)
        return self._message

    def repeating(self, names: EncodedNames) -> discovery_pb2.DiscoveryRequest | None:
        """The request with its names left unparsed, when they are exactly ``names``."""
        data = self.data
        start = _names_start(data)
        if start is None:
            return None
        end = start + len(names.data)
        if end > len(data) or not data.startswith(names.data, start):
            return None
        if data[end : end + 1] == bytes((_NAMES_TAG,)):
            return None  # more names follow
        try:
            head = discovery_pb2.DiscoveryRequest.FromString(data[:start])
            tail = discovery_pb2.DiscoveryRequest.FromString(data[end:])
        except DecodeError:
            return None
        if head.resource_names or tail.resource_names:
            return None
        head.MergeFrom(tail)  # what a full parse gives: later fields win, lists concatenate
        return head

    def encoded_names(self) -> EncodedNames | None:
        """This request's names as bytes when they form one run of entries, else None."""
        message = self.message
        start = _names_start(self.data)
        if start is None:
            return None
        # Each entry is a tag byte, a varint length and the UTF-8 bytes: the names fill
        # exactly ``size`` bytes, so a region of that size holding all of them holds nothing else.
        lengths = [len(name.encode()) for name in message.resource_names]
        size = (
            sum(lengths) + 2 * len(lengths) + sum(_varint_size(n) - 1 for n in lengths if n > 0x7F)
        )
        end = start + size
        region = self.data[start:end]
        if size and region[0] != _NAMES_TAG:
            return None
        try:
            head = discovery_pb2.DiscoveryRequest.FromString(self.data[:start])
            tail = discovery_pb2.DiscoveryRequest.FromString(self.data[end:])
        except DecodeError:
            return None
        if head.resource_names or tail.resource_names:
            return None  # some names are outside the run
        return shared_names(region)


def add_to_server(servicer: Any, server: Any) -> None:
    """Serve ``servicer``'s two ADS methods on ``server`` (a ``grpc.aio`` server)."""
    handlers = {
        "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
            servicer.StreamAggregatedResources,
            request_deserializer=Received,
            response_serializer=discovery_pb2.DiscoveryResponse.SerializeToString,
        ),
        "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
            servicer.DeltaAggregatedResources,
            request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
            response_serializer=discovery_pb2.DeltaDiscoveryResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
