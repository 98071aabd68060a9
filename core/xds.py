"""Envoy v3 building blocks every layer writes the same way.

Deterministic ``Any`` packing (equal configs give equal bytes, so equal versions and no spurious
pushes), the key and value of HTTP/2 upstream protocol options, and the static cluster a
bootstrap uses to reach a node-local gRPC server on a Unix socket (the node agent's SDS, the
node-local Mixer client).
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo
from google.protobuf import any_pb2
from google.protobuf.message import Message

HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
UNIX_SOCKET_CONNECT_TIMEOUT_MS = 1000


def pack(message: Message) -> any_pb2.Any:
    """Pack deterministically, so equal configs give equal bytes (and equal versions)."""
    return any_pb2.Any(
        type_url="type.googleapis.com/" + message.DESCRIPTOR.full_name,
        value=message.SerializeToString(deterministic=True),
    )


def http2_options() -> hpo.HttpProtocolOptions:
    """Upstream protocol options that make a cluster speak HTTP/2 (gRPC) to its endpoints."""
    return hpo.HttpProtocolOptions(
        explicit_http_config=hpo.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
        )
    )


def unix_socket_grpc_cluster(name: str, socket_path: str) -> cluster_pb2.Cluster:
    """A static HTTP/2 cluster ``name`` whose one endpoint is the Unix socket ``socket_path``."""
    cluster = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STATIC)
    cluster.connect_timeout.FromMilliseconds(UNIX_SOCKET_CONNECT_TIMEOUT_MS)
    cluster.load_assignment.CopyFrom(endpoint_pb2.ClusterLoadAssignment(cluster_name=name))
    cluster.load_assignment.endpoints.add().lb_endpoints.add().endpoint.address.CopyFrom(
        address_pb2.Address(pipe=address_pb2.Pipe(path=socket_path))
    )
    cluster.typed_extension_protocol_options[HTTP_OPTIONS_KEY].CopyFrom(pack(http2_options()))
    return cluster
