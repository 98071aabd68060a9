"""Today's Istio routing kinds: what they become in the one model, what is refused and how, and
which generation wins where both configure one host."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from meshfed.cli import main
from meshfed.pilot.config.istio import UNDEFINED_SUBSET_LABEL
from meshfed.pilot.config.model import LoadBalancer, MatchKind, RouteRule, ServiceRef
from meshfed.pilot.config.store import ConfigSnapshot, parse_config_file

REVIEWS = """
apiVersion: networking.istio.io/{version}
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews]
  http:
  - match:
    - headers: {{end-user: {{exact: jason}}}}
    - uri: {{prefix: /api}}
    route: [{{destination: {{host: reviews, subset: v2}}}}]
    timeout: 2s
    retries: {{attempts: 3, perTryTimeout: 500ms}}
  - route:
    - {{destination: {{host: reviews, subset: v1}}, weight: 75}}
    - {{destination: {{host: ratings.other, subset: v3}}, weight: 25}}
    fault: {{abort: {{percentage: {{value: 12.5}}, httpStatus: 503}}}}
---
apiVersion: networking.istio.io/{version}
kind: DestinationRule
metadata: {{name: reviews, namespace: shop}}
spec:
  host: reviews.shop.svc.cluster.local
  trafficPolicy:
    loadBalancer: {{simple: LEAST_REQUEST}}
    connectionPool: {{tcp: {{maxConnections: 7, connectTimeout: 250ms}}}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - name: v2
    labels: {{version: v2}}
    trafficPolicy: {{outlierDetection: {{consecutive5xxErrors: 4, interval: 5s}}}}
---
apiVersion: networking.istio.io/{version}
kind: DestinationRule
metadata: {{name: ratings, namespace: other}}
spec:
  host: ratings
  subsets: [{{name: v3, labels: {{version: v3}}}}]
"""


def load(tmp_path: Path, text: str) -> tuple[Path, ConfigSnapshot | None, list[str]]:
    path = tmp_path / "istio.yaml"
    path.write_text(textwrap.dedent(text))
    objects, errors = parse_config_file(path)
    return path, None if objects is None else ConfigSnapshot.of(objects), [str(e) for e in errors]


@pytest.mark.parametrize("version", ["v1alpha3", "v1beta1", "v1"])
def test_virtual_service_becomes_route_rules_in_first_match_order(
    tmp_path: Path, version: str
) -> None:
    _, snap, errors = load(tmp_path, REVIEWS.format(version=version))
    assert errors == [] and snap is not None
    assert snap.notes == ()
    rules = snap.route_rules
    # One rule per match block, earlier http entries (and blocks) with higher precedence.
    assert [r.name for r in rules] == [
        "reviews.http[0].match[0]",
        "reviews.http[0].match[1]",
        "reviews.http[1]",
    ]
    assert [r.precedence for r in rules] == [3, 2, 1]
    assert all(r.ref.startswith("VirtualService shop/") for r in rules)
    jason, api, split = rules
    assert jason.destination == ServiceRef(name="reviews", namespace="shop")
    ((name, match),) = jason.match.headers
    assert (name, match.kind, match.value) == ("end-user", MatchKind.EXACT, "jason")
    ((name, match),) = api.match.headers
    assert (name, match.kind, match.value) == ("uri", MatchKind.PREFIX, "/api")
    assert [dict(w.labels) for w in jason.route] == [{"version": "v2"}]
    assert jason.timeout == 2.0 and jason.retry is not None and jason.retry.attempts == 3
    assert [(w.weight, dict(w.labels)) for w in split.route] == [
        (75, {"version": "v1"}),
        (25, {"version": "v3"}),
    ]
    # The same host is "this rule's destination"; another host is named.
    assert split.route[0].destination is None
    assert split.route[1].destination == ServiceRef(name="ratings", namespace="other")
    assert split.fault is not None and split.fault.abort_percent == 12.5
    policies = {p.name: p for p in snap.destination_policies}
    assert set(policies) == {"reviews", "reviews.v2"}
    assert policies["reviews"].load_balancing is LoadBalancer.LEAST_CONN
    assert policies["reviews"].connect_timeout == 0.25
    assert policies["reviews"].circuit_breaker is not None
    assert policies["reviews"].circuit_breaker.max_connections == 7
    assert dict(policies["reviews.v2"].destination.labels) == {"version": "v2"}
    v2_cb = policies["reviews.v2"].circuit_breaker
    assert v2_cb is not None and v2_cb.http_consecutive_errors == 4


REFUSED = {
    "tcp route": ("spec:\n  hosts: [a]\n  tcp: [{route: []}]", "spec.tcp"),
    "tls route": ("spec:\n  hosts: [a]\n  tls: [{}]", "spec.tls"),
    "gateway name": (
        "spec:\n  hosts: [a]\n  gateways: [Front]\n  http: [{route: [{destination: {host: a}}]}]",
        "spec.gateways[0]",
    ),
    "tls routes on mesh": (
        "spec:\n  hosts: [a]\n  gateways: [mesh, front]\n  tls: [{route: []}]",
        "spec.tls",
    ),
    "query match": (
        "spec:\n  hosts: [a]\n  http: [{match: [{queryParams: {q: {exact: x}}}], "
        "route: [{destination: {host: a}}]}]",
        "spec.http[0].match[0].queryParams",
    ),
    "destination port": (
        "spec:\n  hosts: [a]\n  http: [{route: [{destination: {host: a, port: {number: 80}}}]}]",
        "spec.http[0].route[0].destination.port",
    ),
    "direct response": (
        "spec:\n  hosts: [a]\n  http: [{directResponse: {status: 200}}]",
        "spec.http[0].directResponse",
    ),
    "grpc abort": (
        "spec:\n  hosts: [a]\n  http: [{fault: {abort: {grpcStatus: UNAVAILABLE, "
        "httpStatus: 503}}, route: [{destination: {host: a}}]}]",
        "spec.http[0].fault.abort.grpcStatus",
    ),
    "retry on": (
        "spec:\n  hosts: [a]\n  http: [{retries: {attempts: 2, retryOn: 5xx}, "
        "route: [{destination: {host: a}}]}]",
        "spec.http[0].retries.retryOn",
    ),
    "response headers": (
        "spec:\n  hosts: [a]\n  http: [{headers: {response: {add: {x: y}}}, "
        "route: [{destination: {host: a}}]}]",
        "spec.http[0].headers.response",
    ),
    "no route": ("spec:\n  hosts: [a]\n  http: [{timeout: 1s}]", "spec.http[0].route"),
    "weights": (
        "spec:\n  hosts: [a]\n  http: [{route: [{destination: {host: a}, weight: 60}, "
        "{destination: {host: b}, weight: 60}]}]",
        "spec.http[0].route",
    ),
    "typo": ("spec:\n  hosts: [a]\n  htp: []", "spec.htp"),
    "export": ("spec:\n  hosts: [a]\n  exportTo: ['.']", "spec.exportTo"),
}
DR_REFUSED = {
    "consistent hash": (
        "spec:\n  host: a\n  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x}}}",
        "spec.trafficPolicy.loadBalancer.consistentHash",
    ),
    "locality": (
        "spec:\n  host: a\n  trafficPolicy: {loadBalancer: {localityLbSetting: {enabled: true}}}",
        "spec.trafficPolicy.loadBalancer.localityLbSetting",
    ),
    "tls": (
        "spec:\n  host: a\n  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}",
        "spec.trafficPolicy.tls",
    ),
    "port level": (
        "spec:\n  host: a\n  subsets: [{name: v1, trafficPolicy: {portLevelSettings: []}}]",
        "spec.subsets[0].trafficPolicy.portLevelSettings",
    ),
    "bad balancer": (
        "spec:\n  host: a\n  trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}",
        "spec.trafficPolicy.loadBalancer.simple",
    ),
    "subset twice": (
        "spec:\n  host: a\n  subsets: [{name: v1}, {name: v1}]",
        "spec.subsets[1].name",
    ),
}


@pytest.mark.parametrize(
    ("kind", "case"),
    [("VirtualService", c) for c in sorted(REFUSED)]
    + [("DestinationRule", c) for c in sorted(DR_REFUSED)],
)
def test_unimplemented_fields_are_refused_naming_file_object_and_field(
    tmp_path: Path, kind: str, case: str
) -> None:
    spec, field = (REFUSED if kind == "VirtualService" else DR_REFUSED)[case]
    text = (
        f"apiVersion: networking.istio.io/v1beta1\nkind: {kind}\n"
        f"metadata: {{name: x, namespace: shop}}\n{spec}\n"
    )
    path, snap, errors = load(tmp_path, text)
    assert snap is None
    assert any(e.startswith(f"{path}: {kind} shop/x: {field}: ") for e in errors), errors


def test_an_unknown_api_version_is_refused(tmp_path: Path) -> None:
    path, snap, errors = load(
        tmp_path,
        "apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: x}\n"
        "spec: {hosts: [a], http: [{route: [{destination: {host: a}}]}]}\n",
    )
    assert snap is None
    assert errors == [
        f"{path}: VirtualService default/x: apiVersion: expected one of "
        "networking.istio.io/v1, networking.istio.io/v1alpha3, networking.istio.io/v1beta1, "
        "got 'networking.istio.io/v2'"
    ]


GENERATIONS = """
apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {name: reviews-default}
spec:
  destination: {name: reviews}
  route: [{labels: {version: v3}}]
---
apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {name: ratings-default}
spec:
  destination: {name: ratings}
  route: [{labels: {version: v1}}]
---
apiVersion: config.istio.io/v1alpha2
kind: DestinationPolicy
metadata: {name: reviews-lb}
spec:
  destination: {name: reviews}
  loadBalancing: {name: RANDOM}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http: [{route: [{destination: {host: reviews, subset: v1}}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
"""


def test_where_both_generations_configure_a_host_todays_api_wins_and_validate_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, snap, errors = load(tmp_path, GENERATIONS)
    assert errors == [] and snap is not None
    # reviews: the VirtualService's rule only; ratings: untouched by today's API.
    assert sorted(r.ref for r in snap.route_rules) == [
        "RouteRule default/ratings-default",
        "VirtualService default/reviews.http[0]",
    ]
    assert [p.ref for p in snap.destination_policies] == []
    assert snap.notes == (
        "DestinationPolicy default/reviews-lb is not applied: a DestinationRule covers "
        "reviews.default.svc.cluster.local",
        "RouteRule default/reviews-default is not applied: a VirtualService routes "
        "reviews.default.svc.cluster.local",
    )
    assert main(["validate", str(path)]) == 0
    err = capsys.readouterr().err
    for note in snap.notes:
        assert f"warning: {note}" in err


def test_a_route_to_an_undefined_subset_is_reported_and_matches_no_endpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = GENERATIONS.split("---")[3]
    path, snap, errors = load(tmp_path, text)
    assert errors == [] and snap is not None
    (rule,) = snap.route_rules
    assert isinstance(rule, RouteRule)
    assert dict(rule.route[0].labels) == {UNDEFINED_SUBSET_LABEL: "v1"}
    (note,) = snap.notes
    assert "subset 'v1'" in note and "no DestinationRule defines" in note
    assert main(["validate", str(path)]) == 0
    assert f"warning: {note}" in capsys.readouterr().err
