"""Mixer's Prometheus metrics (one set per process)."""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

# The default registry: the hub's /metrics serves it, as it does the hub's own metrics.

CHECKS = Counter(
    "meshfed_mixer_checks_total", "Check calls by result code", ["code"], registry=REGISTRY
)
REPORTS = Counter(
    "meshfed_mixer_reports_total", "Report calls by result code", ["code"], registry=REGISTRY
)
REPORTED_BAGS = Counter(
    "meshfed_mixer_report_bags_total", "Attribute bags received in Report batches",
    registry=REGISTRY,
)  # fmt: skip
QUOTA_GRANTS = Counter(
    "meshfed_mixer_quota_granted_total", "Quota amount granted, by quota name", ["quota"],
    registry=REGISTRY,
)  # fmt: skip
QUOTA_REQUESTS = Counter(
    "meshfed_mixer_quota_requests_total", "Quota allocations asked for, by quota name", ["quota"],
    registry=REGISTRY,
)  # fmt: skip
RULE_MATCHES = Counter(
    "meshfed_mixer_rule_matches_total", "Rules whose match held", ["rule"], registry=REGISTRY
)
RULE_ERRORS = Counter(
    "meshfed_mixer_rule_errors_total",
    "Rule evaluations that failed (match or instance could not be evaluated)",
    ["rule"],
    registry=REGISTRY,
)
HANDLER_CALLS = Counter(
    "meshfed_mixer_handler_calls_total", "Handler calls", ["handler", "variety"],
    registry=REGISTRY,
)  # fmt: skip
HANDLER_ERRORS = Counter(
    "meshfed_mixer_handler_errors_total",
    "Handler calls that raised or timed out",
    ["handler", "variety", "reason"],
    registry=REGISTRY,
)
EVAL_SECONDS = Histogram(
    "meshfed_mixer_evaluation_seconds",
    "Time to select rules and build instances for one bag (handlers excluded)",
    ["method"],
    buckets=(5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 0.025),
    registry=REGISTRY,
)
CONFIG_ERRORS = Gauge(
    "meshfed_mixer_config_errors", "Problems in the Mixer config now being served",
    registry=REGISTRY,
)  # fmt: skip
CONFIG_RULES = Gauge("meshfed_mixer_config_rules", "Rules being served", registry=REGISTRY)
CONFIG_LOADS = Counter(
    "meshfed_mixer_config_loads_total", "Config snapshots activated", registry=REGISTRY
)
