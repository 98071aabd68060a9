"""Interception (REDIRECT) listener layout built from a sidecar's explicit listeners."""

from __future__ import annotations

from meshfed.pilot.node import ProxyNode
from meshfed.pilot.translate import interception
from meshfed.pilot.translate import listeners as tl
from meshfed.registry.model import Endpoint, Port, Protocol, Service

WEB = Service("web.default.svc.cluster.local", ports=(Port(80, "http", Protocol.HTTP),))
DB = Service(
    "db.default.svc.cluster.local", ports=(Port(7379, "tcp", Protocol.TCP),), address="10.0.0.11"
)
CACHE = Service("cache.default.svc.cluster.local", ports=(Port(80, "tcp", Protocol.TCP),))


def explicit(node: ProxyNode, services: list[Service]) -> dict:
    out = {tl.outbound_http_listener(node).name: tl.outbound_http_listener(node)}
    tcp, _ = tl.outbound_tcp_listeners(node, services)
    own = [(WEB, Endpoint(node.ip, ports={"http": 9080}))]
    inbound, _ = tl.inbound(node, own)
    out.update({lst.name: lst for lst in [*tcp, *inbound]})
    return out


def test_virtual_listeners_match_ports_and_vips() -> None:
    node = ProxyNode(
        id="n",
        ip="127.0.0.2",
        app_address="127.0.0.1",
        app_ports=((9080, 8080),),
        interception="REDIRECT",
    )
    services = [WEB, DB, CACHE]
    built, problems = interception.redirect_listeners(node, explicit(node, services), services)
    by_name = {lst.name: lst for lst in built}
    assert set(by_name) == {"virtualOutbound", "virtualInbound"}
    outbound = by_name["virtualOutbound"]
    assert outbound.address.socket_address.address == "0.0.0.0"
    assert outbound.listener_filters[0].name == "envoy.filters.listener.original_dst"
    matches = {
        (
            c.filter_chain_match.destination_port.value,
            tuple(r.address_prefix for r in c.filter_chain_match.prefix_ranges),
        )
        for c in outbound.filter_chains
    }
    assert matches == {(80, ()), (7379, ("10.0.0.11",))}
    # A VIP-less TCP service on an HTTP port cannot be told apart: reported, not intercepted.
    assert problems and "cache.default.svc.cluster.local" in problems[0]
    assert outbound.default_filter_chain.filters[0].name == "envoy.filters.network.tcp_proxy"
    inbound = by_name["virtualInbound"]
    assert [c.filter_chain_match.destination_port.value for c in inbound.filter_chains] == [9080]
