"""DestinationPolicy as Envoy cluster settings: load balancing, circuit breaking, timeouts.

Istio 0.2's ``simpleCb`` maps onto two Envoy mechanisms: connection/request limits become the
cluster's default-priority ``circuit_breakers`` thresholds (overflow is answered 503 with
``x-envoy-overloaded`` and counted in ``upstream_rq_pending_overflow`` / ``upstream_cx_overflow``),
and ``httpConsecutiveErrors`` / ``sleepWindow`` / ``httpDetectionInterval`` /
``httpMaxEjectionPercent`` become ``outlier_detection`` (consecutive 5xx ejection). A policy
overrides the cluster's defaults (:mod:`pilot.translate.clusters`) field by field: a policy
that only limits connections keeps the uncapped retries and the local-origin ejection.
meshfed's ``healthCheck`` extension adds an active HTTP health check to the cluster.

Per-version policies work through subset clusters: a policy whose destination carries labels
applies to the subset cluster with exactly those labels (see :mod:`pilot.translate.subsets`).
The function here only edits one cluster; choosing the policy is
:meth:`pilot.translate.traffic.TrafficIndex.policy_for`.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import base_pb2, health_check_pb2, protocol_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo
from google.protobuf import wrappers_pb2

from meshfed.core.xds import HTTP_OPTIONS_KEY
from meshfed.pilot.config.model import DestinationPolicy, HealthCheck, LoadBalancer
from meshfed.pilot.translate.protos import pack, seconds

LB_POLICIES = {
    LoadBalancer.ROUND_ROBIN: cluster_pb2.Cluster.ROUND_ROBIN,
    # Istio 0.2's LEAST_CONN was Envoy's least_request; it still is.
    LoadBalancer.LEAST_CONN: cluster_pb2.Cluster.LEAST_REQUEST,
    LoadBalancer.RANDOM: cluster_pb2.Cluster.RANDOM,
}


def _u32(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value)


def apply_policy(cluster: cluster_pb2.Cluster, policy: DestinationPolicy | None) -> None:
    """Edit ``cluster`` in place to follow ``policy`` (None: leave it as translated)."""
    if policy is None:
        return
    # ORIGINAL_DST clusters must keep CLUSTER_PROVIDED; the balancer is not theirs to pick.
    if policy.load_balancing is not None and cluster.type != cluster_pb2.Cluster.ORIGINAL_DST:
        cluster.lb_policy = LB_POLICIES[policy.load_balancing]
    if policy.connect_timeout is not None:
        cluster.connect_timeout.CopyFrom(seconds(policy.connect_timeout))
    if policy.health_check is not None:
        cluster.health_checks.append(health_check(policy.health_check))
        # Without this, a host that fails active checks but was never seen by EDS as
        # unhealthy would still take traffic until the first check completes.
        cluster.common_lb_config.ignore_new_hosts_until_first_hc = True
    cb = policy.circuit_breaker
    if cb is None:
        return
    thresholds = _default_priority_thresholds(cluster)
    if cb.max_connections is not None:
        thresholds.max_connections.CopyFrom(_u32(cb.max_connections))
    if cb.http_max_pending_requests is not None:
        thresholds.max_pending_requests.CopyFrom(_u32(cb.http_max_pending_requests))
    if cb.http_max_requests is not None:
        thresholds.max_requests.CopyFrom(_u32(cb.http_max_requests))
    if cb.http_max_retries is not None:
        thresholds.max_retries.CopyFrom(_u32(cb.http_max_retries))
    if cb.http_max_requests_per_connection is not None:
        _set_max_requests_per_connection(cluster, cb.http_max_requests_per_connection)
    if cb.http_consecutive_errors is not None:
        outlier = cluster.outlier_detection  # the default's local-origin ejection stays
        outlier.consecutive_5xx.CopyFrom(_u32(cb.http_consecutive_errors))
        outlier.enforcing_consecutive_5xx.CopyFrom(_u32(100))
        # Only consecutive errors were Istio 0.2's signal; keep the others from ejecting.
        outlier.enforcing_success_rate.CopyFrom(_u32(0))
        outlier.enforcing_consecutive_gateway_failure.CopyFrom(_u32(0))
        if cb.http_detection_interval is not None:
            outlier.interval.CopyFrom(seconds(cb.http_detection_interval))
        if cb.sleep_window is not None:
            outlier.base_ejection_time.CopyFrom(seconds(cb.sleep_window))
        if cb.http_max_ejection_percent is not None:
            outlier.max_ejection_percent.CopyFrom(_u32(cb.http_max_ejection_percent))


def _default_priority_thresholds(
    cluster: cluster_pb2.Cluster,
) -> circuit_breaker_pb2.CircuitBreakers.Thresholds:
    """The cluster's DEFAULT-priority thresholds (Envoy uses the first), added when missing."""
    for thresholds in cluster.circuit_breakers.thresholds:
        if thresholds.priority == base_pb2.RoutingPriority.DEFAULT:
            return thresholds
    return cluster.circuit_breakers.thresholds.add()


def health_check(check: HealthCheck) -> health_check_pb2.HealthCheck:
    """An active HTTP health check: GET ``path`` on each endpoint every ``interval``; a host
    is ejected after ``unhealthy_threshold`` failures and back after ``healthy_threshold``."""
    return health_check_pb2.HealthCheck(
        timeout=seconds(check.timeout),
        interval=seconds(check.interval),
        unhealthy_threshold=_u32(check.unhealthy_threshold),
        healthy_threshold=_u32(check.healthy_threshold),
        # Short first checks and no jitter: a new endpoint is judged within one interval.
        no_traffic_interval=seconds(check.interval),
        http_health_check=health_check_pb2.HealthCheck.HttpHealthCheck(path=check.path),
    )


def _set_max_requests_per_connection(cluster: cluster_pb2.Cluster, value: int) -> None:
    """Set the per-connection request cap in the cluster's HTTP protocol options.

    The options may already carry HTTP/2 settings (HTTP2 and gRPC ports), so they are merged,
    not replaced; a cluster without options gets HTTP/1.1 explicitly, like the default.
    """
    options = hpo.HttpProtocolOptions()
    existing = cluster.typed_extension_protocol_options.get(HTTP_OPTIONS_KEY)
    if existing is not None:
        existing.Unpack(options)
    else:
        options.explicit_http_config.http_protocol_options.CopyFrom(
            protocol_pb2.Http1ProtocolOptions()
        )
    options.common_http_protocol_options.max_requests_per_connection.CopyFrom(_u32(value))
    cluster.typed_extension_protocol_options[HTTP_OPTIONS_KEY].CopyFrom(pack(options))
