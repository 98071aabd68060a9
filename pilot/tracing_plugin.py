"""Tracing as a listener plugin: Envoy's OpenTelemetry tracer on every HTTP connection manager.

When the mesh config's ``spec.tracing`` is enabled, every HTTP connection manager Pilot builds
for a sidecar (inbound and outbound) or a gateway gets ``tracing`` with the
``envoy.tracers.opentelemetry`` provider, and every sidecar and gateway gets the cluster
:data:`COLLECTOR_CLUSTER` (HTTP/2, the collector address of the mesh config), through which
Envoy exports its spans over OTLP/gRPC. ``random_sampling`` is the mesh config's ``sampling``
percent; a request that arrives with a sampling decision (W3C ``traceparent``) keeps it, so
the destination's sidecar traces exactly the requests the caller's sidecar traced.

With ``zipkin`` set, Envoy's Zipkin tracer (``envoy.tracers.zipkin``) takes the
OpenTelemetry one's place: spans go as Zipkin v2 JSON over HTTP to the cluster
:data:`ZIPKIN_CLUSTER`, 128-bit trace ids, a span per hop (not Zipkin's shared client/server
span, which OpenTelemetry-based collectors such as Jaeger do not merge), and the context
travels as B3 (``x-b3-*``) headers: what Istio 0.2's apps forward, so their traces stay one.

Each connection manager names its spans' service (OpenTelemetry ``service.name``): an inbound
chain by the service it serves, an outbound one by the proxy's own service (the registry's
endpoints at its address), else by the proxy's address. All of these are in the proxy's view
key, so listeners stay shareable. The output depends only on that and
:class:`~meshfed.core.tracing.TracingSettings`.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import grpc_service_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2, zipkin_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.type.v3 import percent_pb2

from meshfed.core.tracing import DISABLED, TracingSettings
from meshfed.core.xds import HTTP_OPTIONS_KEY, http2_options
from meshfed.pilot.plugins import ChainContext, Direction, HttpChain, PluginBase, ProxyContext
from meshfed.pilot.translate.protos import pack, socket_address

COLLECTOR_CLUSTER = "tracing-collector"
ZIPKIN_CLUSTER = "tracing-zipkin"
OTEL_TRACER = "envoy.tracers.opentelemetry"
ZIPKIN_TRACER = "envoy.tracers.zipkin"
ZIPKIN_ENDPOINT = "/api/v2/spans"
CONNECT_TIMEOUT_MS = 1000
EXPORT_TIMEOUT_MS = 1000


def collector_cluster(
    collector: str, name: str = COLLECTOR_CLUSTER, http2: bool = True
) -> cluster_pb2.Cluster:
    """The cluster to the collector ``host:port`` (an IP or a DNS name): HTTP/2 for
    OTLP/gRPC, HTTP/1.1 for a Zipkin receiver."""
    host, _, port = collector.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        kind = cluster_pb2.Cluster.STATIC
    except ValueError:
        kind = cluster_pb2.Cluster.STRICT_DNS
    cluster = cluster_pb2.Cluster(name=name, type=kind)
    cluster.connect_timeout.FromMilliseconds(CONNECT_TIMEOUT_MS)
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    assignment.endpoints.add().lb_endpoints.add().endpoint.address.CopyFrom(
        socket_address(host, int(port))
    )
    cluster.load_assignment.CopyFrom(assignment)
    if http2:
        cluster.typed_extension_protocol_options[HTTP_OPTIONS_KEY].CopyFrom(pack(http2_options()))
    return cluster


def service_name(ctx: ChainContext) -> str:
    """The ``service.name`` of the spans a chain's connection manager makes."""
    if ctx.direction is Direction.GATEWAY:
        return f"gateway-{ctx.proxy.ip}"
    served = sorted(s.hostname for s in ctx.services) if ctx.direction is Direction.INBOUND else []
    if served:
        return served[0]
    own = sorted({service.hostname for service, _ in ctx.own})
    return own[0] if own else f"sidecar-{ctx.proxy.ip}"


class TracingPlugin(PluginBase):
    """Adds Envoy's OpenTelemetry tracer per :class:`~meshfed.core.tracing.TracingSettings`."""

    name = "tracing"

    def __init__(self, settings: TracingSettings = DISABLED) -> None:
        self.settings = settings
        self._version = ""
        self._refresh()

    def _refresh(self) -> None:
        self._version = hashlib.sha256(repr(self.settings).encode()).hexdigest()[:16]

    def set_settings(self, settings: TracingSettings) -> None:
        """Replace the settings; the caller then calls ``PilotServer.plugins_changed()``."""
        self.settings = settings
        self._refresh()

    def version(self) -> str:
        return self._version

    def _tracing(self, ctx: ChainContext) -> hcm.HttpConnectionManager.Tracing:
        sampling = percent_pb2.Percent(value=self.settings.sampling)
        if self.settings.zipkin:
            zipkin = zipkin_pb2.ZipkinConfig(
                collector_cluster=ZIPKIN_CLUSTER,
                collector_endpoint=ZIPKIN_ENDPOINT,
                collector_endpoint_version=zipkin_pb2.ZipkinConfig.HTTP_JSON,
                collector_hostname=self.settings.zipkin,
                trace_id_128bit=True,
            )
            zipkin.shared_span_context.value = False
            return hcm.HttpConnectionManager.Tracing(
                provider=http_tracer_pb2.Tracing.Http(
                    name=ZIPKIN_TRACER, typed_config=pack(zipkin)
                ),
                random_sampling=sampling,
                # the Zipkin tracer has no service name of its own: the connection manager's
                # cluster name is the span's local endpoint
            )
        service = grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=COLLECTOR_CLUSTER)
        )
        service.timeout.FromMilliseconds(EXPORT_TIMEOUT_MS)
        tracer = opentelemetry_pb2.OpenTelemetryConfig(
            grpc_service=service, service_name=service_name(ctx)
        )
        return hcm.HttpConnectionManager.Tracing(
            provider=http_tracer_pb2.Tracing.Http(name=OTEL_TRACER, typed_config=pack(tracer)),
            random_sampling=sampling,
        )

    def _http(self, ctx: ChainContext, chain: HttpChain) -> None:
        if self.settings.enabled:
            chain.manager.tracing.CopyFrom(self._tracing(ctx))

    def on_inbound_http(self, ctx: ChainContext, chain: HttpChain) -> None:
        self._http(ctx, chain)

    def on_outbound_http(self, ctx: ChainContext, chain: HttpChain) -> None:
        self._http(ctx, chain)

    def on_gateway_http(self, ctx: ChainContext, chain: HttpChain) -> None:
        self._http(ctx, chain)

    def extra_clusters(self, ctx: ProxyContext) -> Sequence[cluster_pb2.Cluster]:
        if not self.settings.enabled:
            return ()
        if self.settings.zipkin:
            return (collector_cluster(self.settings.zipkin, ZIPKIN_CLUSTER, http2=False),)
        return (collector_cluster(self.settings.collector),)
