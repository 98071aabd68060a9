"""ClusterLoadAssignments (EDS): a service port's endpoints, grouped by locality.

Unhealthy endpoints are sent with ``UNHEALTHY`` status rather than dropped, so Envoy's view
matches the registry's and ``proxy-config endpoint`` shows them. Endpoint identity and labels
travel as ``meshfed`` filter metadata for later policy (mTLS SAN checks, subsets); an endpoint
with a sidecar also gets Envoy's ``envoy.transport_socket_match`` metadata, which selects the
mutual-TLS transport socket of its cluster (:func:`security.mtls.apply_outbound_mtls`).

Locality-aware failover (:func:`prioritized`): for a proxy that knows where it runs, Pilot
sends each assignment with Envoy priorities by closeness: same region/zone/subzone first, then
same zone, same region, anywhere else (renumbered densely, as Envoy requires). Envoy sends
everything to the closest priority while it is healthy and spills to the next one in proportion
as it is not (its overprovisioning factor, 1.4): a Consul datacenter or a Eureka region keeps
its traffic local and fails over on its own when its endpoints go.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import struct_pb2, wrappers_pb2

from meshfed.pilot.translate.protos import socket_address
from meshfed.registry.model import Endpoint, Locality, Port
from meshfed.security import mtls


def lb_endpoints(port: Port, endpoints: Iterable[Endpoint]) -> list[ec.LocalityLbEndpoints]:
    """Endpoints of ``port`` grouped by locality, in a stable order."""
    groups: dict[Locality, list[ec.LbEndpoint]] = {}
    for ep in sorted(endpoints, key=lambda e: (e.locality, e.address, e.target_port(port))):
        meta = struct_pb2.Struct()
        fields: dict[str, str] = dict(ep.labels)
        if ep.identity:
            fields["identity"] = ep.identity
        if ep.registry:
            fields["registry"] = ep.registry
        meta.update(fields)
        metadata = base_pb2.Metadata(filter_metadata={"meshfed": meta})
        socket_match = mtls.endpoint_socket_metadata(ep)
        if socket_match is not None:
            metadata.filter_metadata[mtls.TRANSPORT_SOCKET_MATCH].update(socket_match)
        lb = ec.LbEndpoint(
            endpoint=ec.Endpoint(
                address=socket_address(ep.address, ep.target_port(port)),
                hostname=ep.hostname,
            ),
            health_status=(
                health_check_pb2.HealthStatus.HEALTHY
                if ep.healthy
                else health_check_pb2.HealthStatus.UNHEALTHY
            ),
            load_balancing_weight=wrappers_pb2.UInt32Value(value=max(1, ep.weight)),
            metadata=metadata,
        )
        groups.setdefault(ep.locality, []).append(lb)
    return [
        ec.LocalityLbEndpoints(
            locality=base_pb2.Locality(region=loc.region, zone=loc.zone, sub_zone=loc.subzone),
            lb_endpoints=lbs,
        )
        for loc, lbs in sorted(groups.items())
    ]


def load_assignment(
    cluster_name: str, port: Port, endpoints: Iterable[Endpoint]
) -> endpoint_pb2.ClusterLoadAssignment:
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster_name, endpoints=lb_endpoints(port, endpoints)
    )


def _closeness(proxy: Locality, loc: base_pb2.Locality) -> int:
    """0 = same subzone, 1 = same zone, 2 = same region, 3 = elsewhere (or unknown)."""
    if not proxy.region or loc.region != proxy.region:
        return 3
    if not proxy.zone or loc.zone != proxy.zone:
        return 2
    if not proxy.subzone or loc.sub_zone != proxy.subzone:
        return 1
    return 0


def prioritized(
    cla: endpoint_pb2.ClusterLoadAssignment, proxy: Locality
) -> endpoint_pb2.ClusterLoadAssignment:
    """``cla`` with each locality's priority set by its closeness to ``proxy``."""
    ranks = [_closeness(proxy, group.locality) for group in cla.endpoints]
    dense = {rank: i for i, rank in enumerate(sorted(set(ranks)))}
    out = endpoint_pb2.ClusterLoadAssignment()
    out.CopyFrom(cla)
    for group, rank in zip(out.endpoints, ranks, strict=True):
        group.priority = dense[rank]
    return out
