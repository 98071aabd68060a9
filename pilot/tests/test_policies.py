"""DestinationPolicy becomes cluster settings, per service and per version (subset)."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo

from meshfed.pilot.config.model import CircuitBreaker, DestinationPolicy, LoadBalancer, ServiceRef
from meshfed.pilot.config.store import ConfigSnapshot
from meshfed.pilot.translate.clusters import (
    HTTP_OPTIONS_KEY,
    LOCAL_ORIGIN_FAILURES,
    MAX_EJECTION_PERCENT,
    UNBOUNDED,
    default_circuit_breakers,
    default_outlier_detection,
)
from meshfed.pilot.translate.subsets import service_port_clusters
from meshfed.pilot.translate.traffic import TrafficIndex
from meshfed.registry.model import Endpoint, Port, Protocol, Service

HOST = "reviews.default.svc.cluster.local"


def policy(name: str, labels: dict[str, str] | None = None, **kw: object) -> DestinationPolicy:
    return DestinationPolicy(
        name, "default", "p.yaml", ServiceRef(name="reviews", labels=labels or {}), **kw
    )


def clusters(service: Service, *policies: DestinationPolicy) -> dict[str, cluster_pb2.Cluster]:
    endpoints = [Endpoint(f"10.0.0.{i}", labels={"version": f"v{i}"}) for i in (1, 2)]
    index = TrafficIndex.build(ConfigSnapshot.of(policies), [service])
    out = {}
    for port in service.ports:
        for cluster, _ in service_port_clusters(service, port, endpoints, index):
            out[cluster.name] = cluster
    return out


def test_service_policy_sets_balancer_breaker_outlier_and_timeout() -> None:
    service = Service(HOST, ports=(Port(80, "http", Protocol.HTTP),))
    cb = CircuitBreaker(
        max_connections=10,
        http_max_pending_requests=5,
        http_max_requests=20,
        http_max_retries=3,
        http_max_requests_per_connection=1,
        http_consecutive_errors=4,
        http_detection_interval=2.0,
        sleep_window=30.0,
        http_max_ejection_percent=40,
    )
    found = clusters(
        service,
        policy(
            "all",
            load_balancing=LoadBalancer.LEAST_CONN,
            circuit_breaker=cb,
            connect_timeout=0.25,
        ),
    )
    cluster = found[f"outbound|80||{HOST}"]
    assert cluster.lb_policy == cluster_pb2.Cluster.LEAST_REQUEST
    assert cluster.connect_timeout.ToMilliseconds() == 250
    (t,) = cluster.circuit_breakers.thresholds
    assert (t.max_connections.value, t.max_pending_requests.value) == (10, 5)
    assert (t.max_requests.value, t.max_retries.value) == (20, 3)  # the policy's cap wins
    od = cluster.outlier_detection
    assert od.consecutive_5xx.value == 4 and od.interval.seconds == 2
    assert od.enforcing_consecutive_5xx.value == 100
    assert od.base_ejection_time.seconds == 30 and od.max_ejection_percent.value == 40
    # Connect failures still eject a dead endpoint, as without the policy.
    assert od.consecutive_local_origin_failure.value == LOCAL_ORIGIN_FAILURES
    assert od.split_external_local_origin_errors
    options = hpo.HttpProtocolOptions()
    cluster.typed_extension_protocol_options[HTTP_OPTIONS_KEY].Unpack(options)
    assert options.common_http_protocol_options.max_requests_per_connection.value == 1


def test_version_policy_applies_to_its_subset_only_and_keeps_http2() -> None:
    service = Service(HOST, ports=(Port(9090, "grpc", Protocol.GRPC),))
    cb = CircuitBreaker(max_connections=1, http_max_requests_per_connection=2)
    found = clusters(
        service,
        policy("v2", {"version": "v2"}, circuit_breaker=cb),
        policy("all", load_balancing=LoadBalancer.RANDOM),
    )
    whole = found[f"outbound|9090||{HOST}"]
    v2 = found[f"outbound|9090|version=v2|{HOST}"]
    # The whole service keeps the defaults: only the uncapped retries, no other limit.
    assert whole.lb_policy == cluster_pb2.Cluster.RANDOM
    assert whole.circuit_breakers == default_circuit_breakers()
    (limits,) = v2.circuit_breakers.thresholds
    assert limits.max_connections.value == 1 and limits.max_retries.value == UNBOUNDED
    assert v2.eds_cluster_config.service_name == v2.name
    options = hpo.HttpProtocolOptions()
    v2.typed_extension_protocol_options[HTTP_OPTIONS_KEY].Unpack(options)
    assert options.explicit_http_config.HasField("http2_protocol_options")
    assert options.common_http_protocol_options.max_requests_per_connection.value == 2


def test_per_source_policy_wins_only_for_its_source() -> None:
    service = Service(HOST, ports=(Port(80, "http", Protocol.HTTP),))
    client = Service("pp.default.svc.cluster.local", ports=(Port(80, "http", Protocol.HTTP),))
    scoped = DestinationPolicy(
        "scoped",
        "default",
        "p.yaml",
        ServiceRef(name="reviews"),
        source=ServiceRef(name="pp", labels={"version": "v1"}),
        load_balancing=LoadBalancer.RANDOM,
    )
    general = policy("all", load_balancing=LoadBalancer.LEAST_CONN)
    index = TrafficIndex.build(ConfigSnapshot.of([scoped, general]), [service, client])
    me = [(client, Endpoint("10.0.1.1", labels={"version": "v1"}))]
    other = [(client, Endpoint("10.0.1.2", labels={"version": "v2"}))]
    assert index.source_key(me) == {scoped.ref} and index.source_key(other) == frozenset()
    assert index.policy_for(HOST, Endpoint("x").labels, index.source_key(me)) is scoped
    assert index.policy_for(HOST, Endpoint("x").labels, frozenset()) is general
    assert index.source_policy_hosts(index.source_key(me)) == [HOST]


def test_health_check_extension_parses_and_becomes_an_active_check(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from meshfed.pilot.config.store import parse_config_file

    path = tmp_path / "p.yaml"
    path.write_text(
        """apiVersion: config.meshfed.io/v1alpha1
kind: DestinationPolicy
metadata: {name: hc}
spec:
  destination: {name: reviews}
  healthCheck: {path: /ready, interval: 2s, unhealthyThreshold: 3}
---
apiVersion: config.meshfed.io/v1alpha1
kind: DestinationPolicy
metadata: {name: bad}
spec:
  destination: {name: reviews}
  healthCheck: {path: ready, every: 2s}
"""
    )
    objects, errors = parse_config_file(path)
    assert objects is None
    assert {e.field.rsplit(".", 1)[-1] for e in errors} >= {"path", "every"}
    path.write_text(path.read_text().split("---")[0])
    objects, errors = parse_config_file(path)
    assert not errors and objects is not None
    service = Service(HOST, ports=(Port(80, "http", Protocol.HTTP),))
    cluster = clusters(service, *objects)[f"outbound|80||{HOST}"]  # type: ignore[arg-type]
    (check,) = cluster.health_checks
    assert check.http_health_check.path == "/ready" and check.interval.seconds == 2
    assert check.unhealthy_threshold.value == 3 and check.healthy_threshold.value == 1
    assert cluster.common_lb_config.ignore_new_hosts_until_first_hc


def test_defaults_uncap_retries_and_eject_only_on_local_origin_failures() -> None:
    service = Service(HOST, ports=(Port(80, "http", Protocol.HTTP),))
    found = clusters(service)
    for cluster in found.values():
        (t,) = cluster.circuit_breakers.thresholds
        # Only retries are uncapped; connections/requests keep Envoy's own defaults.
        assert t.max_retries.value == UNBOUNDED
        assert not (t.HasField("max_connections") or t.HasField("max_requests"))
        od = cluster.outlier_detection
        assert od == default_outlier_detection()
        assert od.split_external_local_origin_errors
        assert od.consecutive_local_origin_failure.value == LOCAL_ORIGIN_FAILURES
        assert od.enforcing_consecutive_local_origin_failure.value == 100
        # An application's own 5xx/502-504 answers, or its success rate, eject nothing.
        for field in (
            "enforcing_consecutive_5xx",
            "enforcing_consecutive_gateway_failure",
            "enforcing_success_rate",
            "enforcing_local_origin_success_rate",
        ):
            assert getattr(od, field).value == 0, field
        # Below 100%: a one-endpoint cluster never loses its only endpoint; at 50% a cluster
        # of two can still eject one (Envoy's default 10% ejects nobody below ten).
        assert 50 <= od.max_ejection_percent.value == MAX_EJECTION_PERCENT < 100


def test_a_policy_without_retry_or_ejection_settings_keeps_those_defaults() -> None:
    service = Service(HOST, ports=(Port(80, "http", Protocol.HTTP),))
    cb = CircuitBreaker(http_max_pending_requests=7, sleep_window=5.0)
    cluster = clusters(service, policy("all", circuit_breaker=cb))[f"outbound|80||{HOST}"]
    (t,) = cluster.circuit_breakers.thresholds
    assert t.max_pending_requests.value == 7 and t.max_retries.value == UNBOUNDED
    # sleepWindow alone is part of httpConsecutiveErrors in Istio 0.2: without it, no change.
    assert cluster.outlier_detection == default_outlier_detection()


def test_passthrough_and_logical_dns_clusters_have_no_outlier_detection() -> None:
    from meshfed.pilot.translate.clusters import outbound_cluster
    from meshfed.registry.model import Resolution

    port = Port(80, "http", Protocol.HTTP)
    for resolution in (Resolution.PASSTHROUGH, Resolution.DNS):
        cluster = outbound_cluster(Service(HOST, ports=(port,), resolution=resolution), port, ())
        assert not cluster.HasField("outlier_detection"), resolution
        assert cluster.circuit_breakers == default_circuit_breakers()
