"""A RouteRule and the equivalent VirtualService give the same Envoy config (Istio's bookinfo).

Every resource a proxy receives (clusters, endpoints, listeners, routes) is compared byte for
byte; the only difference allowed is a route's ``name``, which names the document it came from.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from envoy.config.route.v3 import route_pb2

from meshfed.pilot import xds_types as T
from meshfed.pilot.cache import ConfigCache
from meshfed.pilot.config.store import ConfigSnapshot, parse_config_file
from meshfed.pilot.node import ProxyNode
from meshfed.registry.aggregate import AggregateRegistry
from meshfed.registry.model import Endpoint, Port, Protocol, Service

HTTP = Port(9080, "http", Protocol.HTTP)
SERVICES = ("productpage", "reviews", "ratings", "details")

SUBSETS = """
apiVersion: networking.istio.io/{version}
kind: DestinationRule
metadata: {{name: {name}}}
spec:
  host: {name}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
  - {{name: v3, labels: {{version: v3}}}}
"""

OLD_ALL_V1 = "".join(
    f"""---
apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {{name: {s}-default}}
spec:
  destination: {{name: {s}}}
  precedence: 1
  route: [{{labels: {{version: v1}}}}]
"""
    for s in SERVICES
)
NEW_ALL_V1 = "".join(
    f"""---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: {s}}}
spec:
  hosts: [{s}]
  http:
  - route: [{{destination: {{host: {s}, subset: v1}}}}]
"""
    for s in SERVICES
)

OLD_V2_V3 = """
apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {name: reviews-default}
spec:
  destination: {name: reviews}
  precedence: 1
  route:
  - {labels: {version: v2}, weight: 50}
  - {labels: {version: v3}, weight: 50}
"""
NEW_V2_V3 = """
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v2}, weight: 50}
    - {destination: {host: reviews, subset: v3}, weight: 50}
"""

OLD_JASON = """
apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {name: reviews-test-v2}
spec:
  destination: {name: reviews}
  precedence: 2
  match: {request: {headers: {end-user: {exact: jason}}}}
  route: [{labels: {version: v2}}]
---
apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {name: reviews-default}
spec:
  destination: {name: reviews}
  precedence: 1
  route: [{labels: {version: v1}}]
"""
NEW_JASON = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
"""

OLD_RATINGS = """
apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {{name: ratings-test}}
spec:
  destination: {{name: ratings}}
  precedence: 2
  match: {{request: {{headers: {{end-user: {{exact: jason}}}}}}}}
  route: [{{labels: {{version: v1}}}}]
  httpFault: {old_fault}
---
apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {{name: ratings-default}}
spec:
  destination: {{name: ratings}}
  precedence: 1
  route: [{{labels: {{version: v1}}}}]
"""
NEW_RATINGS = """
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: ratings}}
spec:
  hosts: [ratings]
  http:
  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    fault: {new_fault}
    route: [{{destination: {{host: ratings, subset: v1}}}}]
  - route: [{{destination: {{host: ratings, subset: v1}}}}]
"""
DELAY = (
    "{delay: {percent: 100, fixedDelay: 7s}}",
    "{delay: {percentage: {value: 100.0}, fixedDelay: 7s}}",
)
ABORT = (
    "{abort: {percent: 100, httpStatus: 500}}",
    "{abort: {percentage: {value: 100.0}, httpStatus: 500}}",
)

CASES = {
    "all-v1": (OLD_ALL_V1, NEW_ALL_V1),
    "reviews-v2-v3": (OLD_V2_V3, NEW_V2_V3),
    "jason": (OLD_JASON, NEW_JASON),
    "ratings-delay": (
        OLD_RATINGS.format(old_fault=DELAY[0]),
        NEW_RATINGS.format(new_fault=DELAY[1]),
    ),
    "ratings-abort": (
        OLD_RATINGS.format(old_fault=ABORT[0]),
        NEW_RATINGS.format(new_fault=ABORT[1]),
    ),
}


def bookinfo() -> AggregateRegistry:
    agg = AggregateRegistry()
    member = agg.add_member("m")
    for i, name in enumerate(SERVICES):
        host = f"{name}.default.svc.cluster.local"
        member.put_service(
            Service(host, ports=(HTTP,)),
            [
                Endpoint(f"10.0.{i}.{v}", ports={"http": 9080}, labels={"version": f"v{v}"})
                for v in (1, 2, 3)
            ],
        )
    return agg


def config(tmp_path: Path, text: str) -> dict[str, dict[str, bytes]]:
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text))
    objects, errors = parse_config_file(path)
    assert not errors, [str(e) for e in errors]
    assert objects is not None
    snapshot = ConfigSnapshot.of(objects)
    assert snapshot.notes == ()
    cache = ConfigCache(bookinfo())
    cache.rebuild()
    cache.set_config(snapshot)
    view = cache.view(ProxyNode(id="pp", ip="10.0.0.1"))
    out: dict[str, dict[str, bytes]] = {}
    for type_url in (T.CLUSTER, T.ENDPOINT, T.LISTENER, T.ROUTE):
        out[type_url] = {}
        for name, resource in view.get(type_url).items():
            body = resource.body
            if type_url == T.ROUTE:
                routes = route_pb2.RouteConfiguration()
                body.Unpack(routes)
                for vhost in routes.virtual_hosts:
                    for route in vhost.routes:
                        route.name = ""
                out[type_url][name] = routes.SerializeToString(deterministic=True)
            else:
                out[type_url][name] = body.SerializeToString(deterministic=True)
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_route_rule_and_virtual_service_give_identical_envoy_config(
    tmp_path: Path, case: str
) -> None:
    old, new = CASES[case]
    subsets = "".join(
        "---" + SUBSETS.format(version=version, name=s)
        for s, version in zip(SERVICES, ("v1alpha3", "v1beta1", "v1", "v1"), strict=True)
    )
    old_config = config(tmp_path, old)
    new_config = config(tmp_path, new + subsets)
    assert old_config == new_config
    # ... and the rules did something: the routes differ from a mesh without rules.
    assert config(tmp_path, subsets)[T.ROUTE] != new_config[T.ROUTE]
