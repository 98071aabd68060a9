"""A Sidecar resource limits the clusters, outbound listeners and routes a proxy receives to
its egress hosts; proxies it does not select see the whole mesh; bad fields are refused."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from envoy.config.route.v3 import route_pb2

from meshfed.pilot import xds_types as T
from meshfed.pilot.cache import ConfigCache
from meshfed.pilot.config.sidecar import for_proxy
from meshfed.pilot.config.store import ConfigSnapshot, parse_config_file
from meshfed.pilot.node import ProxyNode
from meshfed.registry.aggregate import AggregateRegistry
from meshfed.registry.model import Endpoint, Port, Protocol, Service

SIDECARS = """
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: shop}
spec:
  egress: [{hosts: ["./*", "istio-system/*", "*/db.data.svc.cluster.local"]}]
---
apiVersion: networking.istio.io/v1beta1
kind: Sidecar
metadata: {name: batch, namespace: shop}
spec:
  workloadSelector: {labels: {app: batch}}
  egress: [{hosts: ["~/*"]}]
"""


def cache(tmp_path: Path, text: str) -> ConfigCache:
    agg = AggregateRegistry()
    member = agg.add_member("t")
    services, endpoints = [], {}
    for i, (name, ns) in enumerate(
        [
            ("web", "shop"),
            ("cart", "shop"),
            ("db", "data"),
            ("cache", "data"),
            ("ca", "istio-system"),
        ]
    ):
        host = f"{name}.{ns}.svc.cluster.local"
        services.append(Service(host, namespace=ns, ports=[Port(80, "http", Protocol.HTTP)]))
        services.append(
            Service(
                f"t{i}.{ns}.svc.cluster.local",
                namespace=ns,
                ports=[Port(7000 + i, "tcp", Protocol.TCP)],
            )
        )
        endpoints[host] = [Endpoint(f"127.0.7.{i + 1}", {"http": 9080}, {"app": name})]
    member.replace(services, endpoints)
    member.mark_synced()
    c = ConfigCache(agg)
    c.rebuild()
    path = tmp_path / "sidecar.yaml"
    path.write_text(textwrap.dedent(text))
    objects, errors = parse_config_file(path)
    assert errors == [] and objects is not None
    c.set_config(ConfigSnapshot.of(objects), None)
    return c


def hosts(cache: ConfigCache, node: ProxyNode) -> tuple[set[str], set[str], set[str]]:
    view = cache.view(node)
    clusters = {n.split("|")[3] for n in view.get(T.CLUSTER) if n.startswith("outbound|")}
    listeners = set(view.get(T.LISTENER))
    vhosts = set()
    for res in view.get(T.ROUTE).values():
        config = route_pb2.RouteConfiguration()
        res.body.Unpack(config)
        vhosts |= {vh.name.rpartition(":")[0] for vh in config.virtual_hosts}
    return clusters, listeners, vhosts


def test_egress_hosts_limit_what_a_proxy_receives(tmp_path: Path) -> None:
    c = cache(tmp_path, SIDECARS)
    scoped = hosts(c, ProxyNode(id="web", ip="127.0.7.1", namespace="shop"))
    whole = hosts(c, ProxyNode(id="other", ip="127.0.7.3", namespace="data"))
    assert scoped[0] == {
        "web.shop.svc.cluster.local",
        "cart.shop.svc.cluster.local",
        "t0.shop.svc.cluster.local",
        "t1.shop.svc.cluster.local",
        "db.data.svc.cluster.local",
        "ca.istio-system.svc.cluster.local",
        "t4.istio-system.svc.cluster.local",
    }
    assert scoped[2] == {
        "web.shop.svc.cluster.local",
        "cart.shop.svc.cluster.local",
        "db.data.svc.cluster.local",
        "ca.istio-system.svc.cluster.local",
    }
    assert "outbound|127.0.7.1:7002" not in scoped[1]  # t2 (data) is out of scope
    assert "outbound|127.0.7.1:7000" in scoped[1]
    assert len(whole[0]) == 10 and len(whole[2]) == 5  # no Sidecar in data: the whole mesh
    # The selector's Sidecar wins over the namespace's for its workload: nothing outbound.
    sidecars = c.traffic.snapshot.sidecars
    assert for_proxy(sidecars, "shop", [{"app": "batch"}]).name == "batch"  # type: ignore[union-attr]
    assert for_proxy(sidecars, "shop", [{"app": "web"}]).name == "default"  # type: ignore[union-attr]
    assert for_proxy(sidecars, "data", [{"app": "batch"}]) is None


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ("{egress: [{hosts: [web]}]}", "spec.egress[0].hosts[0]"),
        ("{egress: [{hosts: ['./*'], port: {number: 80}}]}", "spec.egress[0].port"),
        ("{egress: [{hosts: ['./*']}], ingress: []}", "spec.ingress"),
        (
            "{egress: [{hosts: ['./*']}], outboundTrafficPolicy: {mode: REGISTRY_ONLY}}",
            "spec.outboundTrafficPolicy",
        ),
        ("{workloadSelector: {labels: {app: a}}}", "spec.egress"),
        ("{egress: [{hosts: ['Bad_NS!/x']}]}", "spec.egress[0].hosts[0]"),
    ],
)
def test_bad_sidecars_are_refused_naming_the_field(tmp_path: Path, spec: str, field: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\n"
        f"metadata: {{name: x, namespace: shop}}\nspec: {spec}\n"
    )
    objects, errors = parse_config_file(path)
    assert objects is None
    assert any(str(e).startswith(f"{path}: Sidecar shop/x: {field}") for e in errors), errors
