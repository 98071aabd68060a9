"""Translation from the model to Envoy protos: discovery types, domains, listeners."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import health_check_pb2

from meshfed.pilot.node import ProxyNode
from meshfed.pilot.translate import clusters, endpoints, listeners, names, routes
from meshfed.registry.model import Endpoint, Locality, Port, Protocol, Resolution, Service

HTTP = Port(80, "http", Protocol.HTTP)
GRPC = Port(9090, "grpc", Protocol.GRPC)
TCP = Port(6379, "redis", Protocol.REDIS)


def svc(host: str, *ports: Port, ns: str = "default", **kw) -> Service:
    return Service(hostname=host, namespace=ns, ports=ports or (HTTP,), **kw)


def test_static_service_becomes_eds_cluster_named_like_istio() -> None:
    c = clusters.outbound_cluster(svc("b.default.svc.cluster.local"), HTTP, ())
    assert c.name == "outbound|80||b.default.svc.cluster.local"
    assert c.type == cluster_pb2.Cluster.EDS
    assert c.eds_cluster_config.service_name == c.name
    assert c.eds_cluster_config.eds_config.HasField("ads")


def test_dns_and_passthrough_resolution() -> None:
    ext = svc("api.example.com", resolution=Resolution.DNS)
    assert clusters.outbound_cluster(ext, HTTP, ()).type == cluster_pb2.Cluster.LOGICAL_DNS
    eps = (Endpoint("10.0.0.1", hostname="a.example.com"), Endpoint("10.0.0.2"))
    strict = clusters.outbound_cluster(ext, HTTP, eps)
    assert strict.type == cluster_pb2.Cluster.STRICT_DNS
    addrs = [
        lb.endpoint.address.socket_address.address
        for group in strict.load_assignment.endpoints
        for lb in group.lb_endpoints
    ]
    assert sorted(addrs) == ["10.0.0.2", "a.example.com"]
    passthrough = clusters.outbound_cluster(
        svc("any.example.com", resolution=Resolution.PASSTHROUGH), HTTP, ()
    )
    assert passthrough.type == cluster_pb2.Cluster.ORIGINAL_DST
    assert passthrough.lb_policy == cluster_pb2.Cluster.CLUSTER_PROVIDED


def test_http2_options_only_for_http2_and_grpc_ports() -> None:
    s = svc("g.default.svc.cluster.local", HTTP, GRPC)
    grpc_cluster = clusters.outbound_cluster(s, GRPC, ())
    assert clusters.HTTP_OPTIONS_KEY in grpc_cluster.typed_extension_protocol_options
    assert not clusters.outbound_cluster(s, HTTP, ()).typed_extension_protocol_options


def test_load_assignment_groups_by_locality_with_health_and_weight() -> None:
    eps = [
        Endpoint("10.0.0.2", ports={"http": 9080}, locality=Locality("us", "b"), weight=3),
        Endpoint("10.0.0.1", ports={"http": 9080}, locality=Locality("us", "a"), healthy=False),
    ]
    cla = endpoints.load_assignment("c", HTTP, eps)
    assert [g.locality.zone for g in cla.endpoints] == ["a", "b"]
    first = cla.endpoints[0].lb_endpoints[0]
    assert first.health_status == health_check_pb2.HealthStatus.UNHEALTHY
    assert first.endpoint.address.socket_address.port_value == 9080
    assert cla.endpoints[1].lb_endpoints[0].load_balancing_weight.value == 3


def test_domains_short_names_only_in_own_namespace() -> None:
    s = svc("b.demo.svc.cluster.local", ns="demo", address="10.9.0.1")
    same = routes.candidate_domains(s, HTTP, "demo")
    other = routes.candidate_domains(s, HTTP, "default")
    assert {"b", "b:80", "b.demo", "b.demo.svc", "b.demo.svc.cluster.local:80", "10.9.0.1"} <= set(
        same
    )
    assert "b" not in other and "b.demo" in other


def test_route_config_never_repeats_a_domain() -> None:
    a = svc("x.one.svc.cluster.local", ns="one")
    b = svc("x.two.svc.cluster.local", ns="two")
    config = routes.outbound_route_config([a, b], "one")
    domains = [d for vh in config.virtual_hosts for d in vh.domains]
    assert len(domains) == len(set(domains))
    assert config.virtual_hosts[0].routes[0].route.cluster == names.outbound_cluster(
        "x.one.svc.cluster.local", 80
    )


def test_non_default_http_port_needs_explicit_port() -> None:
    s = svc("m.default.svc.cluster.local", HTTP, Port(8080, "admin", Protocol.HTTP))
    d8080 = routes.candidate_domains(s, Port(8080, "admin", Protocol.HTTP), "default")
    assert "m.default.svc.cluster.local:8080" in d8080
    assert "m.default.svc.cluster.local" not in d8080


def test_listeners_skip_taken_ports_and_report_them() -> None:
    node = ProxyNode(id="n", ip="127.0.0.2", app_ports=((6379, 6380),))
    redis = svc("r.default.svc.cluster.local", TCP)
    other = svc("s.default.svc.cluster.local", Port(7000, "tcp", Protocol.TCP))
    got, problems = listeners.outbound_tcp_listeners(node, [redis, other])
    assert [lst.name for lst in got] == ["outbound|127.0.0.2:7000"]
    assert problems and "6379" in problems[0]


def test_inbound_listener_forwards_to_app_port() -> None:
    node = ProxyNode(id="n", ip="127.0.0.3", app_address="127.0.0.3", app_ports=((9080, 8080),))
    s = svc("b.default.svc.cluster.local")
    lsts, clus = listeners.inbound(node, [(s, Endpoint("127.0.0.3", ports={"http": 9080}))])
    assert [lst.address.socket_address.port_value for lst in lsts] == [9080]
    target = clus[0].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert (target.socket_address.address, target.socket_address.port_value) == ("127.0.0.3", 8080)


def test_eds_marks_sidecar_endpoints_for_the_mtls_transport_socket() -> None:
    from meshfed.pilot.translate.endpoints import lb_endpoints
    from meshfed.security import mtls

    port = Port(80, "http", Protocol.HTTP)
    meshed = Endpoint(
        "10.0.0.1", {"http": 9080}, {mtls.TLS_MODE_LABEL: mtls.TLS_MODE_MTLS}, identity="spiffe://x"
    )
    legacy = Endpoint("10.0.0.2", {"http": 9080}, identity="spiffe://y")
    (group,) = lb_endpoints(port, [legacy, meshed])
    metadata = {
        lb.endpoint.address.socket_address.address: lb.metadata.filter_metadata
        for lb in group.lb_endpoints
    }
    assert dict(metadata["10.0.0.1"][mtls.TRANSPORT_SOCKET_MATCH]) == mtls.MTLS_MATCH
    assert mtls.TRANSPORT_SOCKET_MATCH not in metadata["10.0.0.2"]


def test_assignments_are_prioritized_by_closeness_to_the_proxy() -> None:
    from meshfed.pilot.translate.endpoints import load_assignment, prioritized

    port = Port(80, "http", Protocol.HTTP)
    places = {
        "10.0.0.1": Locality("us-east", "a", "rack1"),
        "10.0.0.2": Locality("us-east", "a", "rack2"),
        "10.0.0.3": Locality("us-east", "b"),
        "10.0.0.4": Locality("us-west", "a"),
        "10.0.0.5": Locality(),
    }
    cla = load_assignment(
        "c", port, [Endpoint(ip, {"http": 80}, locality=loc) for ip, loc in places.items()]
    )

    def priorities(proxy: Locality) -> dict[str, int]:
        out = prioritized(cla, proxy)
        return {
            lb.endpoint.address.socket_address.address: group.priority
            for group in out.endpoints
            for lb in group.lb_endpoints
        }

    assert priorities(Locality("us-east", "a", "rack1")) == {
        "10.0.0.1": 0,
        "10.0.0.2": 1,
        "10.0.0.3": 2,
        "10.0.0.4": 3,
        "10.0.0.5": 3,
    }
    # Dense: a proxy in us-west has the west endpoint first and everything else next.
    assert priorities(Locality("us-west")) == {
        "10.0.0.1": 1,
        "10.0.0.2": 1,
        "10.0.0.3": 1,
        "10.0.0.4": 0,
        "10.0.0.5": 1,
    }
    assert all(g.priority == 0 for g in cla.endpoints)  # the shared assignment is untouched


def test_proxy_locality_from_its_node_or_its_registry_endpoints() -> None:
    from envoy.config.endpoint.v3 import endpoint_pb2

    from meshfed.pilot import xds_types as T
    from meshfed.pilot.cache import ConfigCache
    from meshfed.pilot.node import ProxyNode
    from meshfed.registry.aggregate import AggregateRegistry

    agg = AggregateRegistry()
    member = agg.add_member("m")
    api = Service("api.default.svc.cluster.local", ports=(Port(80, "http", Protocol.HTTP),))
    member.put_service(
        api,
        [
            Endpoint("10.0.0.1", {"http": 80}, locality=Locality("east")),
            Endpoint("10.0.0.2", {"http": 80}, locality=Locality("west")),
        ],
    )
    cache = ConfigCache(agg)
    cache.rebuild()
    at_west = ProxyNode(id="sidecar~10.0.0.2~api.default~x", ip="10.0.0.2")
    assert cache.locality_of(at_west) == Locality("west")
    named = ProxyNode(id="sidecar~10.9.9.9~c.default~x", ip="10.9.9.9", locality=Locality("east"))
    assert cache.locality_of(named) == Locality("east")
    nowhere = ProxyNode(id="sidecar~10.9.9.8~c.default~x", ip="10.9.9.8")
    assert cache.locality_of(nowhere) == Locality()

    def first(view) -> str:  # type: ignore[no-untyped-def]
        cla = endpoint_pb2.ClusterLoadAssignment()
        view.get(T.ENDPOINT)["outbound|80||api.default.svc.cluster.local"].body.Unpack(cla)
        group = next(g for g in cla.endpoints if g.priority == 0)
        return group.lb_endpoints[0].endpoint.address.socket_address.address

    assert first(cache.view(at_west)) == "10.0.0.2" and first(cache.view(named)) == "10.0.0.1"
    # Two proxies in one locality share one table; a proxy with none gets the shared one.
    again = cache.view(
        ProxyNode(id="sidecar~10.9.9.7~c.default~x", ip="10.9.9.7", locality=Locality("east"))
    )
    assert again.get(T.ENDPOINT) is cache.view(named).get(T.ENDPOINT)
    assert cache.view(nowhere).get(T.ENDPOINT) is cache.assignments()
