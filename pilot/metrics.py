"""Pilot's Prometheus metrics, on the default registry (the hub serves it at ``/metrics``).

Names follow Istio's ``pilot_*`` metrics where one exists, prefixed ``meshfed_``, so
dashboards translate directly. Defined once at import; every server instance shares them.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONNECTED = Gauge(
    "meshfed_pilot_xds_connected_proxies", "Proxies with an open ADS stream", ["protocol"]
)
PUSHES = Counter("meshfed_pilot_xds_pushes_total", "xDS responses sent", ["type"])
PUSH_RESOURCES = Counter(
    "meshfed_pilot_xds_pushed_resources_total", "Resources sent in xDS responses", ["type"]
)
PUSH_TIME = Histogram(
    "meshfed_pilot_xds_push_seconds",
    "Time to build and enqueue one proxy's response of a type",
    ["type"],
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
)
PUSHES_MERGED = Counter(
    "meshfed_pilot_xds_pushes_merged_total",
    "xDS responses merged into a newer one of the same type before the stream took them",
    ["type"],
)
NACKS = Counter("meshfed_pilot_xds_nacks_total", "Responses rejected by proxies", ["type"])
CONVERGENCE = Histogram(
    "meshfed_pilot_proxy_convergence_seconds",
    "From the first registry event of a push to the proxy's ACK of it",
    ["type"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DEBOUNCE = Histogram(
    "meshfed_pilot_debounce_seconds",
    "How long a batch of registry events waited in the debouncer",
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
DEBOUNCED_EVENTS = Counter(
    "meshfed_pilot_debounced_events_total", "Registry events merged into pushes"
)
BUILD_TIME = Histogram(
    "meshfed_pilot_config_build_seconds",
    "Time to translate a batch of registry changes into shared resources",
    buckets=(0.0001, 0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 10),
)
