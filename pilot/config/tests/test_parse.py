"""Routing kinds: Istio 0.2 documents parse as written; bad input gets precise errors."""

import textwrap
from pathlib import Path

import pytest

from meshfed.cli import main
from meshfed.pilot.config.model import LoadBalancer, MatchKind, ServiceRef
from meshfed.pilot.config.store import ConfigSnapshot, parse_config_file
from meshfed.registry import Protocol, Service

ISTIO_02 = """
apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {name: reviews-jason, namespace: default}
spec:
  destination: {name: reviews}
  precedence: 2
  match:
    source: {name: productpage, labels: {version: v1}}
    request:
      headers:
        cookie: {regex: "^(.*?;)?(user=jason)(;.*)?$"}
        uri: {prefix: /api}
  route:
  - labels: {version: v2}
  websocketUpgrade: true
  appendHeaders: {x-mesh: meshfed}
---
apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {name: reviews-split}
spec:
  destination: {name: reviews}
  precedence: 1
  route:
  - {labels: {version: v1}, weight: 75}
  - {labels: {version: v3}, weight: 25}
  httpReqTimeout: {simpleTimeout: {timeout: 1.5s}}
  httpReqRetries: {simpleRetry: {attempts: 3, perTryTimeout: 200ms}}
  httpFault: {delay: {percent: 10, fixedDelay: 5s}, abort: {percent: 20, httpStatus: 503}}
  mirror: {name: reviews, labels: {version: v4}}
  corsPolicy: {allowOrigin: ["*"], allowMethods: [GET], maxAge: 1m, allowCredentials: true}
---
apiVersion: config.istio.io/v1alpha2
kind: DestinationPolicy
metadata: {name: reviews-cb}
spec:
  destination: {name: reviews, labels: {version: v1}}
  loadBalancing: {name: LEAST_CONN}
  connectTimeout: 250ms
  circuitBreaker:
    simpleCb: {maxConnections: 100, httpMaxPendingRequests: 10, sleepWindow: 15m,
               httpConsecutiveErrors: 7, httpDetectionInterval: 5m, httpMaxEjectionPercent: 50}
---
apiVersion: config.istio.io/v1alpha2
kind: EgressRule
metadata: {name: google}
spec:
  destination: {service: "*.google.com"}
  ports: [{port: 443, protocol: https}, {port: 80, protocol: http}]
"""


def load(tmp_path: Path, text: str):
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text))
    return path, *parse_config_file(path)


def test_istio_02_documents_accepted_as_written(tmp_path):
    _, objects, errors = load(tmp_path, ISTIO_02)
    assert errors == []
    snap = ConfigSnapshot.of(objects)
    jason, split = snap.route_rules  # higher precedence first
    assert jason.name == "reviews-jason"
    assert dict(jason.match.headers)["cookie"].kind is MatchKind.REGEX
    assert dict(jason.match.headers)["uri"].value == "/api"
    assert jason.match.source == ServiceRef(name="productpage", labels={"version": "v1"})
    assert jason.route[0].weight == 100 and jason.websocket_upgrade
    assert [(dict(r.labels), r.weight) for r in split.route] == [
        ({"version": "v1"}, 75),
        ({"version": "v3"}, 25),
    ]
    assert split.timeout == 1.5 and split.retry.attempts == 3 and split.retry.per_try_timeout == 0.2
    assert split.fault.delay_percent == 10 and split.fault.fixed_delay == 5
    assert split.fault.abort_status == 503 and split.cors.max_age == 60
    (policy,) = snap.destination_policies
    assert policy.load_balancing is LoadBalancer.LEAST_CONN and policy.connect_timeout == 0.25
    assert (
        policy.circuit_breaker.sleep_window == 900 and policy.circuit_breaker.max_connections == 100
    )
    (egress,) = snap.egress_rules
    assert egress.matches("www.google.com") and not egress.matches("google.com.evil")
    assert [p.protocol for p in egress.ports] == [Protocol.TLS, Protocol.HTTP]
    assert snap.conflicts == ()


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ("weight: 25}", "spec.route: expected weights summing to 100, got 95"),
        ("timeout: 1.5s", "spec.httpReqTimeout.simpleTimeout.timeout: expected a duration"),
        ("httpStatus: 503", "spec.httpFault.abort.httpStatus: expected an integer in 200..599"),
        ("LEAST_CONN", "spec.loadBalancing.name: expected one of LEAST_CONN, RANDOM, ROUND_ROBIN"),
        ("protocol: https", "spec.ports[0].protocol: expected one of http, http2, grpc"),
        ('regex: "^(.*?;)', "spec.match.request.headers.cookie.regex: expected an RE2 regular"),
    ],
)
def test_errors_name_object_and_field(tmp_path, patch, expected):
    broken = {
        "weight: 25}": "weight: 20}",
        "timeout: 1.5s": "timeout: soon",
        "httpStatus: 503": "httpStatus: 42",
        "LEAST_CONN": "FASTEST",
        "protocol: https": "protocol: smtp",
        'regex: "^(.*?;)': 'regex: "^((.*?;)',
    }[patch]
    assert patch in ISTIO_02
    path, objects, errors = load(tmp_path, ISTIO_02.replace(patch, broken))
    assert objects is None
    assert any(str(e).startswith(f"{path}: ") and expected in str(e) for e in errors), errors


def test_service_ref_resolves_across_registries():
    services = [
        Service("reviews.default.svc.cluster.local"),
        Service("ratings.service.consul", namespace="default"),
    ]
    assert ServiceRef(name="reviews").resolve(services, "default") == services[0].hostname
    assert ServiceRef(name="ratings").resolve(services, "default") == "ratings.service.consul"
    assert ServiceRef(service="ratings.service.consul").resolve(services, "x") is not None
    assert ServiceRef(name="reviews").resolve(services, "other") is None


def test_equal_precedence_is_a_reported_conflict(tmp_path, capsys):
    path, _, _ = load(tmp_path, ISTIO_02.replace("precedence: 1", "precedence: 2"))
    _, objects, _ = load(tmp_path, ISTIO_02.replace("precedence: 1", "precedence: 2"))
    snap = ConfigSnapshot.of(objects)
    (conflict,) = snap.conflicts
    assert conflict.winner == "RouteRule default/reviews-jason"
    assert [r.name for r in snap.route_rules] == ["reviews-jason", "reviews-split"]
    assert main(["validate", str(path)]) == 0
    assert "warning: RouteRule default/reviews-jason and RouteRule default/reviews-split" in (
        capsys.readouterr().err
    )


def test_ingress_both_api_versions(tmp_path):
    _, objects, errors = load(
        tmp_path,
        """
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata: {name: web, namespace: shop}
        spec:
          tls: [{hosts: [shop.example], secretName: shop-cert}]
          rules:
          - host: shop.example
            http:
              paths:
              - {path: /api, pathType: Prefix, backend: {service: {name: api, port: {name: http}}}}
        ---
        apiVersion: extensions/v1beta1
        kind: Ingress
        metadata: {name: old}
        spec:
          rules:
          - http:
              paths:
              - {path: /, backend: {serviceName: web, servicePort: 80}}
        """,
    )
    assert errors == []
    new, old = sorted(objects, key=lambda g: g.name, reverse=True)
    assert new.paths[0].backend == ServiceRef(name="api", namespace="shop")
    assert new.paths[0].port == "http" and new.tls_hosts == (("shop.example", "shop-cert"),)
    assert old.paths[0].host == "*" and old.paths[0].port == 80


L4_AND_EXTRAS = """
apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {name: db-faults}
spec:
  destination: {name: db}
  route: [{labels: {version: v1}}]
  httpReqRetries: {simpleRetry: {attempts: 2, overrideHeaderName: X-Retries}}
  l4Fault:
    throttle: {percent: 100, downstreamLimitBps: 64000, upstreamLimitBps: 8000}
    terminate: {terminateAfterPeriod: 30s}
"""


def test_l4_fault_and_retry_override_parse(tmp_path):
    _, objects, errors = load(tmp_path, L4_AND_EXTRAS)
    assert errors == []
    (rule,) = ConfigSnapshot.of(objects).route_rules
    assert rule.retry.override_header == "x-retries"
    fault = rule.l4_fault
    assert (fault.downstream_limit_bps, fault.upstream_limit_bps) == (64000, 8000)
    assert fault.terminate_after == 30


@pytest.mark.parametrize(
    ("text", "broken", "expected"),
    [
        (L4_AND_EXTRAS, "percent: 100", "spec.l4Fault.throttle.percent: expected 100"),
        (
            L4_AND_EXTRAS,
            "upstreamLimitBps: 8000",
            "spec.l4Fault.throttle.throttleAfterBytes: expected none",
        ),
        (L4_AND_EXTRAS, "terminateAfterPeriod: 30s", "terminateAfterPeriod: is required"),
        (L4_AND_EXTRAS, "X-Retries", "overrideHeaderName: expected an HTTP header name"),
        (ISTIO_02, "{port: 80, protocol: http}", "spec.ports[1].protocol: expected http, http2"),
        (ISTIO_02, "connectTimeout: 250ms", "spec.custom: expected none"),
    ],
)
def test_unsupported_l4_and_policy_fields_are_refused_clearly(tmp_path, text, broken, expected):
    replacement = {
        "percent: 100": "percent: 50",
        "upstreamLimitBps: 8000": "upstreamLimitBps: 8000, throttleAfterBytes: 1000",
        "terminateAfterPeriod: 30s": "percent: 100",
        "X-Retries": '"bad header"',
        "{port: 80, protocol: http}": "{port: 6379, protocol: tcp}",
        "connectTimeout: 250ms": "connectTimeout: 250ms\n  custom: {'@type': x.Policy}",
    }[broken]
    assert broken in text
    path, objects, errors = load(tmp_path, text.replace(broken, replacement))
    assert objects is None
    assert any(str(e).startswith(f"{path}: ") and expected in str(e) for e in errors), errors
