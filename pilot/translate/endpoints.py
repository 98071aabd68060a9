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

import functools
from collections.abc import Iterable
from typing import Any

from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2 as ec
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import struct_pb2

from meshfed.registry.model import Endpoint, Labels, Locality, Port
from meshfed.security import mtls

_HEALTHY = health_check_pb2.HealthStatus.HEALTHY
_UNHEALTHY = health_check_pb2.HealthStatus.UNHEALTHY


@functools.lru_cache(maxsize=16384)
def _metadata(
    labels: Labels, identity: str, registry: str, socket_match: tuple[tuple[str, str], ...]
) -> base_pb2.Metadata:
    """The filter metadata of an endpoint with these labels, identity, registry and transport
    socket match.

    Endpoints of one service (one version, one registry) share it, so it is built once and
    copied; callers copy it into their own message and never change the cached one."""
    meta = struct_pb2.Struct()
    fields: dict[str, str] = dict(labels)
    if identity:
        fields["identity"] = identity
    if registry:
        fields["registry"] = registry
    meta.update(fields)
    metadata = base_pb2.Metadata(filter_metadata={"meshfed": meta})
    if socket_match:
        metadata.filter_metadata[mtls.TRANSPORT_SOCKET_MATCH].update(dict(socket_match))
    return metadata


def _order(e: Endpoint, port: Port) -> tuple[str, str, str, str, int]:
    loc = e.locality
    return (loc.region, loc.zone, loc.subzone, e.address, e.target_port(port))


def _fill(groups: Any, port: Port, endpoints: Iterable[Endpoint]) -> None:
    """Append ``endpoints`` of ``port`` to the repeated LocalityLbEndpoints ``groups``, grouped
    by locality in a stable order (locality, address, target port)."""
    # The index keeps equal keys in their given order (a stable sort) without comparing them.
    keyed = sorted(
        ((_order(e, port), i, e) for i, e in enumerate(endpoints)), key=lambda item: item[:2]
    )
    group: Any = None
    where: tuple[str, str, str] | None = None
    for (region, zone, subzone, address, target), _, ep in keyed:
        if (region, zone, subzone) != where:
            where = (region, zone, subzone)
            group = groups.add()
            group.locality.SetInParent()
            group.locality.region = region
            group.locality.zone = zone
            group.locality.sub_zone = subzone
        lb = group.lb_endpoints.add()
        sock = lb.endpoint.address.socket_address
        sock.address = address
        sock.port_value = target
        if ep.hostname:
            lb.endpoint.hostname = ep.hostname
        lb.health_status = _HEALTHY if ep.healthy else _UNHEALTHY
        lb.load_balancing_weight.value = max(1, ep.weight)
        socket_match = mtls.endpoint_socket_metadata(ep)
        match = tuple(sorted(socket_match.items())) if socket_match is not None else ()
        lb.metadata.CopyFrom(_metadata(ep.labels, ep.identity, ep.registry, match))


def lb_endpoints(port: Port, endpoints: Iterable[Endpoint]) -> list[ec.LocalityLbEndpoints]:
    """Endpoints of ``port`` grouped by locality, in a stable order."""
    cla = endpoint_pb2.ClusterLoadAssignment()
    _fill(cla.endpoints, port, endpoints)
    return list(cla.endpoints)


def load_assignment(
    cluster_name: str, port: Port, endpoints: Iterable[Endpoint]
) -> endpoint_pb2.ClusterLoadAssignment:
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=cluster_name)
    _fill(cla.endpoints, port, endpoints)
    return cla


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
