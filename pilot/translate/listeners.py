"""Listeners (LDS) for one sidecar, without iptables.

- ``outbound_http`` on ``IP:15001``: an HTTP connection manager whose routes (RDS
  ``outbound_http``) pick the service by Host header.
- ``outbound|IP:PORT`` for each TCP-like service port: a local port the app dials for that
  service (the first service by hostname wins a port; later ones are reported, not bound).
- ``inbound|IP:PORT`` for each endpoint port of the proxy's own workload that ``APP_PORTS``
  maps to a local app port: forwards what the mesh sends to the application.

Every connection manager and TCP chain goes through the listener plugins
(:mod:`pilot.plugins`): the outbound HTTP and inbound ones here, as they are built; outbound TCP
chains once route rules have shaped them (:mod:`pilot.views`), since rules rebuild the chains.

Ports Pilot would collide with (admin, outbound HTTP, inbound ports) are never bound twice; each
skipped port is returned as a problem so ``proxy-status`` can show it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshfed.pilot.node import ProxyNode
from meshfed.pilot.plugins import NO_PLUGINS, ChainContext, Direction, HttpChain, PluginSet
from meshfed.pilot.translate import names
from meshfed.pilot.translate.clusters import inbound_cluster
from meshfed.pilot.translate.protos import ads_source, pack, socket_address
from meshfed.registry.model import Endpoint, Protocol, Resolution, Service

HCM_FILTER = "envoy.filters.network.http_connection_manager"
TCP_PROXY_FILTER = "envoy.filters.network.tcp_proxy"


def _router() -> hcm.HttpFilter:
    return hcm.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router()))


def _listener(name: str, ip: str, port: int, filt: lc.Filter) -> listener_pb2.Listener:
    return listener_pb2.Listener(
        name=name,
        address=socket_address(ip, port),
        filter_chains=[lc.FilterChain(filters=[filt])],
    )


def outbound_http_listener(
    node: ProxyNode,
    http_filters: Sequence[hcm.HttpFilter] = (),
    upgrade_configs: Sequence[hcm.HttpConnectionManager.UpgradeConfig] = (),
    plugins: PluginSet = NO_PLUGINS,
    problems: list[str] | None = None,
    own: Sequence[tuple[Service, Endpoint]] = (),
) -> listener_pb2.Listener:
    """``http_filters`` (before the router) and ``upgrade_configs`` come from traffic rules
    (pilot.translate.rules / egress): inert by default, configured per route. Plugins add
    theirs after those (``on_outbound_http``, told the proxy's ``own`` endpoints); what they
    report goes to ``problems``."""
    manager = hcm.HttpConnectionManager(
        stat_prefix="outbound_http",
        rds=hcm.Rds(config_source=ads_source(), route_config_name=names.OUTBOUND_HTTP_ROUTE),
        http_filters=[*http_filters, _router()],
        upgrade_configs=list(upgrade_configs),
    )
    if plugins:
        ctx = ChainContext(
            node, Direction.OUTBOUND, node.outbound_http_port, Protocol.HTTP, own=tuple(own)
        )
        plugins.http(ctx, HttpChain(manager))
        if problems is not None:
            problems.extend(p for p in ctx.problems if p not in problems)
    return _listener(
        names.OUTBOUND_HTTP_LISTENER,
        node.ip,
        node.outbound_http_port,
        lc.Filter(name=HCM_FILTER, typed_config=pack(manager)),
    )


def _tcp_proxy(stat_prefix: str, cluster: str) -> lc.Filter:
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix, cluster=cluster)
    return lc.Filter(name=TCP_PROXY_FILTER, typed_config=pack(proxy))


def outbound_tcp_listeners(
    node: ProxyNode, services: Iterable[Service]
) -> tuple[list[listener_pb2.Listener], list[str]]:
    """Local listeners for TCP-like service ports, and the ports that could not be given one."""
    used = set(node.reserved_ports)
    owner: dict[int, str] = {}
    listeners: list[listener_pb2.Listener] = []
    problems: list[str] = []
    for service in sorted(services, key=lambda s: s.hostname):
        # Without interception, the original destination is the listener itself: nothing to do.
        if service.resolution is Resolution.PASSTHROUGH:
            continue
        for port in service.ports:
            if port.protocol.is_http:
                continue
            if port.number in used:
                holder = owner.get(port.number, "the sidecar itself")
                problems.append(
                    f"{service.hostname}:{port.number} has no local listener: "
                    f"port {port.number} is taken by {holder}"
                )
                continue
            used.add(port.number)
            owner[port.number] = service.hostname
            cluster = names.outbound_cluster(service.hostname, port.number)
            listeners.append(
                _listener(
                    names.outbound_tcp_listener(node.ip, port.number),
                    node.ip,
                    port.number,
                    _tcp_proxy(f"outbound_tcp_{port.number}", cluster),
                )
            )
    return listeners, problems


def inbound(
    node: ProxyNode,
    own: Sequence[tuple[Service, Endpoint]],
    plugins: PluginSet = NO_PLUGINS,
    problems: list[str] | None = None,
) -> tuple[list[listener_pb2.Listener], list[cluster_pb2.Cluster]]:
    """Inbound listeners and clusters for the endpoints at the proxy's own address.

    Each port's chain goes through the plugins (``on_inbound_http`` / ``on_inbound_tcp``),
    then the finished listener (``on_inbound_listener``, where transport security goes);
    what they report is added to ``problems``."""
    app_ports = dict(node.app_ports)
    chosen: dict[int, Protocol] = {}
    served: dict[int, list[Service]] = {}
    for service, endpoint in sorted(own, key=lambda se: se[0].hostname):
        for service_port in service.ports:
            target = endpoint.target_port(service_port)
            if target in app_ports and target not in chosen:
                chosen[target] = service_port.protocol
            if target in app_ports and service not in served.setdefault(target, []):
                served[target].append(service)
    listeners, clusters = [], []
    own_pairs = tuple(own)
    for port, protocol in sorted(chosen.items()):
        cluster_name = names.inbound_cluster(port)
        clusters.append(inbound_cluster(port, node.app_address, app_ports[port], protocol))
        ctx = ChainContext(
            node, Direction.INBOUND, port, protocol, tuple(served.get(port, ())), own=own_pairs
        )
        if protocol.is_http:
            routes = route_pb2.RouteConfiguration(
                name=f"inbound|{port}",
                virtual_hosts=[
                    rc.VirtualHost(
                        name="inbound",
                        domains=["*"],
                        routes=[
                            rc.Route(
                                match=rc.RouteMatch(prefix="/"),
                                route=rc.RouteAction(cluster=cluster_name),
                            )
                        ],
                    )
                ],
            )
            manager = hcm.HttpConnectionManager(
                stat_prefix=f"inbound_{port}", http_filters=[_router()]
            )
            if protocol in (Protocol.HTTP2, Protocol.GRPC):
                manager.codec_type = hcm.HttpConnectionManager.AUTO
            if plugins:
                plugins.http(ctx, HttpChain(manager, routes))
            manager.route_config.CopyFrom(routes)
            filters = [lc.Filter(name=HCM_FILTER, typed_config=pack(manager))]
        else:
            filters = [_tcp_proxy(f"inbound_tcp_{port}", cluster_name)]
            if plugins:
                filters = plugins.tcp_filters(ctx, filters)
        listener = listener_pb2.Listener(
            name=names.inbound_listener(node.ip, port),
            address=socket_address(node.ip, port),
            filter_chains=[lc.FilterChain(filters=filters)],
        )
        if plugins:
            plugins.inbound_listener(ctx, listener)
            if problems is not None:
                problems.extend(p for p in ctx.problems if p not in problems)
        listeners.append(listener)
    return listeners, clusters
