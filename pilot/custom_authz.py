"""``CUSTOM`` AuthorizationPolicies: Mixer's Check, asked only for the requests they match.

meshfed's one external authorizer is Mixer (provider ``mixer``), reached as the data path
reaches it: Envoy's ``ext_authz`` to the node-local Mixer client on the bootstrap cluster
:data:`~pilot.mixer_plugin.CLIENT_CLUSTER`. :func:`apply` puts, ahead of every RBAC filter
(so ``CUSTOM`` is decided before ``DENY`` and ``ALLOW``):

1. :func:`security.rbac.custom_shadow_filter`: the policies' rules as shadow rules, which
   only mark a request they match;
2. ``ext_authz`` named :data:`CUSTOM_AUTHZ`, enabled only for marked requests
   (``filter_enabled_metadata``), failing closed: an unreachable client or Mixer refuses.

Composition with the data path (:mod:`pilot.mixer_plugin`): its own ext_authz is enabled only
for requests *not* marked, so a request gets one Check either way; a ``CUSTOM`` Check carries
the data path's quota names when the data path checks that destination, so quota is charged
once too. A proxy without a node-local client gets, instead of the Check, a ``DENY`` of
what the policies match (fail closed) and a problem in ``proxy-status``: never a filter
naming a cluster it does not have.

An inbound TCP port (:func:`apply_tcp`) works alike with Envoy's network filters: a network
RBAC filter with the rules as shadow rules (HTTP-only parts dropped, as for DENY), then
``envoy.filters.network.ext_authz`` named :data:`CUSTOM_TCP_AUTHZ`, enabled only for marked
connections, failing closed; the data path's network ext_authz skips marked connections.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2 as http_authz
from envoy.extensions.filters.network.ext_authz.v3 import ext_authz_pb2 as tcp_authz
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.type.v3 import http_status_pb2

from meshfed.pilot.mixer_plugin import (
    CLIENT_CLUSTER,
    DESTINATION_SERVICE,
    FAIL_OPEN_HEADER,
    QUOTAS_HEADER,
    MixerDataPath,
    route_host,
)
from meshfed.pilot.plugins import ChainContext, HttpChain, TcpChain
from meshfed.pilot.translate.protos import pack
from meshfed.security import rbac

CUSTOM_AUTHZ = "envoy.filters.http.ext_authz.custom"
CUSTOM_TCP_AUTHZ = "envoy.filters.network.ext_authz.custom"
STAT_PREFIX = "custom"  # Envoy's http.<chain>.ext_authz.custom.* counters
CHECK_TIMEOUT = 1.0  # seconds; Envoy's bound on one CUSTOM Check to the local client

NO_CLIENT = (
    "authorization: CUSTOM AuthorizationPolicies {names} name provider 'mixer', but this proxy "
    "has no node-local Mixer client (bootstrap metadata MIXER_CLIENT), so the requests they "
    "match are refused; run it with `meshfed proxy --mixer HOST:PORT`"
)


def data_path_checks(ctx: ChainContext, data_path: MixerDataPath) -> bool:
    """Whether the data path's own Check is on this chain (mirrors the Mixer plugin)."""
    if not (data_path.enabled and data_path.check and ctx.proxy.mixer_client):
        return False
    hosts = {s.hostname for s in ctx.services}
    return not (hosts and hosts <= data_path.disabled_services)


def _service(quotas: Sequence[str]) -> grpc_service_pb2.GrpcService:
    service = grpc_service_pb2.GrpcService(
        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=CLIENT_CLUSTER)
    )
    service.timeout.FromMilliseconds(int(CHECK_TIMEOUT * 1000))
    service.initial_metadata.append(base_pb2.HeaderValue(key=FAIL_OPEN_HEADER, value="false"))
    if quotas:
        service.initial_metadata.append(
            base_pb2.HeaderValue(key=QUOTAS_HEADER, value=",".join(quotas))
        )
    return service


def check_filter(quotas: Sequence[str] = ()) -> hcm.HttpFilter:
    """The ext_authz filter of ``CUSTOM`` policies: only marked requests, fail closed."""
    config = http_authz.ExtAuthz(
        grpc_service=_service(quotas),
        transport_api_version=config_source_pb2.ApiVersion.V3,
        failure_mode_allow=False,
        status_on_error=http_status_pb2.HttpStatus(code=http_status_pb2.StatusCode.Forbidden),
        include_peer_certificate=True,
        filter_enabled_metadata=rbac.custom_matched(),
        stat_prefix=STAT_PREFIX,
    )
    return hcm.HttpFilter(name=CUSTOM_AUTHZ, typed_config=pack(config))


def _name_destination(ctx: ChainContext, routes: route_pb2.RouteConfiguration) -> None:
    """Tell the client each route's destination service, as the data path does (a gateway's
    routes each name theirs; an inbound port's is the one service it serves)."""
    only = ctx.services[0].hostname if len(ctx.services) == 1 else ""
    for vhost in routes.virtual_hosts:
        for route in vhost.routes:
            host = route_host(route) or only
            if not host:
                continue
            per = http_authz.ExtAuthzPerRoute(
                check_settings=http_authz.CheckSettings(
                    context_extensions={DESTINATION_SERVICE: host}
                )
            )
            route.typed_per_filter_config[CUSTOM_AUTHZ].CopyFrom(pack(per))


def apply(
    ctx: ChainContext,
    chain: HttpChain,
    policies: Sequence[rbac.Policy],
    data_path: MixerDataPath,
) -> None:
    """Put the ``CUSTOM`` policies' filters on an inbound or gateway HTTP chain, ahead of the
    rest."""
    custom = [p for p in policies if p.action is rbac.Action.CUSTOM]
    if not custom:
        return
    if not ctx.proxy.mixer_client:
        ctx.report(NO_CLIENT.format(names=", ".join(sorted(p.name for p in custom))))
        deny = rbac.custom_deny_filter(custom)
        if deny is not None:
            chain.add_filter(deny)
        return
    shadow = rbac.custom_shadow_filter(custom)
    if shadow is None:
        return
    chain.add_filter(shadow)
    chain.add_filter(check_filter(data_path.quotas if data_path_checks(ctx, data_path) else ()))
    if chain.route_config is not None:
        _name_destination(ctx, chain.route_config)


def tcp_check_filter(port: int, quotas: Sequence[str] = ()) -> lc.Filter:
    """The network ext_authz of ``CUSTOM`` policies on an inbound TCP port: only marked
    connections, fail closed (a refused connection is closed before a byte reaches the app)."""
    config = tcp_authz.ExtAuthz(
        stat_prefix=f"{STAT_PREFIX}_tcp_{port}",
        grpc_service=_service(quotas),
        failure_mode_allow=False,
        include_peer_certificate=True,
        transport_api_version=config_source_pb2.ApiVersion.V3,
        filter_enabled_metadata=rbac.custom_network_matched(),
    )
    return lc.Filter(name=CUSTOM_TCP_AUTHZ, typed_config=pack(config))


def apply_tcp(
    ctx: ChainContext,
    chain: TcpChain,
    policies: Sequence[rbac.Policy],
    data_path: MixerDataPath,
) -> None:
    """Put the ``CUSTOM`` policies' network filters on an inbound TCP chain, ahead of the
    other RBAC filters: Mixer's Check for the connections their rules match."""
    custom = [p for p in policies if p.action is rbac.Action.CUSTOM]
    if not custom:
        return
    prefix = f"inbound_tcp_{ctx.port}."
    if not ctx.proxy.mixer_client:
        ctx.report(NO_CLIENT.format(names=", ".join(sorted(p.name for p in custom))))
        refused = rbac.custom_network_deny_filter(custom, prefix)
        if refused is not None:
            chain.add_filter(refused)
        return
    shadow = rbac.custom_network_shadow_filter(custom, prefix)
    if shadow is None:
        return
    chain.add_filter(shadow)
    quotas = data_path.quotas if data_path_checks(ctx, data_path) else ()
    chain.add_filter(tcp_check_filter(ctx.port, quotas))
