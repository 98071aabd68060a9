"""Prometheus metrics of the Eureka adapter, labelled by registry name.

Why a module: the collectors must be created once per process (prometheus_client refuses a
second registration of the same name), while several ``eureka`` registries may run in one hub;
every series therefore carries a ``registry`` label. They live in the default registry, which
the hub's ``/metrics`` serves.

What an operator reads here: how often each fetch kind runs and fails, how long it takes, how
often a delta failed to reconcile (each one costs a full fetch), server failovers, whether the
registry is degraded, and the instances currently known by status.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

FETCHES = Counter(
    "meshfed_eureka_fetches_total",
    "Fetches from Eureka by kind (full, delta) and result (ok, error)",
    ["registry", "kind", "result"],
)
FETCH_SECONDS = Histogram(
    "meshfed_eureka_fetch_seconds",
    "Time to fetch, parse and apply one Eureka answer",
    ["registry", "kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
HASH_MISMATCHES = Counter(
    "meshfed_eureka_hash_mismatches_total",
    "Deltas whose result did not match the server's apps hash code (a full fetch followed)",
    ["registry"],
)
FAILOVERS = Counter(
    "meshfed_eureka_server_failovers_total",
    "Moves from one Eureka server of the list to another",
    ["registry"],
)
DEGRADED = Gauge(
    "meshfed_eureka_degraded",
    "1 while no Eureka server can be reached (the last known endpoints stay in force)",
    ["registry"],
)
INSTANCES = Gauge(
    "meshfed_eureka_instances",
    "Instances in the local copy of the Eureka registry, by status",
    ["registry", "status"],
)
