"""Route rules translate into Envoy routes: matches, weights, per-route filters, source keys."""

from __future__ import annotations

import textwrap
from pathlib import Path

from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2

from meshfed.pilot import xds_types as T
from meshfed.pilot.cache import ConfigCache, check_consistency
from meshfed.pilot.config.store import ConfigSnapshot, parse_config_file
from meshfed.pilot.node import ProxyNode
from meshfed.pilot.translate import rules
from meshfed.registry.aggregate import AggregateRegistry
from meshfed.registry.model import Endpoint, Port, Protocol, Service

REVIEWS = "reviews.default.svc.cluster.local"
PRODUCTPAGE = "productpage.default.svc.cluster.local"
HTTP = Port(80, "http", Protocol.HTTP)

RULES = """
apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {name: split}
spec:
  destination: {name: reviews}
  precedence: 1
  route:
  - {labels: {version: v1}, weight: 75}
  - {labels: {version: v2}, weight: 25}
  httpReqTimeout: {simpleTimeout: {timeout: 1.5s}}
  httpReqRetries: {simpleRetry: {attempts: 3, perTryTimeout: 0.5s}}
---
apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {name: jason}
spec:
  destination: {name: reviews}
  precedence: 2
  match:
    source: {name: productpage, labels: {version: v1}}
    request:
      headers:
        cookie: {regex: "^(.*?;)?(user=jason)(;.*)?$"}
        uri: {prefix: /api}
        authority: {exact: reviews}
  route: [{labels: {version: v2}}]
  httpFault: {abort: {percent: 12.5, httpStatus: 503}, delay: {percent: 100, fixedDelay: 2s}}
  mirror: {name: reviews, labels: {version: v3}}
  rewrite: {uri: /v2/api}
  websocketUpgrade: true
  appendHeaders: {x-mesh: meshfed}
  corsPolicy: {allowOrigin: [https://a.example], allowMethods: [GET, POST], maxAge: 1m}
"""


def cache_with(tmp_path: Path, text: str, client_version: str = "v1") -> ConfigCache:
    agg = AggregateRegistry()
    member = agg.add_member("m")
    member.put_service(
        Service(REVIEWS, ports=(HTTP,)),
        [Endpoint(f"10.0.0.{i}", labels={"version": f"v{i}"}) for i in (1, 2, 3)],
    )
    member.put_service(
        Service(PRODUCTPAGE, ports=(HTTP,)),
        [Endpoint("10.0.1.1", labels={"version": client_version})],
    )
    cache = ConfigCache(agg)
    cache.rebuild()
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text))
    objects, errors = parse_config_file(path)
    assert not errors and objects is not None
    cache.set_config(ConfigSnapshot.of(objects))
    return cache


def reviews_routes(cache: ConfigCache, node: ProxyNode) -> list:
    view = cache.view(node)
    assert check_consistency(view) == []
    config = route_pb2.RouteConfiguration()
    next(iter(view.get(T.ROUTE).values())).body.Unpack(config)
    vhost = next(v for v in config.virtual_hosts if v.name == f"{REVIEWS}:80")
    return list(vhost.routes)


def test_rules_become_routes_in_precedence_order_for_the_matching_source(tmp_path: Path) -> None:
    cache = cache_with(tmp_path, RULES)
    routes = reviews_routes(cache, ProxyNode(id="pp", ip="10.0.1.1"))
    assert [r.name for r in routes] == ["RouteRule default/jason", "RouteRule default/split", ""]
    jason, split, default = routes
    assert jason.match.prefix == "/api"
    headers = {h.name: h.string_match for h in jason.match.headers}
    assert headers["cookie"].safe_regex.regex == "^(.*?;)?(user=jason)(;.*)?$"
    assert headers[":authority"].exact == "reviews"
    assert jason.route.cluster == f"outbound|80|version=v2|{REVIEWS}"
    assert jason.route.prefix_rewrite == "/v2/api"
    assert jason.route.request_mirror_policies[0].cluster == f"outbound|80|version=v3|{REVIEWS}"
    assert jason.route.upgrade_configs[0].upgrade_type == "websocket"
    assert jason.request_headers_to_add[0].header.key == "x-mesh"
    fault = fault_pb2.HTTPFault()
    jason.typed_per_filter_config[rules.FAULT_FILTER].Unpack(fault)
    assert fault.abort.http_status == 503 and fault.abort.percentage.numerator == 125_000
    assert fault.delay.fixed_delay.seconds == 2
    assert rules.CORS_FILTER in jason.typed_per_filter_config
    weights = {c.name: c.weight.value for c in split.route.weighted_clusters.clusters}
    assert weights == {
        f"outbound|80|version=v1|{REVIEWS}": 75,
        f"outbound|80|version=v2|{REVIEWS}": 25,
    }
    assert split.route.timeout.ToMilliseconds() == 1500
    assert split.route.retry_policy.num_retries.value == 3
    assert "5xx" in split.route.retry_policy.retry_on
    assert split.route.retry_policy.per_try_timeout.ToMilliseconds() == 500
    assert default.route.cluster == f"outbound|80||{REVIEWS}"


def test_source_rule_is_absent_for_another_source(tmp_path: Path) -> None:
    cache = cache_with(tmp_path, RULES, client_version="v2")
    routes = reviews_routes(cache, ProxyNode(id="pp", ip="10.0.1.1"))
    assert [r.name for r in routes] == ["RouteRule default/split", ""]
    # A proxy the registry does not know is no source either.
    assert len(reviews_routes(cache, ProxyNode(id="x", ip="10.9.9.9"))) == 2


def test_subset_clusters_have_filtered_assignments(tmp_path: Path) -> None:
    cache = cache_with(tmp_path, RULES)
    view = cache.view(ProxyNode(id="pp", ip="10.0.1.1"))
    names = set(view.get(T.CLUSTER))
    for version in ("v1", "v2", "v3"):
        assert f"outbound|80|version={version}|{REVIEWS}" in names
    from envoy.config.endpoint.v3 import endpoint_pb2

    cla = endpoint_pb2.ClusterLoadAssignment()
    view.get(T.ENDPOINT)[f"outbound|80|version=v2|{REVIEWS}"].body.Unpack(cla)
    addresses = [e.endpoint.address.socket_address.address for e in cla.endpoints[0].lb_endpoints]
    assert addresses == ["10.0.0.2"]


def test_removing_rules_removes_subsets_and_keeps_versions_stable(tmp_path: Path) -> None:
    cache = cache_with(tmp_path, RULES)
    node = ProxyNode(id="pp", ip="10.0.1.1")
    before = cache.view(node).version(T.CLUSTER)
    change = cache.set_config(cache.traffic.snapshot)
    assert not change.cluster_names  # same snapshot: nothing to re-send
    assert cache.view(node).version(T.CLUSTER) == before
    change = cache.set_config(ConfigSnapshot())
    # Routes no longer use the subsets, but proxies may still hold the old routes: the
    # clusters stay until settle_config (after the proxies ACKed the new routes).
    assert [r.route.cluster for r in reviews_routes(cache, node)] == [f"outbound|80||{REVIEWS}"]
    assert f"outbound|80|version=v2|{REVIEWS}" in cache.view(node).get(T.CLUSTER)
    change = cache.settle_config()
    assert change is not None and f"outbound|80|version=v2|{REVIEWS}" in change.cluster_names
    assert cache.settle_config() is None
    view = cache.view(node)
    assert not any("version=" in n for n in view.get(T.CLUSTER))
    assert check_consistency(view) == []


def test_rule_for_a_service_that_appears_later_applies_then(tmp_path: Path) -> None:
    cache = cache_with(tmp_path, RULES.replace("name: reviews}", "name: details}"))
    node = ProxyNode(id="pp", ip="10.0.1.1")
    assert not any("version=" in n for n in cache.view(node).get(T.CLUSTER))
    assert cache.traffic.unresolved
    host = "details.default.svc.cluster.local"
    cache.registry.members[0].put_service(
        Service(host, ports=(HTTP,)), [Endpoint("10.0.2.1", labels={"version": "v2"})]
    )
    change = cache.apply({host})
    assert f"outbound|80|version=v2|{host}" in change.cluster_names
    assert check_consistency(cache.view(node)) == []


def test_regex_envoy_cannot_compile_is_rejected_at_the_edge(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        textwrap.dedent(
            """
            apiVersion: config.istio.io/v1alpha2
            kind: RouteRule
            metadata: {name: lookahead}
            spec:
              destination: {name: reviews}
              match: {request: {headers: {x-user: {regex: "jason(?=-admin)"}}}}
            """
        )
    )
    objects, errors = parse_config_file(path)
    assert objects is None and len(errors) == 1
    assert "RE2" in str(errors[0]) and "x-user" in errors[0].field


def test_retry_override_header_feeds_envoys_max_retries(tmp_path: Path) -> None:
    text = RULES.replace(
        "perTryTimeout: 0.5s}}", "perTryTimeout: 0.5s, overrideHeaderName: X-Retries}}"
    )
    cache = cache_with(tmp_path, text)
    routes = reviews_routes(cache, ProxyNode(id="sidecar~10.0.1.9~x~default", ip="10.0.1.9"))
    split = next(r for r in routes if r.name == "RouteRule default/split")
    assert split.route.retry_policy.num_retries.value == 3
    (added,) = split.request_headers_to_add
    assert (added.header.key, added.header.value) == ("x-envoy-max-retries", "%REQ(x-retries)%")
    assert not added.keep_empty_value  # no header from the app: the rule's attempts apply
