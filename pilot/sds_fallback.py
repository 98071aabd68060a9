"""What a proxy without SDS gets instead of config that names the node agent's secrets.

Mesh mutual TLS takes certificates from the node agent's secret files (:mod:`security.mtls`).
A proxy whose bootstrap names no secrets directory (``ProxyNode.sds`` false: started without
``--secrets-dir`` and not under ``meshfed nodeagent``) cannot resolve those secrets, and Envoy
refuses any cluster or listener that names them, so the proxy would lose those destinations
outright.
Pilot therefore never sends it such config:

- outbound: plain copies of the clusters that use mesh mutual TLS (:func:`plain_clusters`),
  so PERMISSIVE destinations still answer and STRICT ones refuse visibly (503 at the proxy);
- inbound: the caller keeps the proxy's own ports plain (``security.mtls.Mode.OFF``);
- either way one problem names what was changed, for ``meshfed proxy-status``.

Only clusters whose packed bytes name the SDS cluster are unpacked, so a mesh without mutual
TLS pays one byte search per cluster and nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2

from meshfed.pilot.node import ProxyNode
from meshfed.security import mtls

log = logging.getLogger("meshfed.pilot.sds")

ADVICE = "start it with --secrets-dir (the node agent's directory) or under meshfed nodeagent"


def plain_clusters(
    node: ProxyNode, clusters: Mapping[str, Any]
) -> tuple[dict[str, cluster_pb2.Cluster], list[str]]:
    """The mesh-mTLS clusters ``node`` gets in plain form when it has no SDS, plus the problem
    (both empty when it has SDS or nothing it is sent uses mutual TLS).

    ``clusters`` maps names to resources with a packed ``body``.
    """
    if node.sds:
        return {}, []
    marker = mtls.SDS_CLUSTER.encode()
    plain: dict[str, cluster_pb2.Cluster] = {}
    for name, resource in clusters.items():
        if marker not in resource.body.value:
            continue
        cluster = cluster_pb2.Cluster()
        resource.body.Unpack(cluster)
        if mtls.strip_mesh_tls(cluster):
            plain[name] = cluster
    if not plain:
        return {}, []
    names = sorted(plain)
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    problem = (
        f"proxy has no SDS source ({ADVICE}): {len(names)} cluster(s) that need mesh mutual "
        f"TLS get plain traffic, which STRICT destinations refuse: {shown}"
    )
    log.warning("proxy %s: %s", node.id, problem)
    return plain, [problem]


def inbound_problem(node: ProxyNode) -> str:
    return (
        f"proxy has no SDS source ({ADVICE}): its inbound ports stay plain although the "
        "registry marks its endpoints as terminating mesh mutual TLS; clients that originate "
        "mutual TLS to it fail"
    )
