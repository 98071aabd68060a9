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
from meshfed.pilot.watch import RequestKind, TypeWatch
from meshfed.pilot.wire import Received

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
