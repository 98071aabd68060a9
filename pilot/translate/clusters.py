"""Clusters (CDS): one outbound cluster per service port, plus per-proxy inbound clusters.

Discovery type follows the service's resolution: STATIC registries become EDS clusters (so an
endpoint change re-sends one ClusterLoadAssignment, never the cluster), DNS becomes STRICT_DNS
over the listed endpoint hostnames (or LOGICAL_DNS over the service hostname when none are
listed), PASSTHROUGH becomes ORIGINAL_DST. HTTP2 and GRPC ports get HTTP/2 upstream options.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo

from meshfed.pilot.translate import names
from meshfed.pilot.translate.endpoints import load_assignment
from meshfed.pilot.translate.protos import ads_source, pack, seconds, socket_address
from meshfed.registry.model import Endpoint, Port, Protocol, Resolution, Service

CONNECT_TIMEOUT_S = 2.0
HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _http2_options() -> hpo.HttpProtocolOptions:
    return hpo.HttpProtocolOptions(
        explicit_http_config=hpo.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
        )
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
    if port.protocol in (Protocol.HTTP2, Protocol.GRPC):
        cluster.typed_extension_protocol_options[HTTP_OPTIONS_KEY].CopyFrom(pack(_http2_options()))
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
        cluster.typed_extension_protocol_options[HTTP_OPTIONS_KEY].CopyFrom(pack(_http2_options()))
    return cluster
