"""Prometheus metrics of the Consul adapter (registered once, in the process-wide registry).

The hub already exports ``meshfed_registry_degraded`` per member; these add the Consul-specific
detail an operator needs when that gauge is 1: which datacenter cannot be reached, how many
watches run, how often queries fail, and whether indexes went backwards (a sign of a server
restored from a snapshot or a lagging stale read). Every series is labelled by registry name,
because a mesh may federate several Consul clusters.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

WATCHES = Gauge(
    "meshfed_consul_watches",
    "Blocking queries running (the service list, plus one per service or one on all checks)",
    ["registry", "datacenter"],
)
QUERIES = Counter(
    "meshfed_consul_queries_total",
    "Consul queries by kind (list, service, checks, fetch) and outcome (change, unchanged,\n"
    "error, behind: an answer older than what was applied, from a lagging server, held back\n"
    "until it catches up)",
    ["registry", "datacenter", "kind", "outcome"],
)
UNREACHABLE = Gauge(
    "meshfed_consul_unreachable",
    "1 while a datacenter cannot be read (the last known endpoints stay in force)",
    ["registry", "datacenter"],
)
INDEX_RESETS = Counter(
    "meshfed_consul_index_resets_total",
    "Blocking-query indexes that went backwards and were reset",
    ["registry", "datacenter"],
)
FAILOVERS = Counter(
    "meshfed_consul_address_failovers_total",
    "Times the adapter moved to the next configured Consul address",
    ["registry"],
)
APPLY_SECONDS = Histogram(
    "meshfed_consul_apply_seconds",
    "Time to map one service's health entries and apply them to the aggregate",
    ["registry"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
CATALOG_MODE = Gauge(
    "meshfed_consul_catalog_mode",
    "1 while a datacenter is followed catalog-wide (more services than maxWatches), 0 while\n"
    "each service has its own blocking query",
    ["registry", "datacenter"],
)
SWEEPS = Counter(
    "meshfed_consul_sweeps_total",
    "Catalog-wide mode: reads of every service (reason: unexplained, a catalog change no check\n"
    "or list difference accounts for; reconcile, the periodic safety net)",
    ["registry", "datacenter", "reason"],
)
