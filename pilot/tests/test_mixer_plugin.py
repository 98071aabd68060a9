"""Mixer's listener plugin: which chains get ext_authz and gRPC access logs, and for whom."""

from __future__ import annotations

import attrs
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2 as http_authz
from envoy.extensions.filters.network.ext_authz.v3 import ext_authz_pb2 as tcp_authz
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshfed.pilot import xds_types as T
from meshfed.pilot.cache import check_consistency
from meshfed.pilot.mixer_plugin import (
    FAIL_OPEN_HEADER,
    HTTP_AUTHZ,
    NO_CLIENT,
    QUOTAS_HEADER,
    TCP_AUTHZ,
    MixerDataPath,
    MixerPlugin,
    client_cluster,
)
from meshfed.pilot.mtls_plugin import MtlsPlugin
from meshfed.security import mtls
from pilot.tests.test_plugins import (
    DB,
    DB_SIDECAR,
    GATEWAY,
    SIDECAR,
    WEB,
    cache_with,
    http_filters,
    listeners,
)

ON = MixerDataPath(enabled=True, quotas=("requestcount",))
WITH_CLIENT = attrs.evolve(SIDECAR, mixer_client=True)
DB_WITH_CLIENT = attrs.evolve(DB_SIDECAR, mixer_client=True)
GW_WITH_CLIENT = attrs.evolve(GATEWAY, mixer_client=True)
ROUTER = "envoy.filters.http.router"


def manager_of(listener: listener_pb2.Listener) -> hcm.HttpConnectionManager:
    manager = hcm.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    return manager


def test_inbound_http_gets_check_and_report_to_the_local_client() -> None:
    cache = cache_with(MixerPlugin(ON))
    view = cache.view(WITH_CLIENT)
    inbound = listeners(view)["inbound|10.0.0.5:9080"]
    assert http_filters(inbound) == [[HTTP_AUTHZ, ROUTER]]
    manager = manager_of(inbound)
    authz = http_authz.ExtAuthz()
    manager.http_filters[0].typed_config.Unpack(authz)
    assert authz.grpc_service.envoy_grpc.cluster_name == "mixer-client"
    assert authz.include_peer_certificate and authz.failure_mode_allow
    assert authz.status_on_error.code == 503
    meta = {h.key: h.value for h in authz.grpc_service.initial_metadata}
    assert meta == {FAIL_OPEN_HEADER: "true", QUOTAS_HEADER: "requestcount"}
    # the destination travels with every Check, per route
    per = http_authz.ExtAuthzPerRoute()
    route = manager.route_config.virtual_hosts[0].routes[0]
    route.typed_per_filter_config[HTTP_AUTHZ].Unpack(per)
    assert dict(per.check_settings.context_extensions) == {"destination.service": WEB.hostname}
    (log,) = manager.access_log
    config = als_pb2.HttpGrpcAccessLogConfig()
    log.typed_config.Unpack(config)
    assert config.common_config.grpc_service.envoy_grpc.cluster_name == "mixer-client"
    assert [(t.tag, t.literal.value) for t in config.common_config.custom_tags] == [
        ("destination.service", WEB.hostname)
    ]
    # outbound is the caller's side: Mixer sees each request once, at the destination
    assert HTTP_AUTHZ not in http_filters(listeners(view)["outbound_http"])[0]
    assert view.problems == [] or NO_CLIENT not in view.problems
    assert check_consistency(view) == []


def test_inbound_tcp_gets_network_authz_and_tcp_log() -> None:
    cache = cache_with(MixerPlugin(ON))
    inbound = listeners(cache.view(DB_WITH_CLIENT))["inbound|10.0.0.7:5432"]
    chain = inbound.filter_chains[0]
    assert [f.name for f in chain.filters] == [TCP_AUTHZ, "envoy.filters.network.tcp_proxy"]
    authz = tcp_authz.ExtAuthz()
    chain.filters[0].typed_config.Unpack(authz)
    assert authz.grpc_service.envoy_grpc.cluster_name == "mixer-client"
    proxy = tcp_proxy_pb2.TcpProxy()
    chain.filters[1].typed_config.Unpack(proxy)
    assert [a.name for a in proxy.access_log] == ["envoy.access_loggers.tcp_grpc"]


def test_gateway_routes_name_their_destination() -> None:
    cache = cache_with(MixerPlugin(ON))
    view = cache.view(GW_WITH_CLIENT)
    (gw_listener,) = listeners(view).values()
    assert http_filters(gw_listener) == [[HTTP_AUTHZ, ROUTER]]
    (table,) = view.get(T.ROUTE).values()
    routes = route_pb2.RouteConfiguration()
    table.body.Unpack(routes)
    per = http_authz.ExtAuthzPerRoute()
    routes.virtual_hosts[0].routes[0].typed_per_filter_config[HTTP_AUTHZ].Unpack(per)
    assert per.check_settings.context_extensions["destination.service"] == WEB.hostname


def test_a_proxy_without_a_local_client_gets_no_filter_and_a_problem() -> None:
    cache = cache_with(MixerPlugin(ON))
    for node in (SIDECAR, GATEWAY):
        view = cache.view(node)
        for listener in listeners(view).values():
            assert all(HTTP_AUTHZ not in names for names in http_filters(listener))
        assert NO_CLIENT in view.problems
    tcp = listeners(cache.view(DB_SIDECAR))["inbound|10.0.0.7:5432"]
    assert TCP_AUTHZ not in [f.name for f in tcp.filter_chains[0].filters]


def test_switched_off_per_mesh_and_per_destination() -> None:
    off = cache_with(MixerPlugin(MixerDataPath(enabled=False)))
    view = off.view(WITH_CLIENT)
    assert http_filters(listeners(view)["inbound|10.0.0.5:9080"]) == [[ROUTER]]
    assert NO_CLIENT not in off.view(SIDECAR).problems
    skip_db = cache_with(MixerPlugin(attrs.evolve(ON, disabled_services=frozenset({DB.hostname}))))
    tcp = listeners(skip_db.view(DB_WITH_CLIENT))["inbound|10.0.0.7:5432"]
    assert [f.name for f in tcp.filter_chains[0].filters] == ["envoy.filters.network.tcp_proxy"]
    web = listeners(skip_db.view(WITH_CLIENT))["inbound|10.0.0.5:9080"]
    assert http_filters(web) == [[HTTP_AUTHZ, ROUTER]]
    # at a gateway, an opted-out destination's routes turn the check off
    skip_web = cache_with(
        MixerPlugin(attrs.evolve(ON, disabled_services=frozenset({WEB.hostname})))
    )
    (table,) = skip_web.view(GW_WITH_CLIENT).get(T.ROUTE).values()
    routes = route_pb2.RouteConfiguration()
    table.body.Unpack(routes)
    per = http_authz.ExtAuthzPerRoute()
    routes.virtual_hosts[0].routes[0].typed_per_filter_config[HTTP_AUTHZ].Unpack(per)
    assert per.disabled


def test_fail_closed_and_report_only() -> None:
    cache = cache_with(MixerPlugin(attrs.evolve(ON, fail_open=False, check=False)))
    inbound = listeners(cache.view(WITH_CLIENT))["inbound|10.0.0.5:9080"]
    assert http_filters(inbound) == [[ROUTER]]
    assert len(manager_of(inbound).access_log) == 1
    closed = cache_with(MixerPlugin(attrs.evolve(ON, fail_open=False)))
    manager = manager_of(listeners(closed.view(WITH_CLIENT))["inbound|10.0.0.5:9080"])
    authz = http_authz.ExtAuthz()
    manager.http_filters[0].typed_config.Unpack(authz)
    assert not authz.failure_mode_allow
    assert {h.key: h.value for h in authz.grpc_service.initial_metadata}[
        FAIL_OPEN_HEADER
    ] == "false"


def test_mtls_wraps_mixer_and_a_config_change_changes_only_listeners() -> None:
    plugin = MixerPlugin(ON)
    cache = cache_with(MtlsPlugin(mtls.Policy(mtls.Mode.PERMISSIVE)), plugin)
    inbound = listeners(cache.view(WITH_CLIENT))["inbound|10.0.0.5:9080"]
    assert http_filters(inbound) == [[HTTP_AUTHZ, ROUTER]] * 2  # the mTLS and plain chains
    before = cache.view(WITH_CLIENT)
    clusters, listeners_v = before.version(T.CLUSTER), before.version(T.LISTENER)
    plugin.set_config(attrs.evolve(ON, fail_open=False))
    cache.refresh_plugins()
    cache.rebuild()
    after = cache.view(WITH_CLIENT)
    assert after.version(T.CLUSTER) == clusters
    assert after.version(T.LISTENER) != listeners_v


def test_client_cluster_is_http2_on_the_socket() -> None:
    cluster = client_cluster("/run/mixer.sock")
    assert cluster.name == "mixer-client"
    address = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert address.pipe.path == "/run/mixer.sock"
    assert cluster.typed_extension_protocol_options


def _routes_of(manager: hcm.HttpConnectionManager) -> list[tuple[str, bool, str]]:
    out = []
    for route in manager.route_config.virtual_hosts[0].routes:
        per = http_authz.ExtAuthzPerRoute()
        route.typed_per_filter_config[HTTP_AUTHZ].Unpack(per)
        host = per.check_settings.context_extensions.get("destination.service", "")
        out.append((route.match.prefix or route.match.path, per.disabled, host))
    return out


def test_a_disabled_route_is_unchecked_and_the_rest_of_the_destination_checked() -> None:
    plugin = MixerPlugin(attrs.evolve(ON, disabled_routes=((WEB.hostname, "/healthz"),)))
    inbound = listeners(cache_with(plugin).view(WITH_CLIENT))["inbound|10.0.0.5:9080"]
    manager = manager_of(inbound)
    assert _routes_of(manager) == [("/healthz", True, ""), ("/", False, WEB.hostname)]
    routes = manager.route_config.virtual_hosts[0].routes
    assert routes[0].route == routes[1].route  # the unchecked copy goes where the route went
    # another destination's prefix changes nothing here; a route inside the prefix is off
    other = MixerPlugin(attrs.evolve(ON, disabled_routes=((DB.hostname, "/healthz"),)))
    inbound = listeners(cache_with(other).view(WITH_CLIENT))["inbound|10.0.0.5:9080"]
    assert _routes_of(manager_of(inbound)) == [("/", False, WEB.hostname)]
    everything = MixerPlugin(attrs.evolve(ON, disabled_routes=((WEB.hostname, "/"),)))
    inbound = listeners(cache_with(everything).view(WITH_CLIENT))["inbound|10.0.0.5:9080"]
    assert _routes_of(manager_of(inbound)) == [("/", True, "")]
    assert HTTP_AUTHZ in http_filters(inbound)[0]  # the filter stays: the log still reports
