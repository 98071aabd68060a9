"""EgressRule as sidecar config: external services reached directly from the sidecar.

Istio 0.2 sent egress traffic through a shared egress proxy; its release notes promised the
"reduced latency" of going straight from the sidecar, which is what meshfed does. Promises:

- **Nothing external without a rule.** The outbound HTTP route table answers 404 for an unknown
  Host, and no listener exists for an external TLS/TCP port until a rule opens it; there is no
  ``ORIGINAL_DST`` passthrough anywhere.
- **HTTP (http, http2, grpc) is routed by Host.** A rule for ``api.example.com`` port 8080 adds
  a virtual host ``api.example.com:8080`` (plus the bare name on port 80) to the outbound route
  table. An exact domain gets a ``STRICT_DNS`` cluster ``outbound|8080||api.example.com`` (so it
  has its own stats and DestinationPolicy-free defaults); a wildcard ``*.example.com`` routes
  to a dynamic-forward-proxy cluster that resolves the Host of each request, because a
  wildcard cannot be resolved ahead of time. Upstream, ``http`` speaks HTTP/1.1 and
  ``http2``/``grpc`` speak HTTP/2 (prior knowledge), for exact and wildcard domains alike:
  there are two dynamic clusters, one per upstream protocol, sharing one DNS cache.
- **TLS (https, tls) passes through by SNI, never terminated.** Each TLS port gets a listener on
  the sidecar's IP with the TLS inspector and one filter chain per rule matching its
  ``server_names`` (wildcards included); the bytes go to a STRICT_DNS cluster (exact) or through
  ``sni_dynamic_forward_proxy`` (wildcard) unchanged, so the client sees the server's own
  certificate. A ClientHello for an unlisted name matches no chain and is closed.
- **Istio 0.2's TLS origination keeps working**: for an exact-domain ``https``/``tls`` port the
  outbound route table also has ``domain:port`` (and the bare domain on 443), so an app that
  sends plain HTTP to ``http://api.example.com:443`` (what Istio 0.2 told apps to do) gets
  TLS originated by its sidecar: SNI set, the server certificate verified against
  ``egressCaFile`` (default: the system bundle) and its DNS SAN. Cluster
  ``outbound|PORT|tls-origination|domain``.
- **TCP** opens a local port per rule. Only exact domains: a TCP connection carries no name, so
  a sidecar cannot tell which subdomain a wildcard rule should reach; the parser refuses
  ``tcp`` (and ``mongo``/``redis``) ports on a wildcard rule and suggests ``tls``, whose SNI
  does carry the name.
- A registry service with the same hostname wins over an egress rule (it is in the mesh).
- DNS: sidecars use the host's resolver unless the mesh config lists ``egressDnsResolvers``.
  The HTTP dynamic-forward-proxy filter is always in the outbound listener (it does nothing for
  other clusters), so adding a wildcard rule never changes the listener.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, extension_pb2, resolver_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.clusters.dynamic_forward_proxy.v3 import cluster_pb2 as dfp_cluster
from envoy.extensions.common.dynamic_forward_proxy.v3 import dns_cache_pb2
from envoy.extensions.filters.http.dynamic_forward_proxy.v3 import (
    dynamic_forward_proxy_pb2 as dfp_http,
)
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.filters.network.sni_dynamic_forward_proxy.v3 import (
    sni_dynamic_forward_proxy_pb2 as sni_dfp,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.network.dns_resolver.cares.v3 import cares_dns_resolver_pb2 as cares
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from meshfed.core.xds import HTTP_OPTIONS_KEY, http2_options
from meshfed.pilot.config.model import EgressRule
from meshfed.pilot.node import ProxyNode
from meshfed.pilot.translate import names
from meshfed.pilot.translate.clusters import CONNECT_TIMEOUT_S
from meshfed.pilot.translate.protos import pack, seconds, socket_address
from meshfed.pilot.translate.traffic import TrafficOptions
from meshfed.registry.model import Protocol

DFP_HTTP_FILTER = "envoy.filters.http.dynamic_forward_proxy"
DFP_CLUSTER = "outbound|0||egress.dynamic"  # the dynamic cluster for wildcard HTTP/1.1 and TLS
DFP_H2_CLUSTER = "outbound|0|http2|egress.dynamic"  # the same for wildcard http2 and grpc ports
DNS_CACHE = "meshfed_egress"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
ROUTE_TIMEOUT_S = 15.0
_TLS = (Protocol.TLS,)
TLS_ORIGINATION = "tls-origination"  # the subset part of a TLS-originating cluster's name
SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"


def _is_http(protocol: Protocol) -> bool:
    return protocol.is_http


def _resolver(options: TrafficOptions) -> extension_pb2.TypedExtensionConfig | None:
    if not options.dns_resolvers:
        return None
    addresses = []
    for raw in options.dns_resolvers:
        host, sep, port = raw.rpartition(":")
        if not sep or not port.isdigit():
            host, port = raw, "53"  # a bare address: the DNS port
        addresses.append(socket_address(host.strip("[]"), int(port)))
    config = cares.CaresDnsResolverConfig(
        resolvers=addresses,
        dns_resolver_options=resolver_pb2.DnsResolverOptions(no_default_search_domain=True),
    )
    return extension_pb2.TypedExtensionConfig(
        name="envoy.network.dns_resolver.cares", typed_config=pack(config)
    )


def dns_cache(options: TrafficOptions) -> dns_cache_pb2.DnsCacheConfig:
    """The one DNS cache the HTTP and SNI dynamic forward proxies share (same name, same
    config everywhere, as Envoy requires)."""
    cache = dns_cache_pb2.DnsCacheConfig(
        name=DNS_CACHE,
        dns_lookup_family=cluster_pb2.Cluster.V4_ONLY,
        dns_refresh_rate=seconds(30),
    )
    resolver = _resolver(options)
    if resolver is not None:
        cache.typed_dns_resolver_config.CopyFrom(resolver)
    return cache


def http_filters(options: TrafficOptions) -> list[hcm.HttpFilter]:
    return [
        hcm.HttpFilter(
            name=DFP_HTTP_FILTER,
            typed_config=pack(dfp_http.FilterConfig(dns_cache_config=dns_cache(options))),
        )
    ]


def _active(rules: Iterable[EgressRule], internal: Mapping[str, object]) -> list[EgressRule]:
    """Rules not shadowed by a registry service of the same name, first by name per domain."""
    seen: set[str] = set()
    out = []
    for rule in rules:
        if rule.service in internal or rule.service in seen:
            continue
        seen.add(rule.service)
        out.append(rule)
    return out


def _wildcard(rule: EgressRule) -> bool:
    return rule.service.startswith("*")


def _speaks_h2(protocol: Protocol) -> bool:
    return protocol in (Protocol.HTTP2, Protocol.GRPC)


def _dfp_cluster_for(protocol: Protocol) -> str:
    return DFP_H2_CLUSTER if _speaks_h2(protocol) else DFP_CLUSTER


def egress_clusters(
    rules: Iterable[EgressRule], internal: Mapping[str, object], options: TrafficOptions
) -> list[cluster_pb2.Cluster]:
    """Clusters for every egress rule (shared by all sidecars)."""
    out: dict[str, cluster_pb2.Cluster] = {}
    resolver = _resolver(options)
    for rule in _active(rules, internal):
        if _wildcard(rule):
            for port in rule.ports:
                name = _dfp_cluster_for(port.protocol)
                out[name] = _dfp_cluster(name, options, h2=_speaks_h2(port.protocol))
            continue
        for port in rule.ports:
            name = names.outbound_cluster(rule.service, port.port)
            cluster = cluster_pb2.Cluster(
                name=name,
                type=cluster_pb2.Cluster.STRICT_DNS,
                connect_timeout=seconds(CONNECT_TIMEOUT_S),
                lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
                dns_lookup_family=cluster_pb2.Cluster.V4_ONLY,
                load_assignment=endpoint_pb2.ClusterLoadAssignment(
                    cluster_name=name,
                    endpoints=[
                        ec.LocalityLbEndpoints(
                            lb_endpoints=[
                                ec.LbEndpoint(
                                    endpoint=ec.Endpoint(
                                        address=socket_address(rule.service, port.port)
                                    )
                                )
                            ]
                        )
                    ],
                ),
            )
            if resolver is not None:
                cluster.typed_dns_resolver_config.CopyFrom(resolver)
            if _speaks_h2(port.protocol):
                cluster.typed_extension_protocol_options[HTTP_OPTIONS_KEY].CopyFrom(
                    pack(http2_options())
                )
            out[name] = cluster
            if port.protocol in _TLS:
                originate = _tls_origination(cluster, rule.service, port.port, options)
                out[originate.name] = originate
    return [out[n] for n in sorted(out)]


def _tls_origination(
    plain: cluster_pb2.Cluster, host: str, port: int, options: TrafficOptions
) -> cluster_pb2.Cluster:
    """``plain`` (the passthrough cluster) with upstream TLS: SNI, CA and SAN verified."""
    cluster = cluster_pb2.Cluster()
    cluster.CopyFrom(plain)
    cluster.name = names.outbound_cluster(host, port, TLS_ORIGINATION)
    cluster.load_assignment.cluster_name = cluster.name
    context = tls_pb2.UpstreamTlsContext(
        sni=host,
        common_tls_context=tls_pb2.CommonTlsContext(
            validation_context=common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(filename=options.egress_ca_file or SYSTEM_CA),
                match_typed_subject_alt_names=[
                    common_pb2.SubjectAltNameMatcher(
                        san_type=common_pb2.SubjectAltNameMatcher.DNS,
                        matcher=string_pb2.StringMatcher(exact=host),
                    )
                ],
            )
        ),
    )
    cluster.transport_socket.CopyFrom(
        base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(context))
    )
    return cluster


def _dfp_cluster(name: str, options: TrafficOptions, h2: bool = False) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(
        name=name,
        connect_timeout=seconds(CONNECT_TIMEOUT_S),
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
        cluster_type=cluster_pb2.Cluster.CustomClusterType(
            name="envoy.clusters.dynamic_forward_proxy",
            typed_config=pack(dfp_cluster.ClusterConfig(dns_cache_config=dns_cache(options))),
        ),
    )
    if h2:
        options = http2_options()
        # Envoy insists on these for any dynamic forward proxy cluster with protocol options:
        # should a rule ever originate TLS here, SNI and the SAN check follow each request's Host.
        options.upstream_http_protocol_options.auto_sni = True
        options.upstream_http_protocol_options.auto_san_validation = True
        cluster.typed_extension_protocol_options[HTTP_OPTIONS_KEY].CopyFrom(pack(options))
    return cluster


def egress_virtual_hosts(
    rules: Iterable[EgressRule], internal: Mapping[str, object]
) -> list[rc.VirtualHost]:
    """Virtual hosts for the HTTP ports of egress rules (routed by Host from the sidecar)."""
    out = []
    for rule in _active(rules, internal):
        for port in rule.ports:
            if port.protocol in _TLS and not _wildcard(rule):
                out.append(_origination_vhost(rule, port.port))
                continue
            if not _is_http(port.protocol):
                continue
            domains = [f"{rule.service}:{port.port}"]
            if port.port == 80:
                domains.append(rule.service)
            cluster = (
                _dfp_cluster_for(port.protocol)
                if _wildcard(rule)
                else names.outbound_cluster(rule.service, port.port)
            )
            out.append(
                rc.VirtualHost(
                    name=f"egress|{rule.service}:{port.port}",
                    domains=domains,
                    routes=[
                        rc.Route(
                            name=rule.ref,
                            match=rc.RouteMatch(prefix="/"),
                            route=rc.RouteAction(cluster=cluster, timeout=seconds(ROUTE_TIMEOUT_S)),
                        )
                    ],
                )
            )
    return out


def _origination_vhost(rule: EgressRule, port: int) -> rc.VirtualHost:
    domains = [f"{rule.service}:{port}"] + ([rule.service] if port == 443 else [])
    cluster = names.outbound_cluster(rule.service, port, TLS_ORIGINATION)
    return rc.VirtualHost(
        name=f"egress-tls|{rule.service}:{port}",
        domains=domains,
        routes=[
            rc.Route(
                name=rule.ref,
                match=rc.RouteMatch(prefix="/"),
                route=rc.RouteAction(cluster=cluster, timeout=seconds(ROUTE_TIMEOUT_S)),
            )
        ],
    )


def egress_listeners(
    node: ProxyNode,
    rules: Iterable[EgressRule],
    internal: Mapping[str, object],
    taken: Iterable[int],
    options: TrafficOptions,
) -> tuple[list[listener_pb2.Listener], list[str]]:
    """Per-sidecar listeners for TLS (SNI passthrough) and TCP egress ports, and problems."""
    used = set(taken)
    tls_chains: dict[int, list[lc.FilterChain]] = {}
    tcp: dict[int, EgressRule] = {}
    problems: list[str] = []
    for rule in _active(rules, internal):
        for port in rule.ports:
            if port.protocol in _TLS:
                tls_chains.setdefault(port.port, []).append(_sni_chain(rule, port.port, options))
            elif not _is_http(port.protocol):
                if _wildcard(rule):
                    problems.append(
                        f"{rule.ref}: TCP port {port.port} needs an exact domain, not "
                        f"{rule.service!r} (a wildcard cannot be resolved ahead of time)"
                    )
                elif port.port in tcp:
                    problems.append(
                        f"{rule.ref}: TCP port {port.port} is already used by {tcp[port.port].ref}"
                    )
                else:
                    tcp[port.port] = rule
    # One listener per port: SNI-matched chains behind the TLS inspector, or one TCP chain.
    wanted: list[tuple[int, str, list[lc.ListenerFilter], list[lc.FilterChain]]] = []
    inspector = lc.ListenerFilter(
        name=TLS_INSPECTOR, typed_config=pack(tls_inspector_pb2.TlsInspector())
    )
    for port, chains in sorted(tls_chains.items()):
        wanted.append((port, f"egress TLS port {port}", [inspector], chains))
    for port, rule in sorted(tcp.items()):
        cluster = names.outbound_cluster(rule.service, port)
        chain = lc.FilterChain(filters=[_tcp_proxy(f"egress_tcp_{port}", cluster)])
        wanted.append((port, f"{rule.ref}: TCP port {port}", [], [chain]))
    listeners = []
    for port, owner, listener_filters, chains in wanted:
        if port in used:
            problems.append(f"{owner} has no listener: the port is taken")
            continue
        used.add(port)
        listeners.append(
            listener_pb2.Listener(
                name=names.outbound_tcp_listener(node.ip, port),
                address=socket_address(node.ip, port),
                listener_filters=listener_filters,
                filter_chains=chains,
            )
        )
    return listeners, problems


def _tcp_proxy(stat_prefix: str, cluster: str) -> lc.Filter:
    return lc.Filter(
        name="envoy.filters.network.tcp_proxy",
        typed_config=pack(tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix, cluster=cluster)),
    )


def _sni_chain(rule: EgressRule, port: int, options: TrafficOptions) -> lc.FilterChain:
    match = lc.FilterChainMatch(transport_protocol="tls")
    if rule.service != "*":
        match.server_names.append(rule.service)
    stat = f"egress_tls_{port}_{rule.service.replace('*', 'any')}"
    if _wildcard(rule):
        filters = [
            lc.Filter(
                name="envoy.filters.network.sni_dynamic_forward_proxy",
                typed_config=pack(
                    sni_dfp.FilterConfig(dns_cache_config=dns_cache(options), port_value=port)
                ),
            ),
            _tcp_proxy(stat, DFP_CLUSTER),
        ]
    else:
        filters = [_tcp_proxy(stat, names.outbound_cluster(rule.service, port))]
    return lc.FilterChain(name=f"{rule.ref}:{port}", filter_chain_match=match, filters=filters)
