"""Subset clusters: one cluster per (service port, label subset) that routing config refers to.

A route rule's ``route: [{labels: {version: v2}, weight: 10}]``, a mirror to ``version: v3``
and a per-version DestinationPolicy each need "the v2 endpoints of reviews" as something Envoy
can route to. Two ways exist: Envoy's ``lb_subset_config`` (one cluster, routes carry
``metadata_match``) or a separate cluster per subset. meshfed uses **separate clusters**
named ``outbound|<port>|<k=v,...>|<host>``, each with its own ClusterLoadAssignment holding only
the matching endpoints, because:

- each version gets its own circuit breakers, outlier detection, load balancer and stats
  (``cluster.outbound|80|version=v2|reviews...upstream_rq_*``), which is exactly what a
  per-version DestinationPolicy means and what an operator debugging a canary wants to see;
- ``weighted_clusters`` and ``request_mirror_policies`` name clusters, so routes stay simple,
  and an empty subset fails as "no healthy upstream" on that cluster only;
- the cluster name is Istio's own ``direction|port|subset|host`` form.

The cost is one more CLA per subset on endpoint changes, only for subsets some config names.
Subset clusters are built from the same translation as the service's cluster (discovery type,
HTTP/2 options), so they differ only in name, endpoints and policy.
"""

from __future__ import annotations

from collections.abc import Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from meshfed.pilot.translate import clusters as tc
from meshfed.pilot.translate import endpoints as te
from meshfed.pilot.translate import names
from meshfed.pilot.translate.policies import apply_policy
from meshfed.pilot.translate.traffic import TrafficIndex, subset_name
from meshfed.registry.model import Endpoint, Labels, Port, Service


def service_port_clusters(
    service: Service,
    port: Port,
    endpoints: Sequence[Endpoint],
    index: TrafficIndex,
    sources: frozenset[str] = frozenset(),
    with_assignments: bool = True,
) -> list[tuple[cluster_pb2.Cluster, endpoint_pb2.ClusterLoadAssignment | None]]:
    """The service port's own cluster plus one per configured subset, each with its CLA (EDS).

    The first item is always the whole-service cluster ``outbound|port||host``. ``sources``
    selects per-source policies (the asking proxy's source key); the shared clusters use none.
    ``with_assignments=False`` skips the CLAs (per-source clusters share the service's own).
    """
    out = []
    for labels in (Labels(), *index.subsets.get(service.hostname, ())):
        chosen = [e for e in endpoints if e.labels.matches(labels)] if labels else list(endpoints)
        cluster = tc.outbound_cluster(service, port, chosen)
        name = names.outbound_cluster(service.hostname, port.number, subset_name(labels))
        if labels:
            cluster.name = name
            if cluster.type == cluster_pb2.Cluster.EDS:
                cluster.eds_cluster_config.service_name = name
            elif cluster.HasField("load_assignment"):
                cluster.load_assignment.cluster_name = name
        apply_policy(cluster, index.policy_for(service.hostname, labels, sources))
        eds = with_assignments and tc.uses_eds(service)
        cla = te.load_assignment(name, port, chosen) if eds else None
        out.append((cluster, cla))
    return out
