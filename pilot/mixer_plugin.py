"""Mixer in the data path, as a listener plugin: Envoy's ext_authz and gRPC access logs.

Today's Envoy has no Mixer filter; it has ``ext_authz`` (HTTP and network) and the gRPC
access-log service. When the mesh config enables Mixer's data path, this plugin puts them on:

- every inbound HTTP chain of a sidecar and every HTTP chain of a gateway:
  ``envoy.filters.http.ext_authz`` (Check) and an ``http_grpc`` access log (Report);
- every inbound TCP chain of a sidecar: ``envoy.filters.network.ext_authz`` and a ``tcp_grpc``
  access log on its ``tcp_proxy``.

The HTTP and network ``ext_authz`` skip a request (a connection) a ``CUSTOM``
AuthorizationPolicy already sent to Mixer (:mod:`pilot.custom_authz`; ``filter_enabled_metadata``
on the mark its shadow RBAC filter leaves), so each is checked once.

Both talk gRPC to the **node-local Mixer client** (``nodeagent/mixerclient``) through the
static cluster :data:`CLIENT_CLUSTER` on a Unix socket, which ``meshfed proxy --mixer`` writes
into the bootstrap (:func:`client_cluster`) and announces with the node metadata
``MIXER_CLIENT=true`` (:attr:`ProxyNode.mixer_client`). A proxy without it gets no Mixer filter
(a filter naming a missing cluster would be rejected with the whole listener) and a problem in
``proxy-status`` instead.

What Envoy cannot tell the client is passed alongside: the destination service of an inbound
chain (a literal custom tag on the access log, a per-route ``context_extensions`` entry for
ext_authz), gateway routes' destination (per route), and the network fail policy and quota
names (gRPC initial metadata of every Check). The output depends only on the node's
``mixer_client`` flag, the chain's context and :class:`MixerDataPath`; never on Mixer's rules,
which stay in Mixer.
"""

from __future__ import annotations

import hashlib

import attrs
from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import (
    base_pb2,
    config_source_pb2,
    grpc_service_pb2,
)
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2 as http_authz
from envoy.extensions.filters.network.ext_authz.v3 import ext_authz_pb2 as tcp_authz
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.type.tracing.v3 import custom_tag_pb2
from envoy.type.v3 import http_status_pb2

from meshfed.core.tracing import TRACE_HEADERS
from meshfed.core.xds import unix_socket_grpc_cluster
from meshfed.pilot.plugins import ChainContext, HttpChain, PluginBase, TcpChain
from meshfed.pilot.translate import names
from meshfed.pilot.translate.protos import pack
from meshfed.security import rbac

CLIENT_CLUSTER = "mixer-client"
HTTP_AUTHZ = "envoy.filters.http.ext_authz"
TCP_AUTHZ = "envoy.filters.network.ext_authz"
HTTP_LOG = "envoy.access_loggers.http_grpc"
TCP_LOG = "envoy.access_loggers.tcp_grpc"

# Keys the client reads; shared with nodeagent.mixerclient (which may import this layer).
DESTINATION_SERVICE = "destination.service"  # context extension / custom tag
FAIL_OPEN_HEADER = "x-meshfed-mixer-fail-open"  # "true" | "false"
QUOTAS_HEADER = "x-meshfed-mixer-quotas"  # comma-separated quota names
# Request headers the access log carries into request.headers (Envoy logs only those named);
# the trace headers (W3C and B3) let Mixer's Report spans join each request's trace.
LOGGED_HEADERS = (
    "x-request-id",
    "user-agent",
    "referer",
    "content-type",
    "x-forwarded-for",
    *TRACE_HEADERS,
)

NO_CLIENT = (
    "mixer: this proxy has no node-local Mixer client (bootstrap metadata MIXER_CLIENT), so its "
    "listeners carry no policy check or telemetry; run it with `meshfed proxy --mixer HOST:PORT`"
)


@attrs.frozen
class MixerDataPath:
    """What the mesh config says about Mixer's filters (``spec.mixer.dataPath``)."""

    enabled: bool = False
    fail_open: bool = True  # Mixer (or the local client) unreachable: pass, else 503
    check: bool = True
    report: bool = True
    disabled_services: frozenset[str] = frozenset()
    # (destination hostname, path prefix): requests there are not checked (health probes,
    # public assets) though the rest of the destination is; they are still reported
    disabled_routes: tuple[tuple[str, str], ...] = ()
    quotas: tuple[str, ...] = ()
    check_timeout: float = 1.0  # Envoy's bound on one Check call to the local client
    log_flush: float = 0.2  # how long Envoy buffers access-log entries before streaming them


def client_cluster(socket_path: str) -> cluster_pb2.Cluster:
    """The bootstrap's static cluster to the node-local Mixer client's Unix socket (HTTP/2)."""
    return unix_socket_grpc_cluster(CLIENT_CLUSTER, socket_path)


class MixerPlugin(PluginBase):
    """Adds Mixer's Check and Report filters per :class:`MixerDataPath`."""

    name = "mixer"

    def __init__(self, config: MixerDataPath | None = None) -> None:
        self.config = config or MixerDataPath()
        self._version = ""
        self._refresh()

    def _refresh(self) -> None:
        self._version = hashlib.sha256(repr(self.config).encode()).hexdigest()[:16]

    def set_config(self, config: MixerDataPath) -> None:
        """Replace the config; the caller then calls ``PilotServer.plugins_changed()``."""
        self.config = config
        self._refresh()

    def version(self) -> str:
        return self._version

    # -- decisions ----------------------------------------------------------------------------
    def _applies(self, ctx: ChainContext) -> bool:
        if not self.config.enabled or not (self.config.check or self.config.report):
            return False
        if not ctx.proxy.mixer_client:
            ctx.report(NO_CLIENT)
            return False
        hosts = {s.hostname for s in ctx.services}
        # A chain whose every destination opted out gets nothing (per-destination switch).
        return not (hosts and hosts <= self.config.disabled_services)

    def _grpc_service(self, check: bool) -> grpc_service_pb2.GrpcService:
        service = grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=CLIENT_CLUSTER)
        )
        if check:
            service.timeout.FromMilliseconds(int(self.config.check_timeout * 1000))
            service.initial_metadata.append(
                base_pb2.HeaderValue(
                    key=FAIL_OPEN_HEADER, value="true" if self.config.fail_open else "false"
                )
            )
            if self.config.quotas:
                service.initial_metadata.append(
                    base_pb2.HeaderValue(key=QUOTAS_HEADER, value=",".join(self.config.quotas))
                )
        return service

    def _common_log(self, ctx: ChainContext, log_name: str) -> als_pb2.CommonGrpcAccessLogConfig:
        common = als_pb2.CommonGrpcAccessLogConfig(
            log_name=log_name,
            grpc_service=self._grpc_service(check=False),
            transport_api_version=config_source_pb2.ApiVersion.V3,
        )
        common.buffer_flush_interval.FromMilliseconds(int(self.config.log_flush * 1000))
        if len(ctx.services) == 1:
            common.custom_tags.append(
                custom_tag_pb2.CustomTag(
                    tag=DESTINATION_SERVICE,
                    literal=custom_tag_pb2.CustomTag.Literal(value=ctx.services[0].hostname),
                )
            )
        return common

    def _http_filter(self) -> http_authz.ExtAuthz:
        return http_authz.ExtAuthz(
            grpc_service=self._grpc_service(check=True),
            transport_api_version=config_source_pb2.ApiVersion.V3,
            failure_mode_allow=self.config.fail_open,
            status_on_error=http_status_pb2.HttpStatus(
                code=http_status_pb2.StatusCode.ServiceUnavailable
            ),
            include_peer_certificate=True,
            # A request a CUSTOM AuthorizationPolicy sent to Mixer already had its Check.
            filter_enabled_metadata=rbac.custom_matched(invert=True),
        )

    def _http(self, ctx: ChainContext, chain: HttpChain) -> None:
        if not self._applies(ctx):
            return
        direction = ctx.direction.value
        if self.config.check:
            authz = self._http_filter()
            chain.add_filter(hcm.HttpFilter(name=HTTP_AUTHZ, typed_config=pack(authz)))
            if chain.route_config is not None:
                self._per_route(ctx, chain.route_config)
        if self.config.report:
            http_log = als_pb2.HttpGrpcAccessLogConfig(
                common_config=self._common_log(ctx, f"mixer_{direction}_{ctx.port}"),
                additional_request_headers_to_log=list(LOGGED_HEADERS),
            )
            chain.add_access_log(
                accesslog_pb2.AccessLog(name=HTTP_LOG, typed_config=pack(http_log))
            )

    def _per_route(self, ctx: ChainContext, routes: route_pb2.RouteConfiguration) -> None:
        """Name each route's destination for Check; turn the check off for opted-out
        destinations and, per :attr:`MixerDataPath.disabled_routes`, path prefixes."""
        for vhost in routes.virtual_hosts:
            out: list[rc.Route] = []
            for route in vhost.routes:
                host = route_host(route) or (
                    ctx.services[0].hostname if len(ctx.services) == 1 else ""
                )
                if not host:
                    out.append(route)
                    continue
                prefixes = [p for h, p in self.config.disabled_routes if h == host]
                if host in self.config.disabled_services or any(
                    _covers(p, route.match) for p in prefixes
                ):
                    _set_per_route(route, http_authz.ExtAuthzPerRoute(disabled=True))
                    out.append(route)
                    continue
                # A narrower opted-out prefix of this route: a copy of the route just for it,
                # ahead of it, so those paths go where they went, only unchecked.
                for prefix in prefixes:
                    if route.match.WhichOneof("path_specifier") == "prefix" and prefix.startswith(
                        route.match.prefix
                    ):
                        unchecked = rc.Route()
                        unchecked.CopyFrom(route)
                        unchecked.match.prefix = prefix
                        if unchecked.name:
                            unchecked.name += "-unchecked"
                        _set_per_route(unchecked, http_authz.ExtAuthzPerRoute(disabled=True))
                        out.append(unchecked)
                _set_per_route(
                    route,
                    http_authz.ExtAuthzPerRoute(
                        check_settings=http_authz.CheckSettings(
                            context_extensions={DESTINATION_SERVICE: host}
                        )
                    ),
                )
                out.append(route)
            del vhost.routes[:]
            vhost.routes.extend(out)

    # -- hooks --------------------------------------------------------------------------------
    def on_inbound_http(self, ctx: ChainContext, chain: HttpChain) -> None:
        self._http(ctx, chain)

    def on_gateway_http(self, ctx: ChainContext, chain: HttpChain) -> None:
        self._http(ctx, chain)

    def on_inbound_tcp(self, ctx: ChainContext, chain: TcpChain) -> None:
        if not self._applies(ctx):
            return
        if self.config.check:
            authz = tcp_authz.ExtAuthz(
                stat_prefix=f"mixer_tcp_{ctx.port}",
                grpc_service=self._grpc_service(check=True),
                failure_mode_allow=self.config.fail_open,
                include_peer_certificate=True,
                transport_api_version=config_source_pb2.ApiVersion.V3,
                # A connection a CUSTOM AuthorizationPolicy sent to Mixer already had its Check.
                filter_enabled_metadata=rbac.custom_network_matched(invert=True),
            )
            chain.add_filter(lc.Filter(name=TCP_AUTHZ, typed_config=pack(authz)))
        if self.config.report:
            tcp_log = als_pb2.TcpGrpcAccessLogConfig(
                common_config=self._common_log(ctx, f"mixer_tcp_{ctx.port}")
            )
            chain.add_access_log(accesslog_pb2.AccessLog(name=TCP_LOG, typed_config=pack(tcp_log)))


def route_host(route: rc.Route) -> str:
    """The mesh service a route sends to (its cluster's, or its first weighted cluster's)."""
    action = route.route
    cluster = action.cluster
    if not cluster and action.weighted_clusters.clusters:
        cluster = action.weighted_clusters.clusters[0].name
    parsed = names.parse_outbound_cluster(cluster)
    return parsed[0] if parsed else ""


def _set_per_route(route: rc.Route, per: http_authz.ExtAuthzPerRoute) -> None:
    route.typed_per_filter_config[HTTP_AUTHZ].CopyFrom(pack(per))


def _covers(prefix: str, match: rc.RouteMatch) -> bool:
    """Whether every path ``match`` takes starts with ``prefix`` (so the whole route is out).
    Regex matches are never judged covered: when in doubt, the check stays on."""
    kind = match.WhichOneof("path_specifier")
    if kind == "prefix":
        return match.prefix.startswith(prefix)
    if kind == "path":
        return match.path.startswith(prefix)
    return False
