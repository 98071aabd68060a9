"""Envoy v3 xDS type URLs and the order in which a push sends them.

The order (clusters, endpoints, listeners, routes) is the make-before-break order of Envoy's
xDS protocol document: a cluster exists before anything routes to it, and a listener's route
configuration follows the listener, so no request meets a reference to a missing resource.
"""

from __future__ import annotations

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"

PUSH_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE)

# Types whose state-of-the-world responses must carry every resource (absence means delete).
FULL_STATE: frozenset[str] = frozenset({CLUSTER, LISTENER})

SHORT: dict[str, str] = {CLUSTER: "cds", ENDPOINT: "eds", LISTENER: "lds", ROUTE: "rds"}
BY_SHORT: dict[str, str] = {v: k for k, v in SHORT.items()}
# Names operators type (``proxy-config cluster``) to type URLs.
BY_KIND: dict[str, str] = {
    "cluster": CLUSTER,
    "clusters": CLUSTER,
    "endpoint": ENDPOINT,
    "endpoints": ENDPOINT,
    "listener": LISTENER,
    "listeners": LISTENER,
    "route": ROUTE,
    "routes": ROUTE,
}


def short(type_url: str) -> str:
    """``cds``/``eds``/``lds``/``rds`` for a known type, else the last segment of the URL."""
    return SHORT.get(type_url, type_url.rsplit(".", 1)[-1])
