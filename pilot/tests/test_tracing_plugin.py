"""Tracing's listener plugin: which connection managers get Envoy's OpenTelemetry tracer, the
service name each one reports, the sampling, and the collector cluster."""

from __future__ import annotations

import attrs
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.trace.v3 import opentelemetry_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)

from meshfed.core.tracing import TracingSettings
from meshfed.pilot import xds_types as T
from meshfed.pilot.mtls_plugin import MtlsPlugin
from meshfed.pilot.plugins import protocol_mismatches
from meshfed.pilot.tracing_plugin import (
    COLLECTOR_CLUSTER,
    OTEL_TRACER,
    TracingPlugin,
    collector_cluster,
)
from meshfed.pilot.views import ProxyView
from meshfed.security import mtls
from pilot.tests.test_plugins import GATEWAY, SIDECAR, WEB, cache_with, listeners

ON = TracingSettings(enabled=True, collector="127.0.0.77:4317", sampling=25.0)
CLIENT_ONLY = attrs.evolve(SIDECAR, id="sidecar~10.0.0.8~c.default~x", ip="10.0.0.8", app_ports=())


def managers(listener: listener_pb2.Listener) -> list[hcm.HttpConnectionManager]:
    out = []
    for chain in listener.filter_chains:
        for filt in chain.filters:
            if filt.typed_config.Is(hcm.HttpConnectionManager.DESCRIPTOR):
                manager = hcm.HttpConnectionManager()
                filt.typed_config.Unpack(manager)
                out.append(manager)
    return out


def tracer_of(manager: hcm.HttpConnectionManager) -> opentelemetry_pb2.OpenTelemetryConfig:
    assert manager.tracing.provider.name == OTEL_TRACER
    config = opentelemetry_pb2.OpenTelemetryConfig()
    assert manager.tracing.provider.typed_config.Unpack(config)
    return config


def clusters(view: ProxyView) -> dict[str, cluster_pb2.Cluster]:
    out = {}
    for name, res in view.get(T.CLUSTER).items():
        cluster = cluster_pb2.Cluster()
        res.body.Unpack(cluster)
        out[name] = cluster
    return out


def test_the_plugin_matches_the_protocol() -> None:
    assert protocol_mismatches(TracingPlugin(ON)) == []


def test_disabled_adds_nothing() -> None:
    view = cache_with(TracingPlugin()).view(SIDECAR)
    for listener in listeners(view).values():
        for manager in managers(listener):
            assert not manager.HasField("tracing")
    assert COLLECTOR_CLUSTER not in clusters(view)


def test_every_sidecar_connection_manager_traces_to_the_collector() -> None:
    view = cache_with(TracingPlugin(ON)).view(SIDECAR)
    found = listeners(view)
    (inbound,) = managers(found["inbound|10.0.0.5:9080"])
    (outbound,) = managers(found["outbound_http"])
    for manager in (inbound, outbound):
        assert manager.tracing.random_sampling.value == 25.0
        tracer = tracer_of(manager)
        assert tracer.grpc_service.envoy_grpc.cluster_name == COLLECTOR_CLUSTER
        # the sidecar of web reports web's spans, in and out
        assert tracer.service_name == WEB.hostname
    cluster = clusters(view)[COLLECTOR_CLUSTER]
    assert cluster.type == cluster_pb2.Cluster.STATIC
    address = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert (address.socket_address.address, address.socket_address.port_value) == (
        "127.0.0.77",
        4317,
    )
    assert cluster.typed_extension_protocol_options  # HTTP/2: OTLP is gRPC


def test_a_proxy_without_own_service_and_a_gateway_are_named_by_address() -> None:
    cache = cache_with(TracingPlugin(ON))
    (outbound,) = managers(listeners(cache.view(CLIENT_ONLY))["outbound_http"])
    assert tracer_of(outbound).service_name == "sidecar-10.0.0.8"
    gateway = cache.view(GATEWAY)
    traced = [m for lst in listeners(gateway).values() for m in managers(lst)]
    assert traced
    assert {tracer_of(m).service_name for m in traced} == {"gateway-127.0.0.9"}
    assert COLLECTOR_CLUSTER in clusters(gateway)


def test_both_chains_of_a_mutual_tls_port_trace() -> None:
    cache = cache_with(MtlsPlugin(mtls.Policy(mtls.Mode.PERMISSIVE)), TracingPlugin(ON))
    inbound = managers(listeners(cache.view(SIDECAR))["inbound|10.0.0.5:9080"])
    assert len(inbound) == 2
    assert all(tracer_of(m).service_name == WEB.hostname for m in inbound)


def test_a_sampling_change_pushes_listeners_only_and_a_collector_change_the_cluster() -> None:
    plugin = TracingPlugin(ON)
    cache = cache_with(plugin)
    before = cache.view(SIDECAR)
    plugin.set_settings(attrs.evolve(ON, sampling=0.0))
    cache.refresh_plugins()
    cache.rebuild()
    after = cache.view(SIDECAR)
    assert after.version(T.LISTENER) != before.version(T.LISTENER)
    assert after.version(T.CLUSTER) == before.version(T.CLUSTER)
    (outbound,) = managers(listeners(after)["outbound_http"])
    assert outbound.tracing.random_sampling.value == 0.0
    plugin.set_settings(attrs.evolve(ON, collector="collector.example.com:4317"))
    cache.refresh_plugins()
    cache.rebuild()
    moved = clusters(cache.view(SIDECAR))[COLLECTOR_CLUSTER]
    assert moved.type == cluster_pb2.Cluster.STRICT_DNS


def test_collector_cluster_for_an_ipv6_collector() -> None:
    cluster = collector_cluster("[::1]:4317")
    address = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert address.socket_address.address == "::1"
    assert cluster.type == cluster_pb2.Cluster.STATIC


def test_zipkin_puts_envoys_zipkin_tracer_on_every_manager_and_its_cluster() -> None:
    from envoy.config.trace.v3 import zipkin_pb2

    from meshfed.pilot.tracing_plugin import ZIPKIN_CLUSTER, ZIPKIN_TRACER

    zipkin = attrs.evolve(ON, zipkin="127.0.0.78:9411")
    for proxy in (SIDECAR, GATEWAY):
        view = cache_with(TracingPlugin(zipkin)).view(proxy)
        traced = [m for listener in listeners(view).values() for m in managers(listener)]
        assert traced
        for manager in traced:
            assert manager.tracing.provider.name == ZIPKIN_TRACER
            assert manager.tracing.random_sampling.value == 25.0
            config = zipkin_pb2.ZipkinConfig()
            assert manager.tracing.provider.typed_config.Unpack(config)
            assert config.collector_cluster == ZIPKIN_CLUSTER
            assert config.collector_endpoint == "/api/v2/spans"
            assert config.collector_endpoint_version == zipkin_pb2.ZipkinConfig.HTTP_JSON
            assert config.trace_id_128bit  # the ids W3C and OpenTelemetry use
            assert config.shared_span_context.value is False
        found = clusters(view)
        assert COLLECTOR_CLUSTER not in found  # Envoy sends nothing over OTLP then
        cluster = found[ZIPKIN_CLUSTER]
        address = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
        assert (address.socket_address.address, address.socket_address.port_value) == (
            "127.0.0.78",
            9411,
        )
        assert not cluster.typed_extension_protocol_options  # HTTP/1.1 JSON POSTs
