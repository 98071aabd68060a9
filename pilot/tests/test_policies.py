"""DestinationPolicy becomes cluster settings, per service and per version (subset)."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo

from meshfed.pilot.config.model import CircuitBreaker, DestinationPolicy, LoadBalancer, ServiceRef
from meshfed.pilot.config.store import ConfigSnapshot
from meshfed.pilot.translate.clusters import HTTP_OPTIONS_KEY
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
    t = cluster.circuit_breakers.thresholds[0]
    assert (t.max_connections.value, t.max_pending_requests.value) == (10, 5)
    assert (t.max_requests.value, t.max_retries.value) == (20, 3)
    od = cluster.outlier_detection
    assert od.consecutive_5xx.value == 4 and od.interval.seconds == 2
    assert od.base_ejection_time.seconds == 30 and od.max_ejection_percent.value == 40
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
    assert whole.lb_policy == cluster_pb2.Cluster.RANDOM and not whole.HasField("circuit_breakers")
    assert v2.circuit_breakers.thresholds[0].max_connections.value == 1
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
