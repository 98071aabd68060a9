"""The shared cache: content versions, incremental rebuilds, per-proxy views."""

from __future__ import annotations

from meshfed.pilot import xds_types as T
from meshfed.pilot.cache import ConfigCache, check_consistency
from meshfed.pilot.node import ProxyNode
from meshfed.registry.aggregate import AggregateRegistry, Member
from meshfed.registry.model import Endpoint, Port, Protocol, Service

HTTP = Port(80, "http", Protocol.HTTP)


def setup() -> tuple[Member, ConfigCache]:
    agg = AggregateRegistry()
    member = agg.add_member("m")
    for name in ("a", "b", "c"):
        host = f"{name}.default.svc.cluster.local"
        member.put_service(Service(host, ports=(HTTP,)), [Endpoint(f"10.0.0.{ord(name)}")])
    cache = ConfigCache(agg)
    cache.rebuild()
    return member, cache


def test_endpoint_change_touches_one_assignment_only() -> None:
    member, cache = setup()
    host = "b.default.svc.cluster.local"
    member.set_endpoints(host, [Endpoint("10.0.0.98"), Endpoint("10.0.0.99")])
    change = cache.apply({host})
    assert change.endpoint_names == {"outbound|80||" + host}
    assert not change.cluster_names and not change.services_changed
    assert change.endpoints_only


def test_no_change_means_no_new_versions() -> None:
    _member, cache = setup()
    node = ProxyNode(id="p", ip="127.0.0.2")
    before = cache.view(node)
    change = cache.apply({"a.default.svc.cluster.local"})
    after = cache.view(node)
    assert not change.endpoint_names and not change.cluster_names
    for t in T.PUSH_ORDER:
        assert before.version(t) == after.version(t)


def test_views_share_resources_and_are_consistent() -> None:
    _member, cache = setup()
    v1 = cache.view(ProxyNode(id="p1", ip="127.0.0.2"))
    v2 = cache.view(ProxyNode(id="p2", ip="127.0.0.3"))
    name = "outbound|80||a.default.svc.cluster.local"
    assert v1.get(T.CLUSTER)[name] is v2.get(T.CLUSTER)[name]
    assert check_consistency(v1) == []
    assert set(v1.get(T.LISTENER)) == {"outbound_http"}


def test_service_removal_removes_cluster_and_route() -> None:
    member, cache = setup()
    host = "c.default.svc.cluster.local"
    member.delete_service(host)
    change = cache.apply({host})
    assert change.services_changed and "outbound|80||" + host in change.cluster_names
    view = cache.view(ProxyNode(id="p", ip="127.0.0.2"))
    assert "outbound|80||" + host not in view.get(T.CLUSTER)
    assert check_consistency(view) == []


def test_own_endpoints_give_inbound_resources() -> None:
    member, cache = setup()
    node = ProxyNode(id="p", ip="10.0.0.98", app_address="10.0.0.98", app_ports=((80, 8080),))
    member.set_endpoints("a.default.svc.cluster.local", [Endpoint("10.0.0.98")])
    cache.apply({"a.default.svc.cluster.local"})
    view = cache.view(node)
    assert "inbound|10.0.0.98:80" in view.get(T.LISTENER)
    assert "inbound|80||" in view.get(T.CLUSTER)
    assert check_consistency(view) == []
