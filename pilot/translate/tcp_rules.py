"""RouteRule for TCP services: weighted subsets and source/destination subnet matches.

A TCP service port has one local listener on each sidecar (``outbound|IP:PORT``, see
:mod:`pilot.translate.listeners`). Rules for the service turn its single filter chain into
one chain per distinct subnet match, each a ``tcp_proxy`` to the rule's (weighted) subset
clusters:

- ``match.tcp.sourceSubnet`` -> ``source_prefix_ranges`` (the app's address as it connects);
- ``match.tcp.destinationSubnet`` -> ``prefix_ranges`` (the address the app dialled: without
  iptables that is the sidecar's own address, so it distinguishes sidecar IPs rather than
  service VIPs, which is the closest equivalent);
- ``route`` -> ``cluster`` or ``weighted_clusters`` (a connection is placed once, at connect);
- ``l4Fault.terminate`` -> the ``tcp_proxy``'s ``max_downstream_connection_duration`` (Envoy
  closes the connection ``terminateAfterPeriod`` after it was accepted);
  ``l4Fault.throttle`` -> Envoy's ``tcp_bandwidth_limit`` filter in front of the proxy
  (``upstreamLimitBps`` -> ``read_limit_kbps``, ``downstreamLimitBps`` -> ``write_limit_kbps``,
  bits per second converted to KiB/s rounded up). Both apply to every connection the rule's
  chain takes: Envoy cannot sample connections in a network filter chain, so the parser
  accepts only ``percent: 100`` and the rule's subnet match is the way to narrow a fault.

Envoy does not try filter chains in order; it picks the most specific match and refuses two
chains with identical criteria. Precedence is therefore applied here: for each distinct
(source, destination) subnet pair only the highest-precedence rule gets a chain, and the
unmatched chain (no subnets) is the highest-precedence rule without subnets, or the service's
own cluster. Rules with HTTP-only matches (headers, URI) never apply to TCP.

Protocol filters: a ``MONGO`` service port gets Envoy's Mongo proxy filter in front of the
``tcp_proxy`` in every chain (:func:`add_protocol_filters`), so Mongo wire operations are
decoded and counted (``mongo.outbound_mongo_<port>.*`` stats) while bytes pass unchanged.
Envoy decodes only the legacy opcodes, not OP_MSG: with a MongoDB >= 3.6 the driver speaks
OP_MSG after its handshake and only ``decoding_error`` moves (docs/traffic.md, Mongo ports).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable

from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import struct_pb2, wrappers_pb2
from xds.type.v3 import typed_struct_pb2

from meshfed.pilot.config.model import L4Fault, RouteRule
from meshfed.pilot.translate import names
from meshfed.pilot.translate.protos import pack, seconds
from meshfed.pilot.translate.traffic import TrafficIndex, subset_name
from meshfed.registry.model import Port

TCP_PROXY_FILTER = "envoy.filters.network.tcp_proxy"
# Commands the Mongo filter counts by name (cmd.<name>.*); Envoy's default is only the three
# writes, which would lump reads and cursors into cmd.unknown_command. Finds are counted per
# collection (collection.<name>.query.*) either way.
MONGO_COUNTED_COMMANDS = (
    "insert",
    "update",
    "delete",
    "findAndModify",
    "aggregate",
    "count",
    "distinct",
    "getMore",
)
BANDWIDTH_LIMIT_FILTER = "envoy.filters.network.tcp_bandwidth_limit"
BANDWIDTH_LIMIT_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.tcp_bandwidth_limit.v3.TcpBandwidthLimit"
)


def _cidr(value: str) -> address_pb2.CidrRange:
    network = ipaddress.ip_network(value, strict=False)
    return address_pb2.CidrRange(
        address_prefix=str(network.network_address),
        prefix_len=wrappers_pb2.UInt32Value(value=network.prefixlen),
    )


def _bandwidth_limit(stat_prefix: str, fault: L4Fault) -> lc.Filter:
    """Envoy's TCP bandwidth limit (KiB/s, rounded up) for Istio's bits-per-second limits.

    xds-protos does not carry this filter's message yet, so it travels as a ``TypedStruct``
    that Envoy converts with its own descriptor (the filter is compiled into Envoy 1.40).
    """
    config: dict[str, str | int] = {"stat_prefix": stat_prefix}
    if fault.upstream_limit_bps:  # bytes the proxy reads from the app, forwarded upstream
        config["read_limit_kbps"] = math.ceil(fault.upstream_limit_bps / 8 / 1024)
    if fault.downstream_limit_bps:  # bytes the proxy writes back to the app
        config["write_limit_kbps"] = math.ceil(fault.downstream_limit_bps / 8 / 1024)
    value = struct_pb2.Struct()
    value.update(config)
    return lc.Filter(
        name=BANDWIDTH_LIMIT_FILTER,
        typed_config=pack(typed_struct_pb2.TypedStruct(type_url=BANDWIDTH_LIMIT_TYPE, value=value)),
    )


def _rule_filters(
    stat_prefix: str, clusters: list[tuple[str, int]], fault: L4Fault | None
) -> list[lc.Filter]:
    """A rule's chain: the optional L4 fault in front of its ``tcp_proxy``."""
    proxy = _proxy(stat_prefix, clusters, fault.terminate_after if fault else None)
    if fault is None or not (fault.downstream_limit_bps or fault.upstream_limit_bps):
        return [proxy]
    return [_bandwidth_limit(f"{stat_prefix}_l4fault", fault), proxy]


def _proxy(
    stat_prefix: str, clusters: list[tuple[str, int]], terminate_after: float | None = None
) -> lc.Filter:
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix)
    if terminate_after is not None:
        proxy.max_downstream_connection_duration.CopyFrom(seconds(terminate_after))
    if len(clusters) == 1:
        proxy.cluster = clusters[0][0]
    else:
        proxy.weighted_clusters.CopyFrom(
            tcp_proxy_pb2.TcpProxy.WeightedCluster(
                clusters=[
                    tcp_proxy_pb2.TcpProxy.WeightedCluster.ClusterWeight(name=n, weight=w)
                    for n, w in clusters
                ]
            )
        )
    return lc.Filter(name=TCP_PROXY_FILTER, typed_config=pack(proxy))


def _clusters(rule: RouteRule, host: str, port: Port, index: TrafficIndex) -> list[tuple[str, int]]:
    out: dict[str, int] = {}
    for dest in rule.route:
        if dest.weight == 0:
            continue
        if dest.destination is not None:
            target = index.host_of(dest.destination, rule.namespace)
            cluster = index.cluster_for(target, port, dest.labels) if target else None
        else:
            cluster = names.outbound_cluster(host, port.number, subset_name(dest.labels))
        if cluster is not None:
            out[cluster] = out.get(cluster, 0) + dest.weight
    return list(out.items()) or [(names.outbound_cluster(host, port.number), 100)]


def add_protocol_filters(
    listener: listener_pb2.Listener, index: TrafficIndex
) -> listener_pb2.Listener:
    """``listener`` with protocol-aware filters for its service port (Mongo), if any."""
    from envoy.extensions.filters.network.mongo_proxy.v3 import mongo_proxy_pb2

    from meshfed.registry.model import Protocol

    if not listener.filter_chains or not listener.filter_chains[0].filters:
        return listener
    proxy = tcp_proxy_pb2.TcpProxy()
    first = listener.filter_chains[0].filters[-1]
    if first.name != TCP_PROXY_FILTER:
        return listener
    first.typed_config.Unpack(proxy)
    name = proxy.cluster or (
        proxy.weighted_clusters.clusters[0].name if proxy.weighted_clusters.clusters else ""
    )
    parsed = names.parse_outbound_cluster(name)
    service = index.services.get(parsed[0]) if parsed else None
    port = service.port_by_number(parsed[1]) if service is not None and parsed else None
    if port is None or port.protocol is not Protocol.MONGO:
        return listener
    mongo = lc.Filter(
        name="envoy.filters.network.mongo_proxy",
        typed_config=pack(
            mongo_proxy_pb2.MongoProxy(
                stat_prefix=f"outbound_mongo_{port.number}", commands=MONGO_COUNTED_COMMANDS
            )
        ),
    )
    out = listener_pb2.Listener()
    out.CopyFrom(listener)
    for chain in out.filter_chains:
        # Right before the terminal tcp_proxy, so an L4 fault in front still shapes the bytes.
        if chain.filters and chain.filters[-1].name == TCP_PROXY_FILTER:
            chain.filters.insert(len(chain.filters) - 1, mongo)
    return out


def applies_to_tcp(rule: RouteRule) -> bool:
    return not rule.match.headers


def apply_tcp_rules(
    listener: listener_pb2.Listener,
    index: TrafficIndex,
    applies: Callable[[RouteRule], bool] = lambda _rule: True,
) -> listener_pb2.Listener:
    """``listener`` (an outbound TCP service listener) with its service's TCP rules applied."""
    if len(listener.filter_chains) != 1:
        return listener
    proxy = tcp_proxy_pb2.TcpProxy()
    chain = listener.filter_chains[0]
    if len(chain.filters) != 1 or chain.filters[0].name != TCP_PROXY_FILTER:
        return listener
    chain.filters[0].typed_config.Unpack(proxy)
    parsed = names.parse_outbound_cluster(proxy.cluster)
    if parsed is None:
        return listener
    host, number, _ = parsed
    service = index.services.get(host)
    port = service.port_by_number(number) if service is not None else None
    rules = [r for r in index.rules.get(host, ()) if applies_to_tcp(r) and applies(r)]
    if port is None or not rules:
        return listener
    chains: list[lc.FilterChain] = []
    seen: set[tuple[tuple[str, ...], tuple[str, ...]]] = set()
    for rule in rules:
        key = (rule.match.source_subnets, rule.match.destination_subnets)
        if key in seen:
            continue  # a higher-precedence rule already owns exactly this match
        seen.add(key)
        match = lc.FilterChainMatch(
            source_prefix_ranges=[_cidr(c) for c in rule.match.source_subnets],
            prefix_ranges=[_cidr(c) for c in rule.match.destination_subnets],
        )
        chains.append(
            lc.FilterChain(
                name=rule.ref,
                filter_chain_match=match,
                filters=_rule_filters(
                    proxy.stat_prefix, _clusters(rule, host, port, index), rule.l4_fault
                ),
            )
        )
    if ((), ()) not in seen:
        chains.append(lc.FilterChain(name="default", filters=[chain.filters[0]]))
    out = listener_pb2.Listener()
    out.CopyFrom(listener)
    del out.filter_chains[:]
    out.filter_chains.extend(chains)
    return out
