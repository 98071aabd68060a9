"""Ingress gateway config: Kubernetes ``Ingress`` and meshfed ``Gateway`` as Envoy listeners.

A gateway is a standalone Envoy (``meshfed proxy --gateway``) whose node id starts with
``router~``. Pilot gives it no sidecar listeners; instead, for the gateway's HTTP port (its
``OUTBOUND_HTTP_PORT``, set by ``--gateway-port``) and, when any config asks for TLS, its HTTPS
port (443 for port 80, otherwise HTTP port + 363, so 8080 pairs with 8443):

- one listener per port, an HTTP connection manager with ``codec_type: AUTO`` so HTTP/1.1,
  HTTP/2 and gRPC (h2c on the plain port, h2 over ALPN on the TLS port) all work;
- routes (RDS ``gateway|<port>``): one virtual host per Ingress host (``*`` for rules without
  a host), one route per path to the backend service port's cluster, which already speaks
  HTTP/2 upstream when the port's protocol is grpc/http2. ``pathType`` decides the match
  (:func:`route_match`): ``Exact`` is Envoy's ``path``; ``Prefix`` is
  ``path_separated_prefix``, so ``/foo`` matches ``/foo`` and ``/foo/bar`` but not
  ``/foobar`` as Kubernetes specifies; ``ImplementationSpecific`` (and no pathType, the only
  form Istio 0.2 knew) stays a plain string prefix. Exact routes come first, then prefixes,
  each longest first, because Envoy takes the first route that matches;
- TLS termination on the HTTPS port: one filter chain per certificate, matched by SNI
  (``server_names``), certificate and key read by Envoy from files
  ``<dir>/tls.crt`` and ``<dir>/tls.key`` (Kubernetes TLS secret key names), where ``<dir>``
  is the secret name resolved against the mesh's ``gatewayCertsDir`` (Istio 0.2 mounted
  ingress certificates at a fixed path), or the folder itself when the secret is a path
  (relative paths: against the Ingress/Gateway file's folder). Keys never travel in xDS, and
  ``watched_directory`` makes Envoy pick up rotated files without a push.

Several Ingress/Gateway objects for the same host merge into one virtual host (objects in
namespace/name order, paths longest first). An Ingress ``defaultBackend`` is the last route
of every host of that object; the first default of all serves every other host (``*``). A
backend that resolves to no service port is skipped and reported as a problem. Which
Ingresses are ours (``spec.ingressClassName`` or the legacy ``kubernetes.io/ingress.class``
annotation against the mesh config's ``ingressClass`` / ``ingressControllerMode``) is decided
by the parser (:class:`pilot.config.parse.IngressSelection`).

Every gateway connection manager goes through the listener plugins (``on_gateway_http``, once
per port, with the port's route table; :mod:`pilot.plugins`).

Mutual TLS: a gateway is a mesh client. It gets the same shared outbound clusters as a
sidecar, with mutual TLS already applied by its plugin (:mod:`pilot.mtls_plugin`), so it
needs the mesh certificate that only a node agent hands out (files): ``meshfed proxy --gateway
--secrets-dir DIR`` puts ``SDS=true`` and the agent's secrets directory in its metadata
(``ProxyNode.sds``), and its SPIFFE ID is the agent's. Like any proxy without SDS, a gateway
without it gets plain copies of those clusters and a problem (:mod:`pilot.sds_fallback`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2

from meshfed.pilot.config.model import Gateway, IngressPath, PathType
from meshfed.pilot.node import ProxyNode
from meshfed.pilot.plugins import NO_PLUGINS, ChainContext, Direction, HttpChain, PluginSet
from meshfed.pilot.translate import istio_gateway, names
from meshfed.pilot.translate.protos import ads_source, pack, seconds, socket_address
from meshfed.pilot.translate.rules import http_filters as rule_filters
from meshfed.pilot.translate.traffic import TrafficIndex
from meshfed.registry.model import Service

GATEWAY_NODE_PREFIX = "router~"
ROUTE_TIMEOUT_S = 15.0


def is_gateway(node: ProxyNode) -> bool:
    return node.id.startswith(GATEWAY_NODE_PREFIX)


def https_port(http_port: int) -> int:
    return 443 if http_port == 80 else http_port + 363


def route_name(port: int) -> str:
    return f"gateway|{port}"


def _backend_cluster(
    path: IngressPath, gateway: Gateway, services: Mapping[str, Service]
) -> str | None:
    host = path.backend.resolve(services.values(), gateway.namespace)
    service = services.get(host) if host else None
    if service is None:
        return None
    if isinstance(path.port, int):
        port = service.port_by_number(path.port)
    else:
        port = service.port(path.port)
    return names.outbound_cluster(service.hostname, port.number) if port is not None else None


def route_match(path: IngressPath) -> rc.RouteMatch:
    """Envoy's match for an Ingress path: ``path`` for Exact, ``path_separated_prefix`` for
    Prefix (whole segments; a trailing ``/`` is ignored, as Kubernetes specifies, and ``/``
    alone matches everything), a plain string ``prefix`` for ImplementationSpecific."""
    if path.path_type is PathType.EXACT:
        return rc.RouteMatch(path=path.path)
    if path.path_type is PathType.PREFIX:
        segments = path.path.rstrip("/")
        if segments:
            return rc.RouteMatch(path_separated_prefix=segments)
        return rc.RouteMatch(prefix="/")
    return rc.RouteMatch(prefix=path.path)


def gateway_route_config(
    port: int, gateways: Iterable[Gateway], services: Mapping[str, Service]
) -> tuple[route_pb2.RouteConfiguration, list[str]]:
    by_host: dict[str, list[tuple[IngressPath, str]]] = {}
    defaults: list[tuple[IngressPath, str]] = []  # every object's, in object order
    host_default: dict[str, tuple[IngressPath, str]] = {}  # a host's own object's default
    problems = []
    for gateway in gateways:
        for path in gateway.paths:
            cluster = _backend_cluster(path, gateway, services)
            if cluster is None:
                problems.append(
                    f"{gateway.ref}: backend {path.backend} port {path.port} "
                    "matches no service port"
                )
                continue
            if path.default:
                defaults.append((path, cluster))
                for other in gateway.paths:
                    if not other.default:
                        host_default.setdefault(other.host or "*", (path, cluster))
            else:
                by_host.setdefault(path.host or "*", []).append((path, cluster))
    if defaults:
        by_host.setdefault("*", [])
    vhosts = []
    for host, entries in sorted(by_host.items(), key=lambda kv: (kv[0] == "*", kv[0])):
        # Exact paths first, then prefixes; longest first, stable for equal lengths (config
        # order). Envoy takes the first route that matches.
        ordered = sorted(
            enumerate(entries),
            key=lambda ie: (ie[1][0].path_type is not PathType.EXACT, -len(ie[1][0].path), ie[0]),
        )
        routes = []
        # A default backend answers what no path matched: last in every host, the host's own
        # Ingress's default first, else the first default of all (also for unknown hosts).
        fallback = host_default.get(host) or (defaults[0] if defaults else None)
        for path, cluster in [*(e for _, e in ordered), *([fallback] if fallback else [])]:
            action = rc.RouteAction(cluster=cluster, timeout=seconds(ROUTE_TIMEOUT_S))
            if path.grpc:
                action.timeout.CopyFrom(seconds(0))  # streams may be long; the client decides
            routes.append(rc.Route(match=route_match(path), route=action))
        domains = ["*"] if host == "*" else [host, f"{host}:{port}"]
        vhosts.append(rc.VirtualHost(name=f"gateway|{host}", domains=domains, routes=routes))
    config = route_pb2.RouteConfiguration(
        name=route_name(port), virtual_hosts=vhosts, validate_clusters={"value": False}
    )
    return config, problems


def _manager(
    port: int, route: str = "", filters: Sequence[hcm.HttpFilter] = ()
) -> hcm.HttpConnectionManager:
    manager = hcm.HttpConnectionManager(
        stat_prefix=f"gateway_{port}",
        codec_type=hcm.HttpConnectionManager.AUTO,
        rds=hcm.Rds(config_source=ads_source(), route_config_name=route or route_name(port)),
        http_filters=[
            *filters,
            hcm.HttpFilter(
                name="envoy.filters.http.router", typed_config=pack(router_pb2.Router())
            ),
        ],
        # Clients connect from outside the mesh: keep their X-Forwarded-For, mark edge.
        use_remote_address={"value": True},
    )
    return manager


def _hcm_filter(
    node: ProxyNode,
    port: int,
    routes: route_pb2.RouteConfiguration,
    plugins: PluginSet,
    problems: list[str],
    tls: bool = False,
    filters: Sequence[hcm.HttpFilter] = (),
) -> lc.Filter:
    """The connection manager of every chain on ``port``, after ``on_gateway_http`` (which
    may also set per-route config on ``routes``, the chain's RDS table). ``filters`` go before
    the router: the inert fault and CORS filters VirtualService routes configure per route."""
    manager = _manager(port, routes.name, filters)
    if plugins:
        ctx = ChainContext(node, Direction.GATEWAY, port, tls=tls)
        plugins.http(ctx, HttpChain(manager, routes))
        problems.extend(p for p in ctx.problems if p not in problems)
    return lc.Filter(
        name="envoy.filters.network.http_connection_manager", typed_config=pack(manager)
    )


def _cert_dir(secret: str, gateway: Gateway, certs_dir: str) -> Path:
    if "/" in secret:
        path = Path(secret)
        return path if path.is_absolute() else Path(gateway.file).parent / path
    return Path(certs_dir or "/etc/meshfed/gateway-certs") / secret


def _tls_chain(secret_dir: Path, hosts: Sequence[str], manager: lc.Filter) -> lc.FilterChain:
    context = tls_pb2.DownstreamTlsContext(
        common_tls_context=tls_pb2.CommonTlsContext(
            tls_certificates=[
                common_pb2.TlsCertificate(
                    certificate_chain=base_pb2.DataSource(filename=str(secret_dir / "tls.crt")),
                    private_key=base_pb2.DataSource(filename=str(secret_dir / "tls.key")),
                    watched_directory=base_pb2.WatchedDirectory(path=str(secret_dir)),
                )
            ],
            alpn_protocols=["h2", "http/1.1"],
        )
    )
    match = lc.FilterChainMatch()
    if "*" not in hosts:
        match.server_names.extend(hosts)
    return lc.FilterChain(
        name=f"tls|{secret_dir}",
        filter_chain_match=match,
        filters=[manager],
        transport_socket=base_pb2.TransportSocket(
            name="envoy.transport_sockets.tls", typed_config=pack(context)
        ),
    )


def _tls_listener(
    node: ProxyNode, port: int, chains: list[lc.FilterChain]
) -> listener_pb2.Listener:
    return listener_pb2.Listener(
        name=f"gateway|{node.ip}:{port}",
        address=socket_address(node.ip, port),
        listener_filters=[
            lc.ListenerFilter(
                name="envoy.filters.listener.tls_inspector",
                typed_config=pack(tls_inspector_pb2.TlsInspector()),
            )
        ],
        filter_chains=chains,
    )


def _not_claimed(vhost: rc.VirtualHost, plan: istio_gateway.PortPlan) -> bool:
    """Whether an Ingress virtual host keeps its place next to a Gateway's on one port: a
    host the Gateway's VirtualServices route is theirs (the documented precedence)."""
    return not (set(vhost.domains) & plan.domains)


def gateway_resources(
    node: ProxyNode, index: TrafficIndex, plugins: PluginSet = NO_PLUGINS
) -> tuple[list[listener_pb2.Listener], list[route_pb2.RouteConfiguration], list[str]]:
    """Listeners and route configs for the gateway ``node``, plus problems to report.

    Istio ``Gateway`` servers (:mod:`pilot.translate.istio_gateway`) and Ingress / meshfed
    Gateway routes share a port's listener; where both serve a host there, the Gateway wins.
    """
    http_port = node.outbound_http_port
    gateways = index.snapshot.gateways
    services = index.services
    listeners: list[listener_pb2.Listener] = []
    routes: list[route_pb2.RouteConfiguration] = []
    problems: list[str] = []
    route_filters = rule_filters()

    def make_manager(port: int, table: route_pb2.RouteConfiguration, tls: bool) -> lc.Filter:
        return _hcm_filter(node, port, table, plugins, problems, tls=tls, filters=route_filters)

    istio = istio_gateway.plans(node, index, make_manager, problems)
    by_port: dict[int, list[Gateway]] = {}
    for gw in gateways:
        by_port.setdefault(gw.port or http_port, []).append(gw)
    if not istio or http_port not in istio:
        by_port.setdefault(http_port, [])
    for port, gws in sorted(by_port.items()):
        config, route_problems = gateway_route_config(port, gws, services)
        problems.extend(route_problems)
        plan = istio.pop(port, None)
        if plan is not None and plan.kind != "http":
            if gws:
                problems.append(
                    f"port {port}: a Gateway serves {plan.kind} there, so the routes of "
                    f"{', '.join(g.ref for g in gws)} for it are not served"
                )
            istio[port] = plan
            continue
        if plan is not None:
            kept = [vh for vh in config.virtual_hosts if _not_claimed(vh, plan)]
            del config.virtual_hosts[:]
            config.virtual_hosts.extend([*plan.vhosts, *kept])
        routes.append(config)
        manager = _hcm_filter(
            node, port, config, plugins, problems, filters=route_filters if plan else ()
        )
        listeners.append(
            listener_pb2.Listener(
                name=f"gateway|{node.ip}:{port}",
                address=socket_address(node.ip, port),
                filter_chains=[lc.FilterChain(filters=[manager])],
            )
        )
    tls_dirs: dict[Path, list[str]] = {}
    tls_gateways = []
    for gw in gateways:
        if not gw.tls_hosts:
            continue
        tls_gateways.append(gw)
        for host, secret in gw.tls_hosts:
            hosts = tls_dirs.setdefault(_cert_dir(secret, gw, index.options.gateway_certs_dir), [])
            if host not in hosts:
                hosts.append(host)
    if tls_dirs:
        port = https_port(http_port)
        plan = istio.pop(port, None)
        if plan is not None and plan.kind != "tls":
            problems.append(
                f"port {port}: a Gateway serves {plan.kind} there, so Ingress TLS is not served"
            )
            istio[port] = plan
        else:
            taken = plan.server_names if plan is not None else set()
            config, route_problems = gateway_route_config(port, tls_gateways, services)
            routes.append(config)
            problems.extend(route_problems)
            manager = _hcm_filter(node, port, config, plugins, problems, tls=True)
            chains = []
            for folder, hosts in sorted(tls_dirs.items()):
                free = [h for h in hosts if h not in taken]
                if free and not ("*" in free and "*" in taken):
                    chains.append(_tls_chain(folder, free, manager))
            if plan is not None:
                chains.extend(plan.chains)
                routes.extend(plan.routes)
            listeners.append(_tls_listener(node, port, chains))
    for port, plan in sorted(istio.items()):
        if plan.kind == "http":
            config = route_pb2.RouteConfiguration(
                name=route_name(port), virtual_hosts=plan.vhosts, validate_clusters={"value": False}
            )
            routes.append(config)
            manager = make_manager(port, config, False)
            listeners.append(
                listener_pb2.Listener(
                    name=f"gateway|{node.ip}:{port}",
                    address=socket_address(node.ip, port),
                    filter_chains=[lc.FilterChain(filters=[manager])],
                )
            )
        elif plan.chains:  # Envoy refuses a listener without chains
            routes.extend(plan.routes)
            if plan.kind == "tls":
                listeners.append(_tls_listener(node, port, plan.chains))
            else:
                listeners.append(
                    listener_pb2.Listener(
                        name=f"gateway|{node.ip}:{port}",
                        address=socket_address(node.ip, port),
                        filter_chains=plan.chains,
                    )
                )
    return listeners, routes, problems
