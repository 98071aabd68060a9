"""TCP route rules: one filter chain per distinct subnet match, precedence decides duplicates."""

from __future__ import annotations

import attrs
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshfed.pilot.config.model import L4Fault, Match, RouteRule, ServiceRef, WeightedDestination
from meshfed.pilot.config.store import ConfigSnapshot
from meshfed.pilot.node import ProxyNode
from meshfed.pilot.translate import listeners as tl
from meshfed.pilot.translate.tcp_rules import apply_tcp_rules
from meshfed.pilot.translate.traffic import TrafficIndex
from meshfed.registry.model import Port, Protocol, Service

HOST = "db.default.svc.cluster.local"
SERVICE = Service(HOST, ports=(Port(5432, "tcp", Protocol.TCP),))


def rule(name: str, precedence: int, version: str, subnets: tuple[str, ...] = ()) -> RouteRule:
    return RouteRule(
        name,
        "default",
        "r.yaml",
        ServiceRef(name="db"),
        precedence,
        Match(source_subnets=subnets),
        (WeightedDestination({"version": version}),),
    )


def proxy_of(chain) -> tcp_proxy_pb2.TcpProxy:  # type: ignore[no-untyped-def]
    out = tcp_proxy_pb2.TcpProxy()
    chain.filters[-1].typed_config.Unpack(out)
    return out


def test_chains_per_subnet_with_precedence_and_default() -> None:
    rules = [
        rule("a", 5, "v2", ("10.1.0.0/16",)),
        rule("b", 3, "v3", ("10.1.0.0/16",)),  # same match, lower precedence: no chain
        rule("c", 1, "v1"),
    ]
    index = TrafficIndex.build(ConfigSnapshot.of(rules), [SERVICE])
    (listener,), _ = tl.outbound_tcp_listeners(ProxyNode(id="p", ip="127.0.0.2"), [SERVICE])
    out = apply_tcp_rules(listener, index)
    assert [c.name for c in out.filter_chains] == ["RouteRule default/a", "RouteRule default/c"]
    first = out.filter_chains[0]
    cidr = first.filter_chain_match.source_prefix_ranges[0]
    assert (cidr.address_prefix, cidr.prefix_len.value) == ("10.1.0.0", 16)
    assert proxy_of(first).cluster == f"outbound|5432|version=v2|{HOST}"
    assert proxy_of(out.filter_chains[1]).cluster == f"outbound|5432|version=v1|{HOST}"


def test_without_a_catch_all_rule_the_service_cluster_is_the_default() -> None:
    index = TrafficIndex.build(ConfigSnapshot.of([rule("a", 1, "v2", ("10.0.0.1/32",))]), [SERVICE])
    (listener,), _ = tl.outbound_tcp_listeners(ProxyNode(id="p", ip="127.0.0.2"), [SERVICE])
    out = apply_tcp_rules(listener, index)
    assert proxy_of(out.filter_chains[-1]).cluster == f"outbound|5432||{HOST}"
    assert not out.filter_chains[-1].HasField("filter_chain_match")


def test_mongo_port_gets_the_mongo_proxy_filter_before_tcp_proxy() -> None:
    from meshfed.pilot.translate.tcp_rules import add_protocol_filters

    mongo = Service("m.default.svc.cluster.local", ports=(Port(27017, "mongo", Protocol.MONGO),))
    index = TrafficIndex.build(ConfigSnapshot(), [mongo, SERVICE])
    node = ProxyNode(id="p", ip="127.0.0.2")
    listeners, _ = tl.outbound_tcp_listeners(node, [mongo, SERVICE])
    by_port = {
        lst.address.socket_address.port_value: add_protocol_filters(lst, index) for lst in listeners
    }
    assert [f.name for f in by_port[27017].filter_chains[0].filters] == [
        "envoy.filters.network.mongo_proxy",
        "envoy.filters.network.tcp_proxy",
    ]
    assert [f.name for f in by_port[5432].filter_chains[0].filters] == [
        "envoy.filters.network.tcp_proxy"
    ]


def test_l4_fault_throttles_and_terminates_the_rules_connections() -> None:
    from xds.type.v3 import typed_struct_pb2

    from meshfed.pilot.translate.tcp_rules import add_protocol_filters

    mongo = Service(HOST, ports=(Port(5432, "mongo", Protocol.MONGO),))
    faulty = attrs.evolve(
        rule("slow", 2, "v1", ("10.2.0.0/16",)),
        l4_fault=L4Fault(downstream_limit_bps=8 * 64 * 1024, upstream_limit_bps=1000),
    )
    short = attrs.evolve(rule("short", 1, "v1"), l4_fault=L4Fault(terminate_after=1.5))
    index = TrafficIndex.build(ConfigSnapshot.of([faulty, short]), [mongo])
    (listener,), _ = tl.outbound_tcp_listeners(ProxyNode(id="p", ip="127.0.0.2"), [mongo])
    out = add_protocol_filters(apply_tcp_rules(listener, index), index)
    slow, terminating = out.filter_chains
    # The Mongo decoder still sits right before the proxy, behind the bandwidth limit.
    assert [f.name for f in slow.filters] == [
        "envoy.filters.network.tcp_bandwidth_limit",
        "envoy.filters.network.mongo_proxy",
        "envoy.filters.network.tcp_proxy",
    ]
    typed = typed_struct_pb2.TypedStruct()
    slow.filters[0].typed_config.Unpack(typed)
    assert typed.type_url.endswith("tcp_bandwidth_limit.v3.TcpBandwidthLimit")
    # 524288 bit/s is 64 KiB/s; 1000 bit/s rounds up to 1 KiB/s rather than to "no limit".
    assert typed.value["write_limit_kbps"] == 64 and typed.value["read_limit_kbps"] == 1
    assert not proxy_of(slow).HasField("max_downstream_connection_duration")
    assert [f.name for f in terminating.filters] == [
        "envoy.filters.network.mongo_proxy",
        "envoy.filters.network.tcp_proxy",
    ]
    assert (
        proxy_of(terminating).max_downstream_connection_duration.ToTimedelta().total_seconds()
        == 1.5
    )
