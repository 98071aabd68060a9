"""Tracing as a listener plugin: Envoy's OpenTelemetry tracer on every HTTP connection manager.

When the mesh config's ``spec.tracing`` is enabled, every HTTP connection manager Pilot builds
for a sidecar (inbound and outbound) or a gateway gets ``tracing`` with the
``envoy.tracers.opentelemetry`` provider, and every sidecar and gateway gets the cluster
:data:`COLLECTOR_CLUSTER` (HTTP/2, the collector address of the mesh config), through which
Envoy exports its spans over OTLP/gRPC. ``random_sampling`` is the mesh config's ``sampling``
percent; a request that arrives with a sampling decision (W3C ``traceparent``) keeps it, so
the destination's sidecar traces exactly the requests the caller's sidecar traced.

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
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.type.v3 import percent_pb2

from meshfed.core.tracing import DISABLED, TracingSettings
from meshfed.core.xds import HTTP_OPTIONS_KEY, http2_options
from meshfed.pilot.plugins import ChainContext, Direction, HttpChain, PluginBase, ProxyContext
from meshfed.pilot.translate.protos import pack, socket_address

COLLECTOR_CLUSTER = "tracing-collector"
OTEL_TRACER = "envoy.tracers.opentelemetry"
CONNECT_TIMEOUT_MS = 1000
EXPORT_TIMEOUT_MS = 1000


def collector_cluster(collector: str) -> cluster_pb2.Cluster:
    """The HTTP/2 cluster to the OTLP/gRPC collector ``host:port`` (an IP or a DNS name)."""
    host, _, port = collector.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        kind = cluster_pb2.Cluster.STATIC
    except ValueError:
        kind = cluster_pb2.Cluster.STRICT_DNS
    cluster = cluster_pb2.Cluster(name=COLLECTOR_CLUSTER, type=kind)
    cluster.connect_timeout.FromMilliseconds(CONNECT_TIMEOUT_MS)
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=COLLECTOR_CLUSTER)
    assignment.endpoints.add().lb_endpoints.add().endpoint.address.CopyFrom(
        socket_address(host, int(port))
    )
    cluster.load_assignment.CopyFrom(assignment)
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
        service = grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=COLLECTOR_CLUSTER)
        )
        service.timeout.FromMilliseconds(EXPORT_TIMEOUT_MS)
        tracer = opentelemetry_pb2.OpenTelemetryConfig(
            grpc_service=service, service_name=service_name(ctx)
        )
        return hcm.HttpConnectionManager.Tracing(
            provider=http_tracer_pb2.Tracing.Http(name=OTEL_TRACER, typed_config=pack(tracer)),
            random_sampling=percent_pb2.Percent(value=self.settings.sampling),
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
        return (collector_cluster(self.settings.collector),)
