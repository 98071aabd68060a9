"""Listeners for transparent interception (``INTERCEPTION_MODE=REDIRECT`` in node metadata).

With iptables redirecting the app's outbound TCP to port 15001 and inbound TCP to 15006 (see
``docs/pilot.md``), the app dials services by their own address and never knows about the
sidecar. This module turns the explicit-proxy listener set of a sidecar (built by
``listeners.py`` and the routing hooks) into the interception layout, so both modes share
every filter (routes, faults, egress) and differ only in how connections arrive:

- ``virtualOutbound`` on ``0.0.0.0:15001`` with the ``original_dst`` listener filter; one
  filter chain per HTTP destination port (the outbound HTTP connection manager, same routes),
  one per TCP service port matched on the service's VIP (or on the port alone when the
  service has no VIP and no other chain claims it), and a default chain to
  ``BlackHoleCluster``: a destination the registry does not know goes nowhere.
- ``virtualInbound`` on ``0.0.0.0:15006`` with ``original_dst``; one chain per inbound port,
  with the inbound listener's filters (forwarding to the local app).

Limit: every HTTP destination port shares one route table, so a service with several HTTP
ports needs ``Host: name:port`` for its non-default ports.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshfed.pilot.node import ProxyNode
from meshfed.pilot.translate import names
from meshfed.pilot.translate.protos import pack, seconds, socket_address
from meshfed.registry.model import Service

REDIRECT = "REDIRECT"
VIRTUAL_OUTBOUND = "virtualOutbound"
VIRTUAL_INBOUND = "virtualInbound"
INBOUND_CAPTURE_PORT = 15006
BLACKHOLE = "BlackHoleCluster"
TCP_PROXY_FILTER = "envoy.filters.network.tcp_proxy"


def blackhole_cluster() -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster(
        name=BLACKHOLE, type=cluster_pb2.Cluster.STATIC, connect_timeout=seconds(1)
    )


def _original_dst() -> lc.ListenerFilter:
    return lc.ListenerFilter(
        name="envoy.filters.listener.original_dst",
        typed_config=pack(original_dst_pb2.OriginalDst()),
    )


def _virtual(name: str, port: int) -> listener_pb2.Listener:
    return listener_pb2.Listener(
        name=name,
        address=socket_address("0.0.0.0", port),
        listener_filters=[_original_dst()],
    )


def _tcp_cluster(listener: listener_pb2.Listener) -> str:
    for filt in listener.filter_chains[0].filters:
        if filt.name == TCP_PROXY_FILTER:
            proxy = tcp_proxy_pb2.TcpProxy()
            filt.typed_config.Unpack(proxy)
            return proxy.cluster
    return ""


def _cidr(ip: str) -> address_pb2.CidrRange:
    return address_pb2.CidrRange(address_prefix=ip, prefix_len={"value": 32})


def redirect_listeners(
    node: ProxyNode,
    listeners: Mapping[str, listener_pb2.Listener],
    services: Iterable[Service],
) -> tuple[list[listener_pb2.Listener], list[str]]:
    """The interception listener set built from a sidecar's explicit-proxy listeners."""
    by_host = {s.hostname: s for s in services}
    problems: list[str] = []
    outbound = _virtual(VIRTUAL_OUTBOUND, node.outbound_http_port)
    inbound = _virtual(VIRTUAL_INBOUND, INBOUND_CAPTURE_PORT)
    kept: list[listener_pb2.Listener] = []
    port_only: set[int] = set()
    http = listeners.get(names.OUTBOUND_HTTP_LISTENER)
    http_ports = sorted({p.number for s in by_host.values() for p in s.ports if p.protocol.is_http})
    tcp_chains: list[lc.FilterChain] = []
    for name, listener in sorted(listeners.items()):
        port = listener.address.socket_address.port_value
        if name.startswith("outbound|"):
            parsed = names.parse_outbound_cluster(_tcp_cluster(listener))
            service = by_host.get(parsed[0]) if parsed else None
            match = lc.FilterChainMatch(destination_port={"value": port})
            if service is not None and service.address:
                match.prefix_ranges.append(_cidr(service.address))
            elif port in http_ports or port in port_only:
                problems.append(
                    f"{parsed[0] if parsed else name}:{port} has no VIP and its port is shared; "
                    "not intercepted "
                    "(give the service an address)"
                )
                continue
            else:
                port_only.add(port)
            tcp_chains.append(
                lc.FilterChain(
                    name=name,
                    filter_chain_match=match,
                    filters=listener.filter_chains[0].filters,
                )
            )
        elif name.startswith("inbound|"):
            inbound.filter_chains.append(
                lc.FilterChain(
                    name=name,
                    filter_chain_match=lc.FilterChainMatch(destination_port={"value": port}),
                    filters=listener.filter_chains[0].filters,
                )
            )
        elif name != names.OUTBOUND_HTTP_LISTENER:
            kept.append(listener)  # egress and other explicit listeners keep working as they are
    if http is not None:
        for port in http_ports:
            outbound.filter_chains.append(
                lc.FilterChain(
                    name=f"outbound_http_{port}",
                    filter_chain_match=lc.FilterChainMatch(destination_port={"value": port}),
                    filters=http.filter_chains[0].filters,
                )
            )
    outbound.filter_chains.extend(tcp_chains)
    blackhole = tcp_proxy_pb2.TcpProxy(stat_prefix="blackhole", cluster=BLACKHOLE)
    outbound.default_filter_chain.CopyFrom(
        lc.FilterChain(
            name="blackhole",
            filters=[lc.Filter(name=TCP_PROXY_FILTER, typed_config=pack(blackhole))],
        )
    )
    inbound.default_filter_chain.CopyFrom(outbound.default_filter_chain)
    return [outbound, inbound, *kept], problems
