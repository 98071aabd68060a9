"""State-of-the-world requests on the wire: names kept as shared bytes, repeated ACKs parsed
without their names, and the same answers as a full parse whatever the bytes."""

from __future__ import annotations

from collections.abc import Iterator

import hypothesis.strategies as st
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from hypothesis import given

from meshfed.pilot import xds_types as T
from meshfed.pilot.ads import DiscoveryServer
from meshfed.pilot.cache import ConfigCache
from meshfed.pilot.watch import RequestKind, TypeWatch
from meshfed.pilot.wire import Received
from meshfed.registry.aggregate import AggregateRegistry
from meshfed.registry.model import Endpoint, Port, Protocol, Service

NAMES = [f"outbound|80||svc-{i}.bench.svc.cluster.local" for i in range(50)]


def request(**fields: object) -> bytes:
    values: dict = {"type_url": T.ENDPOINT, **fields}
    return discovery_pb2.DiscoveryRequest(**values).SerializeToString()


def test_names_are_shared_bytes_whatever_the_version_nonce_node_or_error() -> None:
    first = Received(request(resource_names=NAMES, node=base_pb2.Node(id="a~b~c~d")))
    ack = Received(request(resource_names=NAMES, version_info="v7", response_nonce="42"))
    error = status_pb2.Status(code=3, message="bad cluster")
    nack = Received(request(resource_names=NAMES, response_nonce="43", error_detail=error))
    held = first.encoded_names()
    assert held is not None
    assert ack.encoded_names() is held and nack.encoded_names() is held
    fewer = Received(request(resource_names=NAMES[1:])).encoded_names()
    reordered = Received(request(resource_names=NAMES[::-1])).encoded_names()
    none = Received(request()).encoded_names()
    assert len({id(held), id(fewer), id(reordered), id(none)}) == 4


def test_a_repeat_is_parsed_without_its_names_into_the_other_fields() -> None:
    held = Received(request(resource_names=NAMES)).encoded_names()
    assert held is not None
    error = status_pb2.Status(code=3, message="bad cluster")
    data = request(resource_names=NAMES, version_info="v7", response_nonce="42", error_detail=error)
    message = Received(data).repeating(held)
    assert message is not None
    assert list(message.resource_names) == []  # not parsed: the caller knows them
    full = Received(data).message
    del full.resource_names[:]
    assert message == full
    # Not a repeat: one name more (after, before), one fewer, another order.
    for names in ([*NAMES, "x"], ["x", *NAMES], NAMES[:-1], NAMES[::-1]):
        assert Received(request(resource_names=names)).repeating(held) is None


def test_names_outside_one_run_are_never_taken_for_a_repeat() -> None:
    held = Received(request(resource_names=NAMES)).encoded_names()
    assert held is not None
    # The same names, then the type URL, then one more name: legal protobuf, not the same.
    split = (
        request(resource_names=NAMES)
        + discovery_pb2.DiscoveryRequest(resource_names=["late"]).SerializeToString()
    )
    assert Received(split).repeating(held) is None
    assert Received(split).encoded_names() is None
    assert list(Received(split).message.resource_names) == [*NAMES, "late"]
    # The type URL first: no run where a library would write it.
    out_of_order = (
        discovery_pb2.DiscoveryRequest(type_url=T.ENDPOINT).SerializeToString()
        + discovery_pb2.DiscoveryRequest(resource_names=NAMES).SerializeToString()
    )
    assert Received(out_of_order).repeating(held) is None


# Long names too: past 127 UTF-8 bytes a name's length takes two bytes on the wire.
names_lists = st.lists(st.text(max_size=12) | st.text(min_size=40, max_size=60), max_size=6)


@given(names_lists, names_lists, st.text(max_size=8), st.booleans())
def test_a_repeat_is_recognised_exactly_when_the_names_are_the_same(
    a: list[str], b: list[str], nonce: str, node: bool
) -> None:
    extra = {"node": base_pb2.Node(id=nonce)} if node else {}
    held = Received(request(resource_names=a, **extra)).encoded_names()
    assert held is not None
    later = request(resource_names=b, response_nonce=nonce, version_info=nonce)
    message = Received(later).repeating(held)
    assert (message is not None) == (a == b)
    if message is not None:
        assert message.response_nonce == nonce and message.version_info == nonce


@given(st.binary(max_size=64), names_lists)
def test_hostile_bytes_give_the_full_parse_or_none_never_another_answer(
    data: bytes, names: list[str]
) -> None:
    held = Received(request(resource_names=names)).encoded_names()
    assert held is not None
    received = Received(data)
    try:
        full = received.message
    except DecodeError:
        assert received.repeating(held) is None
        return  # gRPC answers a request it cannot parse
    repeat = received.repeating(held)
    if repeat is not None:
        assert list(full.resource_names) == names
        del full.resource_names[:]
        assert repeat == full
    encoded = received.encoded_names()
    if encoded is not None:
        assert Received(request(resource_names=full.resource_names)).encoded_names() is encoded


class Untouchable:
    """Names that fail the test if they are read."""

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("the names of a repeated subscription were read")


def test_an_ack_with_the_same_names_does_not_read_them() -> None:
    watch = TypeWatch(T.ENDPOINT)
    first = Received(request(resource_names=NAMES))
    held = first.encoded_names()
    kind, names = watch.on_request("", names=first.message.resource_names, names_key=held)
    assert kind is RequestKind.INITIAL and names == set(NAMES)
    watch.sent_nonce, watch.sent_version = "1", "v1"
    kind, names = watch.on_request("1", version_info="v1", names=Untouchable(), names_key=held)
    assert kind is RequestKind.ACK and names == set() and watch.acked_version == "v1"
    assert watch.subscribed == set(NAMES)
    # A changed subscription is read in full, as before.
    watch.sent_nonce = "2"
    grown = Received(request(resource_names=[*NAMES, "extra"], response_nonce="2"))
    kind, names = watch.on_request(
        "2", names=grown.message.resource_names, names_key=grown.encoded_names()
    )
    assert kind is RequestKind.ACK and names == {"extra"}
    assert watch.subscribed == {*NAMES, "extra"}
    # Without encoded names (a request in another layout) the names are compared as before.
    watch.sent_nonce = "3"
    kind, names = watch.on_request("3", names=[*NAMES, "extra"], names_key=None)
    assert names == set() and watch.subscribed == {*NAMES, "extra"}
    watch.sent_nonce = "4"
    shrunk = Received(request(resource_names=NAMES[:1], response_nonce="4"))
    watch.on_request("4", names=shrunk.message.resource_names, names_key=shrunk.encoded_names())
    assert watch.subscribed == {NAMES[0]}


def _stream_server() -> DiscoveryServer:
    agg = AggregateRegistry()
    member = agg.add_member("m")
    for i in range(4):
        host = f"s{i}.default.svc.cluster.local"
        member.put_service(
            Service(host, ports=(Port(80, "http", Protocol.HTTP),)),
            [Endpoint(f"10.0.{i}.1", {"http": 8080})],
        )
    cache = ConfigCache(agg)
    cache.rebuild()
    return DiscoveryServer(cache)


def test_a_stream_of_bytes_gets_what_a_stream_of_parsed_requests_gets() -> None:
    """The same requests, once as messages and once as bytes (repeats, a CDS request naming
    the EDS names, a shrunk subscription, a NACK): the same responses and the same state."""
    server = _stream_server()
    node = base_pb2.Node(id="sidecar~127.0.0.2~a.default~x")
    plain = server._open(node, False, "plain")
    wired = server._open(node, False, "wired")

    def both(**fields: object) -> list[tuple[str, list[bytes], str]]:
        out = []
        for conn, wrap in ((plain, lambda d: discovery_pb2.DiscoveryRequest.FromString(d)),
                           (wired, Received)):  # fmt: skip
            conn.on_request(wrap(discovery_pb2.DiscoveryRequest(**fields).SerializeToString()))
            out.append(
                [(r.type_url, [x.value for x in r.resources], r.version_info)
                 for r in conn.take_responses()]
            )  # fmt: skip
        assert out[0] == out[1]
        return out[1]

    both(node=node, type_url=T.CLUSTER)
    names = sorted(plain.watch(T.CLUSTER).sent)
    assert len(names) == 4
    both(type_url=T.ENDPOINT, resource_names=names)
    for _ in range(3):  # ACKs that repeat the subscription; one with the EDS names under CDS
        for type_url in (T.CLUSTER, T.ENDPOINT):
            w = plain.watch(type_url)
            both(
                type_url=type_url,
                version_info=w.sent_version,
                response_nonce=w.sent_nonce,
                resource_names=names if type_url == T.ENDPOINT else [],
            )
    w = plain.watch(T.ENDPOINT)
    both(type_url=T.ENDPOINT, response_nonce=w.sent_nonce, resource_names=names[:2])
    error = status_pb2.Status(code=3, message="bad")
    both(type_url=T.ENDPOINT, response_nonce=w.sent_nonce, resource_names=names[:2],
         error_detail=error)  # fmt: skip
    # A CDS request naming exactly the EDS names: read as CDS names, not as an EDS repeat.
    both(
        type_url=T.CLUSTER,
        resource_names=names[:2],
        response_nonce=plain.watch(T.CLUSTER).sent_nonce,
    )
    for type_url in (T.CLUSTER, T.ENDPOINT):
        a, b = plain.watch(type_url), wired.watch(type_url)
        assert a.subscribed == b.subscribed and a.wildcard == b.wildcard
        assert (a.acked_version, a.status, a.sent) == (b.acked_version, b.status, b.sent)
    assert wired.watch(T.ENDPOINT).subscribed == set(names[:2])
