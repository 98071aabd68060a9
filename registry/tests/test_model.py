"""The model canonicalises: equal content in any order gives equal, hashable objects."""

import pytest

from meshfed.registry import Endpoint, Labels, Locality, Port, PortMap, Protocol, Service
from meshfed.registry.model import parse_spiffe_id, spiffe_id


def test_labels_are_order_independent_and_hashable():
    a = Labels({"version": "v1", "app": "web"})
    b = Labels([("app", "web"), ("version", "v1")])
    assert a == b
    assert hash(a) == hash(b)
    assert dict(a) == {"app": "web", "version": "v1"}
    assert a.matches({"app": "web"})
    assert not a.matches({"app": "db"})


def test_labels_merged_keeps_own_values():
    merged = Labels({"app": "web"}).merged({"app": "other", "team": "x"})
    assert dict(merged) == {"app": "web", "team": "x"}


def test_service_ports_sorted_so_order_does_not_matter():
    p1, p2 = Port(9090, "metrics"), Port(80, "http", Protocol.HTTP)
    a = Service("web.ns.svc.cluster.local", ports=[p1, p2])
    b = Service("web.ns.svc.cluster.local", ports=(p2, p1))
    assert a == b
    assert a.ports[0] == p2
    assert a.port("metrics") == p1
    assert a.port_by_number(80) == p2


def test_endpoint_target_port_defaults_to_service_port():
    ep = Endpoint("127.0.0.2", ports={"http": 8080})
    assert ep.target_port(Port(80, "http")) == 8080
    assert ep.target_port(Port(9090, "metrics")) == 9090
    assert ep.ports == PortMap([("http", 8080)])


def test_endpoint_key_identifies_same_endpoint_across_updates():
    a = Endpoint("127.0.0.2", ports={"http": 80}, registry="static", healthy=True)
    b = Endpoint("127.0.0.2", ports={"http": 80}, registry="static", healthy=False)
    assert a.key == b.key
    assert a != b


def test_protocol_parse():
    assert Protocol.parse("http2") is Protocol.HTTP2
    assert Protocol.parse(" grpc ") is Protocol.GRPC
    assert Protocol.parse("https") is Protocol.TLS
    assert Protocol.GRPC.is_http and not Protocol.MONGO.is_http
    with pytest.raises(ValueError):
        Protocol.parse("smtp")


def test_spiffe_round_trip():
    value = spiffe_id("example.org", "shop", "cart")
    assert value == "spiffe://example.org/ns/shop/sa/cart"
    assert parse_spiffe_id(value) == ("example.org", "shop", "cart")
    for bad in (
        "http://x/ns/a/sa/b",
        "spiffe://x/ns/a",
        "spiffe:///ns/a/sa/b",
        "spiffe://x/ns//sa/b",
    ):
        with pytest.raises(ValueError):
            parse_spiffe_id(bad)


def test_locality_str():
    assert str(Locality("us-east", "a")) == "us-east/a"
    assert str(Locality()) == "-"
