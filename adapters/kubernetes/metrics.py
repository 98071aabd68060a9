"""Prometheus metrics of the Kubernetes adapter and config store (process-wide registry).

The hub already exports ``meshfed_registry_synced`` / ``meshfed_registry_degraded`` per member;
these add what an operator needs to see *why*: which resource's watch is failing, how often
watches are relisted (a steady stream of ``expired`` relists means the watch cache window is too
short for this cluster), how long a list takes, and how many invalid config objects are being
ignored. Every series carries the registry name, since a mesh may federate several clusters.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter(
    "meshfed_kube_watch_events_total",
    "Watch events received, by resource and event type",
    ["registry", "resource", "type"],
)
RELISTS = Counter(
    "meshfed_kube_relists_total",
    "Full relists after the first list, by reason (expired = 410 Gone)",
    ["registry", "resource", "reason"],
)
RECONNECTS = Counter(
    "meshfed_kube_watch_reconnects_total",
    "Watches that dropped unexpectedly and were reopened",
    ["registry", "resource"],
)
ERRORS = Counter(
    "meshfed_kube_api_errors_total",
    "Failed list or watch calls (each is retried with backoff)",
    ["registry", "resource"],
)
BOOKMARKS = Counter(
    "meshfed_kube_watch_bookmarks_total",
    "Bookmark events recorded (they keep the resume version fresh)",
    ["registry", "resource"],
)
OBJECTS = Gauge(
    "meshfed_kube_listed_objects",
    "Objects returned by the last full list, by resource",
    ["registry", "resource"],
)
LIST_SECONDS = Histogram(
    "meshfed_kube_list_seconds",
    "Time to list a resource completely (all pages)",
    ["registry", "resource"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
APPLY_SECONDS = Histogram(
    "meshfed_kube_apply_seconds",
    "Time to map changed Kubernetes objects and apply them to the registry member",
    ["registry"],
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
)
CONFIG_ERRORS = Gauge(
    "meshfed_kube_config_invalid_objects",
    "Custom resources rejected by validation (their last good version, if any, stays)",
    ["store"],
)
