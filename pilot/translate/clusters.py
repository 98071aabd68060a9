"""Clusters (CDS): one outbound cluster per service port, plus per-proxy inbound clusters.

Discovery type follows the service's resolution: STATIC registries become EDS clusters (so an
endpoint change re-sends one ClusterLoadAssignment, never the cluster), DNS becomes STRICT_DNS
over the listed endpoint hostnames (or LOGICAL_DNS over the service hostname when none are
listed), PASSTHROUGH becomes ORIGINAL_DST. HTTP2 and GRPC ports get HTTP/2 upstream options.

Every outbound cluster also carries the defaults that make an instance's death cost no request
(a DestinationPolicy overrides them field by field, :mod:`pilot.translate.policies`):

- **No cap on concurrent retries** (``max_retries`` = 2^32-1, what Istio sets). Envoy's default
  of 3 retries in flight per cluster is what fails requests when an instance dies: every
  request it held fails at once, plus those sent to it before the push, and all but three of
  their retries are refused (``upstream_rq_retry_overflow``, answered 503). A retry *budget*
  (Envoy's ``retry_budget``, default 20% of the requests in flight, at least 3) is the modern
  form of the same cap and fails the same way: one dead instance out of N holds 1/N of the
  requests in flight, so below five endpoints its failures alone exceed a 20% budget (through
  real Envoy, with one instance killed every 200 ms, even a 100% budget refused retries). What a
  budget guards against, a retry storm, is bounded here per request instead: the default route
  retries only connection-level failures, at most :data:`routes.NUM_RETRIES` times, each on
  another host, and outlier detection (next) stops retries from being spent on a dead host.
  Operators who want a cap set ``httpMaxRetries``.
- **Outlier detection on local-origin failures**: :data:`LOCAL_ORIGIN_FAILURES` consecutive
  connect failures or resets from one endpoint eject it (an instance that died without
  deregistering, e.g. a Eureka lease that has not expired yet), so it is out of rotation
  long before the registry's next push. An application's own 5xx answers eject nothing unless
  a policy asks (``httpConsecutiveErrors``). At most :data:`MAX_EJECTION_PERCENT` of a
  cluster's endpoints are ejected: Envoy's default of 10% would eject nobody below ten
  endpoints, and under 100% the last endpoint of a one-endpoint cluster is never ejected
  (with the panic threshold at 0, that would refuse every request).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import wrappers_pb2

from meshfed.core.xds import HTTP_OPTIONS_KEY, http2_options
from meshfed.pilot.translate import names
from meshfed.pilot.translate.endpoints import load_assignment
from meshfed.pilot.translate.protos import ads_source, pack, seconds, socket_address
from meshfed.registry.model import Endpoint, Port, Protocol, Resolution, Service

CONNECT_TIMEOUT_S = 2.0
UNBOUNDED = 2**32 - 1
LOCAL_ORIGIN_FAILURES = 3
MAX_EJECTION_PERCENT = 50


def _u32(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value)


def default_circuit_breakers() -> circuit_breaker_pb2.CircuitBreakers:
    """Envoy's limits, except concurrent retries: not capped (see the module docstring)."""
    return circuit_breaker_pb2.CircuitBreakers(
        thresholds=[circuit_breaker_pb2.CircuitBreakers.Thresholds(max_retries=_u32(UNBOUNDED))]
    )


def default_outlier_detection() -> outlier_detection_pb2.OutlierDetection:
    """Eject an endpoint after consecutive local-origin failures, and for nothing else."""
    return outlier_detection_pb2.OutlierDetection(
        split_external_local_origin_errors=True,
        consecutive_local_origin_failure=_u32(LOCAL_ORIGIN_FAILURES),
        enforcing_consecutive_local_origin_failure=_u32(100),
        enforcing_consecutive_5xx=_u32(0),
        enforcing_consecutive_gateway_failure=_u32(0),
        enforcing_success_rate=_u32(0),
        enforcing_local_origin_success_rate=_u32(0),
        max_ejection_percent=_u32(MAX_EJECTION_PERCENT),
    )


def outbound_cluster(
    service: Service, port: Port, endpoints: Sequence[Endpoint]
) -> cluster_pb2.Cluster:
    """The cluster a client's sidecar uses to reach ``service`` on ``port``."""
    name = names.outbound_cluster(service.hostname, port.number)
    cluster = cluster_pb2.Cluster(name=name, connect_timeout=seconds(CONNECT_TIMEOUT_S))
    # Envoy's default 50% panic threshold would balance over unhealthy endpoints once most are
    # out of rotation (an OUT_OF_SERVICE Eureka instance, a failing Consul check); the registry's
    # health is authoritative, so traffic goes only to healthy endpoints, however few.
    cluster.common_lb_config.healthy_panic_threshold.value = 0
    if service.resolution is Resolution.PASSTHROUGH:
        cluster.type = cluster_pb2.Cluster.ORIGINAL_DST
        cluster.lb_policy = cluster_pb2.Cluster.CLUSTER_PROVIDED
    elif service.resolution is Resolution.DNS:
        cluster.lb_policy = cluster_pb2.Cluster.ROUND_ROBIN
        cluster.dns_lookup_family = cluster_pb2.Cluster.V4_ONLY
        if endpoints:
            cluster.type = cluster_pb2.Cluster.STRICT_DNS
            # A DNS endpoint is named by its hostname when it has one, else by its address.
            dns_eps = [
                attrs.evolve(ep, address=ep.hostname or ep.address, hostname="") for ep in endpoints
            ]
            cluster.load_assignment.CopyFrom(load_assignment(name, port, dns_eps))
        else:
            cluster.type = cluster_pb2.Cluster.LOGICAL_DNS
            cluster.load_assignment.CopyFrom(
                endpoint_pb2.ClusterLoadAssignment(
                    cluster_name=name,
                    endpoints=[
                        ec.LocalityLbEndpoints(
                            lb_endpoints=[
                                ec.LbEndpoint(
                                    endpoint=ec.Endpoint(
                                        address=socket_address(service.hostname, port.number)
                                    )
                                )
                            ]
                        )
                    ],
                )
            )
    else:
        cluster.type = cluster_pb2.Cluster.EDS
        cluster.lb_policy = cluster_pb2.Cluster.ROUND_ROBIN
        cluster.eds_cluster_config.eds_config.CopyFrom(ads_source())
        cluster.eds_cluster_config.service_name = name
    cluster.circuit_breakers.CopyFrom(default_circuit_breakers())
    # ORIGINAL_DST and LOGICAL_DNS clusters have one host per destination: nothing to eject to.
    if cluster.type in (cluster_pb2.Cluster.EDS, cluster_pb2.Cluster.STRICT_DNS):
        cluster.outlier_detection.CopyFrom(default_outlier_detection())
    if port.protocol in (Protocol.HTTP2, Protocol.GRPC):
        cluster.typed_extension_protocol_options[HTTP_OPTIONS_KEY].CopyFrom(pack(http2_options()))
    return cluster


def uses_eds(service: Service) -> bool:
    return service.resolution is Resolution.STATIC


def inbound_cluster(
    port: int, app_address: str, app_port: int, protocol: Protocol
) -> cluster_pb2.Cluster:
    """The cluster a sidecar uses to hand inbound traffic to its local application."""
    name = names.inbound_cluster(port)
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=seconds(CONNECT_TIMEOUT_S),
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                ec.LocalityLbEndpoints(
                    lb_endpoints=[
                        ec.LbEndpoint(
                            endpoint=ec.Endpoint(address=socket_address(app_address, app_port))
                        )
                    ]
                )
            ],
        ),
    )
    if protocol in (Protocol.HTTP2, Protocol.GRPC):
        cluster.typed_extension_protocol_options[HTTP_OPTIONS_KEY].CopyFrom(pack(http2_options()))
    return cluster
