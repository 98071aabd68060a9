"""State-of-the-world requests on the wire: the names fingerprint, and ACKs that never read the
names they repeat."""

from __future__ import annotations

from collections.abc import Iterator

import hypothesis.strategies as st
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2
from hypothesis import given

from meshfed.pilot import xds_types as T
from meshfed.pilot.watch import RequestKind, TypeWatch
from meshfed.pilot.wire import names_key, parse_sotw

NAMES = [f"outbound|80||svc-{i}.bench.svc.cluster.local" for i in range(50)]


def request(**fields: object) -> bytes:
    return discovery_pb2.DiscoveryRequest(type_url=T.ENDPOINT, **fields).SerializeToString()  # type: ignore[arg-type]


def test_the_key_ignores_version_nonce_node_and_error_but_not_the_names() -> None:
    first = parse_sotw(request(resource_names=NAMES, node=base_pb2.Node(id="a~b~c~d")))
    ack = parse_sotw(request(resource_names=NAMES, version_info="v7", response_nonce="42"))
    nack = parse_sotw(
        request(
            resource_names=NAMES,
            version_info="v7",
            response_nonce="43",
            error_detail=status_pb2.Status(code=3, message="bad cluster"),
        )
    )
    assert first.names_key is not None
    assert first.names_key == ack.names_key == nack.names_key
    assert ack.message.response_nonce == "42" and list(ack.message.resource_names) == NAMES
    fewer = parse_sotw(request(resource_names=NAMES[1:], response_nonce="44"))
    reordered = parse_sotw(request(resource_names=NAMES[::-1], response_nonce="44"))
    none = parse_sotw(request(response_nonce="45"))
    keys = {ack.names_key, fewer.names_key, reordered.names_key, none.names_key}
    assert len(keys) == 4


def test_a_request_not_laid_out_in_field_order_gets_no_key() -> None:
    # The type URL written before the names: legal protobuf, not what a library writes.
    out_of_order = (
        discovery_pb2.DiscoveryRequest(type_url=T.ENDPOINT).SerializeToString()
        + discovery_pb2.DiscoveryRequest(resource_names=NAMES).SerializeToString()
    )
    parsed = parse_sotw(out_of_order)
    assert list(parsed.message.resource_names) == NAMES
    assert parsed.names_key is None
    # Unknown fields after the known ones.
    unknown = request(resource_names=NAMES) + b"\xa2\x06\x01x"  # field 100, "x"
    assert parse_sotw(unknown).names_key is None


@given(
    st.lists(st.text(max_size=12), max_size=6),
    st.lists(st.text(max_size=12), max_size=6),
    st.text(max_size=8),
    st.text(max_size=8),
    st.booleans(),
)
def test_keys_are_equal_exactly_when_the_names_are(
    a: list[str], b: list[str], nonce_a: str, nonce_b: str, node: bool
) -> None:
    extra = {"node": base_pb2.Node(id=nonce_a)} if node else {}
    ra = parse_sotw(
        request(resource_names=a, response_nonce=nonce_a, version_info=nonce_b, **extra)
    )
    rb = parse_sotw(request(resource_names=b, response_nonce=nonce_b))
    assert ra.names_key is not None and rb.names_key is not None
    assert (ra.names_key == rb.names_key) == (a == b)


@given(st.binary(max_size=64))
def test_hostile_bytes_give_a_key_or_none_never_an_error(data: bytes) -> None:
    try:
        message = discovery_pb2.DiscoveryRequest.FromString(data)
    except Exception:
        return  # gRPC answers a request it cannot parse itself
    names_key(data, message)


class Untouchable:
    """Names that fail the test if they are read."""

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("the names of a repeated subscription were read")


def test_an_ack_with_the_same_key_does_not_read_its_names() -> None:
    watch = TypeWatch(T.ENDPOINT)
    first = parse_sotw(request(resource_names=NAMES))
    kind, names = watch.on_request(
        "", names=first.message.resource_names, names_key=first.names_key
    )
    assert kind is RequestKind.INITIAL and names == set(NAMES)
    watch.sent_nonce, watch.sent_version = "1", "v1"
    ack = parse_sotw(request(resource_names=NAMES, response_nonce="1", version_info="v1"))
    kind, names = watch.on_request(
        "1", version_info="v1", names=Untouchable(), names_key=ack.names_key
    )
    assert kind is RequestKind.ACK and names == set() and watch.acked_version == "v1"
    assert watch.subscribed == set(NAMES)
    # A changed subscription is read in full, as before.
    watch.sent_nonce = "2"
    grown = parse_sotw(request(resource_names=[*NAMES, "extra"], response_nonce="2"))
    kind, names = watch.on_request(
        "2", names=grown.message.resource_names, names_key=grown.names_key
    )
    assert kind is RequestKind.ACK and names == {"extra"}
    assert watch.subscribed == {*NAMES, "extra"}
    # Without a key (a request in another layout) the names are compared as before.
    watch.sent_nonce = "3"
    kind, names = watch.on_request("3", names=[*NAMES, "extra"], names_key=None)
    assert names == set() and watch.subscribed == {*NAMES, "extra"}
    # ...and that None never matches a later key by accident.
    watch.sent_nonce = "4"
    shrunk = parse_sotw(request(resource_names=NAMES[:1], response_nonce="4"))
    kind, names = watch.on_request(
        "4", names=shrunk.message.resource_names, names_key=shrunk.names_key
    )
    assert watch.subscribed == {NAMES[0]}
