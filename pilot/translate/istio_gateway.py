"""Today's Istio ``Gateway`` servers and the VirtualServices bound to them, as gateway listeners.

The same Envoy objects the ingress translation builds (:mod:`pilot.translate.gateway`, which
merges both): per server port one listener on the gateway's IP, and

- plain HTTP servers: one connection manager whose route table (``gateway|<port>``) has a
  virtual host per bound VirtualService host (the intersection with the server's hosts), each
  route made by the sidecar rule translator (:func:`pilot.translate.rules.rule_route`), so a
  VirtualService means the same route at a gateway as in a sidecar; ``httpsRedirect`` is the
  virtual host's ``require_tls: ALL`` (a 301 to https);
- ``SIMPLE`` / ``MUTUAL`` servers: one filter chain per server, matched by SNI (its hosts;
  ``*`` matches any), terminating TLS with the server's certificate files (``MUTUAL``: client
  certificates required, verified against ``caCertificates``), each with its own route table
  ``gateway|<port>|<namespace>/<gateway>|<server name, port name or index>``;
- ``PASSTHROUGH`` servers: one filter chain per bound ``tls`` route, matched by its SNI hosts,
  a ``tcp_proxy`` to the route's cluster (or weighted clusters): TLS goes to the backend
  untouched;
- ``TCP`` servers: a ``tcp_proxy`` per port from the bound ``tcp`` route.

A server's namespace part (``ns/host``) limits which VirtualServices it takes. What cannot be
built (a destination that names no service, two servers claiming one SNI name on one port) is
left out and reported as a problem of the gateway proxy, never a NACK.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from google.protobuf import wrappers_pb2

from meshfed.pilot.config.istio import GatewayRoute, L4Route
from meshfed.pilot.config.istio_gateway import (
    DEFAULT_GATEWAY_LABELS,
    IstioGateway,
    Server,
    ServerProtocol,
    TlsMode,
    intersect,
)
from meshfed.pilot.config.model import RouteRule
from meshfed.pilot.node import ProxyNode
from meshfed.pilot.translate import names, routes, rules
from meshfed.pilot.translate.protos import pack
from meshfed.pilot.translate.traffic import TrafficIndex, subset_name
from meshfed.registry.model import Labels, Port, Service

# (port, route table, tls) -> the connection manager filter, with the listener plugins applied.
MakeManager = Callable[[int, route_pb2.RouteConfiguration, bool], lc.Filter]
TCP_PROXY_FILTER = "envoy.filters.network.tcp_proxy"


@attrs.define
class PortPlan:
    """What today's Gateways put on one port of one gateway proxy."""

    port: int
    kind: str  # "http", "tls" or "tcp"
    vhosts: list[rc.VirtualHost] = attrs.Factory(list)  # http: for the port's route table
    chains: list[lc.FilterChain] = attrs.Factory(list)  # tls / tcp
    routes: list[route_pb2.RouteConfiguration] = attrs.Factory(list)  # tls: per server
    server_names: set[str] = attrs.Factory(set)  # tls: SNI names taken ("*": catch-all)

    @property
    def domains(self) -> set[str]:
        return {d for vh in self.vhosts for d in vh.domains}


def selected(node: ProxyNode, gateways: Sequence[IstioGateway]) -> list[IstioGateway]:
    labels = node.labels or DEFAULT_GATEWAY_LABELS
    return [g for g in gateways if g.selects(labels)]


def _kind(server: Server) -> str:
    if server.protocol is ServerProtocol.TCP:
        return "tcp"
    if server.protocol in (ServerProtocol.HTTPS, ServerProtocol.TLS):
        return "tls"
    return "http"


def _domains_for(
    server: Server, gw: IstioGateway, bound: Sequence[GatewayRoute]
) -> dict[str, list[GatewayRoute]]:
    """Each virtual host domain the server gets, with its routes in application order."""
    out: dict[str, list[GatewayRoute]] = {}
    for route in bound:
        if gw.key not in route.gateways:
            continue
        for host in server.hosts:
            if host.namespace not in ("*", route.rule.namespace):
                continue
            domain = intersect(host.host, route.host)
            if domain is not None:
                entries = out.setdefault(domain, [])
                if route not in entries:
                    entries.append(route)
    return out


def _route(bound: GatewayRoute, index: TrafficIndex, problems: list[str]) -> rc.Route | None:
    rule = bound.rule
    chosen: tuple[Service, Port] | None = None
    resolved = False
    for i, dest in enumerate(rule.route):
        assert dest.destination is not None
        host = index.host_of(dest.destination, rule.namespace)
        service = index.services.get(host) if host is not None else None
        if service is None:
            continue
        resolved = True
        port = service.port_by_number(dest.port) if dest.port else routes.default_http_port(service)
        if port is None or not port.protocol.is_http:
            # Another port of the service would be traffic nobody asked for: the destination
            # takes none (its weight goes to the others; with none left the route answers 503).
            what = f"HTTP port {dest.port}" if dest.port else "HTTP port"
            problems.append(
                f"{rule.ref}: route[{i}].destination.port: {service.hostname} has no {what}"
                f" (it has {_port_list(service)}); that destination takes no traffic"
            )
        elif chosen is None:
            chosen = (service, port)
    if not resolved and rule.redirect is None:
        problems.append(f"{rule.ref}: no destination resolves to a service; route left out")
        return None
    if chosen is None and rule.redirect is None:
        return _unavailable(rule)
    if chosen is None:  # a redirect needs no backend
        return rules.redirect_route(rule)
    service, port = chosen
    default = routes.default_route(names.outbound_cluster(service.hostname, port.number))
    return rules.rule_route(rule, service, port, default, index)


def _port_list(service: Service) -> str:
    return ", ".join(f"{p.number}/{p.protocol.value}" for p in service.ports) or "no ports"


def _unavailable(rule: RouteRule) -> rc.Route:
    """The rule's match answered 503: no request it matches falls through to another route."""
    return rc.Route(
        name=rule.ref,
        match=rules.route_match(rule.match),
        direct_response=rc.DirectResponseAction(
            status=503, body=base_pb2.DataSource(inline_string="no destination port\n")
        ),
    )


def _vhosts(
    servers: Sequence[tuple[IstioGateway, Server]],
    index: TrafficIndex,
    port: int,
    problems: list[str],
) -> list[rc.VirtualHost]:
    by_domain: dict[str, list[GatewayRoute]] = {}
    redirect: set[str] = set()
    for gw, server in servers:
        for domain, entries in _domains_for(server, gw, index.snapshot.gateway_routes).items():
            merged = by_domain.setdefault(domain, [])
            merged.extend(e for e in entries if e not in merged)
            if server.tls.https_redirect:
                redirect.add(domain)
    out = []
    for domain, entries in sorted(by_domain.items(), key=lambda kv: (kv[0] == "*", kv[0])):
        built = [r for r in (_route(e, index, problems) for e in entries) if r is not None]
        domains = ["*"] if domain == "*" else [domain, f"{domain}:{port}"]
        vhost = rc.VirtualHost(name=f"gateway|{domain}", domains=domains, routes=built)
        if domain in redirect:
            vhost.require_tls = rc.VirtualHost.ALL
        out.append(vhost)
    return out


def _cert_files(server: Server, gw: IstioGateway, certs_dir: str) -> tuple[str, str, str, str]:
    """(certificate, key, CA bundle, watched folder) for a terminating server."""
    tls = server.tls
    if tls.credential_name:
        folder = Path(certs_dir or "/etc/meshfed/gateway-certs") / tls.credential_name
        ca = str(folder / "ca.crt") if tls.mode is TlsMode.MUTUAL else ""
        return str(folder / "tls.crt"), str(folder / "tls.key"), ca, str(folder)
    base = Path(gw.file).parent

    def resolved(path: str) -> str:
        return str(path if Path(path).is_absolute() else base / path) if path else ""

    return resolved(tls.certificate), resolved(tls.private_key), resolved(tls.ca_certificates), ""


def _transport(server: Server, gw: IstioGateway, certs_dir: str) -> base_pb2.TransportSocket:
    cert, key, ca, folder = _cert_files(server, gw, certs_dir)
    certificate = common_pb2.TlsCertificate(
        certificate_chain=base_pb2.DataSource(filename=cert),
        private_key=base_pb2.DataSource(filename=key),
    )
    if folder:
        certificate.watched_directory.path = folder
    common = tls_pb2.CommonTlsContext(
        tls_certificates=[certificate], alpn_protocols=["h2", "http/1.1"]
    )
    params = common.tls_params
    if server.tls.min_version:
        params.tls_minimum_protocol_version = common_pb2.TlsParameters.TlsProtocol.Value(
            server.tls.min_version
        )
    if server.tls.max_version:
        params.tls_maximum_protocol_version = common_pb2.TlsParameters.TlsProtocol.Value(
            server.tls.max_version
        )
    context = tls_pb2.DownstreamTlsContext(common_tls_context=common)
    if server.tls.mode is TlsMode.MUTUAL:
        context.common_tls_context.validation_context.trusted_ca.filename = ca
        context.require_client_certificate.value = True
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(context))


def _claim(plan: PortPlan, hosts: Sequence[str], what: str, problems: list[str]) -> list[str]:
    """The SNI names of ``hosts`` not yet taken on the port (``[]`` when none is left)."""
    names_ = ["*"] if "*" in hosts else list(dict.fromkeys(hosts))
    free = [h for h in names_ if h not in plan.server_names]
    for host in names_:
        if host not in free:
            problems.append(f"{what}: SNI {host} on port {plan.port} is already served; left out")
    plan.server_names.update(free)
    return free


def _chain_match(server_names: Sequence[str]) -> lc.FilterChainMatch:
    match = lc.FilterChainMatch()
    if "*" not in server_names:
        match.server_names.extend(server_names)
    return match


def _l4_clusters(route: L4Route, index: TrafficIndex, problems: list[str]) -> list[tuple[str, int]]:
    out = []
    for dest in route.destinations:
        host = index.host_of(attrs.evolve(dest.host, labels=Labels()), route.namespace)
        service = index.services.get(host) if host else None
        if service is None or service.port_by_number(dest.port) is None:
            problems.append(f"{route.ref}: {dest.host} port {dest.port} matches no service port")
            continue
        if dest.weight:
            out.append(
                (
                    names.outbound_cluster(host or "", dest.port, subset_name(dest.host.labels)),
                    dest.weight,
                )
            )
    return out


def _tcp_proxy(stat_prefix: str, clusters: list[tuple[str, int]]) -> lc.Filter:
    proxy = tcp_proxy_pb2.TcpProxy(stat_prefix=stat_prefix)
    if len(clusters) == 1:
        proxy.cluster = clusters[0][0]
    else:
        for name, weight in clusters:
            proxy.weighted_clusters.clusters.append(
                tcp_proxy_pb2.TcpProxy.WeightedCluster.ClusterWeight(name=name, weight=weight)
            )
    return lc.Filter(name=TCP_PROXY_FILTER, typed_config=pack(proxy))


def _l4_bound(
    gw: IstioGateway, server: Server, kind: str, index: TrafficIndex
) -> list[tuple[L4Route, list[str]]]:
    """``kind`` routes bound to ``gw`` for ``server``, with the SNI names they take there."""
    out: list[tuple[L4Route, list[str]]] = []
    for route in index.snapshot.l4_routes:
        if route.kind != kind or gw.key not in route.gateways:
            continue
        if route.port and route.port != server.port:
            continue
        allowed = [h for h in server.hosts if h.namespace in ("*", route.namespace)]
        if not allowed:
            continue
        if kind == "tcp":
            out.append((route, []))
            continue
        sni = [d for h in allowed for s in route.sni_hosts if (d := intersect(h.host, s))]
        if sni:
            out.append((route, list(dict.fromkeys(sni))))
    return out


def plans(
    node: ProxyNode, index: TrafficIndex, make_manager: MakeManager, problems: list[str]
) -> dict[int, PortPlan]:
    """Per port, what the Gateways selecting ``node`` put there."""
    by_port: dict[int, list[tuple[IstioGateway, Server]]] = {}
    for gw in selected(node, index.snapshot.istio_gateways):
        for server in gw.servers:
            by_port.setdefault(server.port, []).append((gw, server))
    out: dict[int, PortPlan] = {}
    certs_dir = index.options.gateway_certs_dir
    for port, servers in sorted(by_port.items()):
        if port == node.admin_port:
            # Envoy's admin already listens there: binding it would fail the whole update.
            refs = ", ".join(sorted({g.ref for g, _ in servers}))
            problems.append(f"port {port} ({refs}) is the gateway's admin port; not served")
            continue
        kinds = {_kind(s) for _, s in servers}
        kind = sorted(kinds)[0]
        if len(kinds) > 1:
            problems.append(
                f"port {port}: Gateways {', '.join(sorted({g.ref for g, _ in servers}))} put "
                f"servers of different kinds there ({', '.join(sorted(kinds))}); only {kind} "
                "servers are served"
            )
            servers = [(g, s) for g, s in servers if _kind(s) == kind]
        plan = PortPlan(port, kind)
        if kind == "http":
            plan.vhosts = _vhosts(servers, index, port, problems)
        elif kind == "tcp":
            gw, server = servers[0]
            bound = _l4_bound(gw, server, "tcp", index)
            clusters = _l4_clusters(bound[0][0], index, problems) if bound else []
            if len(servers) > 1 or len(bound) > 1:
                problems.append(f"port {port}: one TCP route is served per TCP port; the first")
            if clusters:
                filt = _tcp_proxy(f"gateway_tcp_{port}", clusters)
                plan.chains.append(lc.FilterChain(name=f"tcp|{port}", filters=[filt]))
        else:
            for i, (gw, server) in enumerate(servers):
                what = f"{gw.ref} server {server.name or server.port_name or i}"
                if server.tls.mode is TlsMode.PASSTHROUGH:
                    for route, sni in _l4_bound(gw, server, "tls", index):
                        clusters = _l4_clusters(route, index, problems)
                        free = _claim(plan, sni, route.ref, problems)
                        if not clusters or not free:
                            continue
                        filt = _tcp_proxy(f"gateway_passthrough_{port}", clusters)
                        plan.chains.append(
                            lc.FilterChain(
                                name=f"passthrough|{route.ref}|{','.join(free)}",
                                filter_chain_match=_chain_match(free),
                                filters=[filt],
                            )
                        )
                    continue
                free = _claim(plan, [h.host for h in server.hosts], what, problems)
                if not free:
                    continue
                table = route_pb2.RouteConfiguration(
                    name=f"gateway|{port}|{gw.key}|{server.name or server.port_name or i}",
                    virtual_hosts=_vhosts([(gw, server)], index, port, problems),
                    validate_clusters=wrappers_pb2.BoolValue(value=False),
                )
                plan.routes.append(table)
                plan.chains.append(
                    lc.FilterChain(
                        name=f"tls|{table.name}",
                        filter_chain_match=_chain_match(free),
                        filters=[make_manager(port, table, True)],
                        transport_socket=_transport(server, gw, certs_dir),
                    )
                )
        out[port] = plan
    return out
