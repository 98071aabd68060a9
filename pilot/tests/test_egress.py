"""Egress rules: clusters, Host-routed virtual hosts, SNI listeners; registry services win."""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as hpo

from meshfed.pilot.config.model import EgressPort, EgressRule
from meshfed.pilot.node import ProxyNode
from meshfed.pilot.translate import egress
from meshfed.pilot.translate.clusters import HTTP_OPTIONS_KEY
from meshfed.pilot.translate.traffic import TrafficOptions
from meshfed.registry.model import Protocol

OPTIONS = TrafficOptions(dns_resolvers=("127.0.0.53:5353",))
NODE = ProxyNode(id="p", ip="127.0.0.2")


def rule(name: str, service: str, *ports: tuple[int, Protocol]) -> EgressRule:
    return EgressRule(name, "default", "e.yaml", service, tuple(EgressPort(*p) for p in ports))


RULES = [
    rule("api", "api.example.com", (80, Protocol.HTTP), (8443, Protocol.TLS)),
    rule("wild", "*.example.org", (8080, Protocol.GRPC), (8443, Protocol.TLS)),
    rule("db", "db.example.com", (5432, Protocol.TCP)),
    rule("wildtcp", "*.example.net", (6379, Protocol.TCP)),
]


def test_clusters_exact_strict_dns_and_dynamic_clusters_per_upstream_protocol() -> None:
    clusters = {c.name: c for c in egress.egress_clusters(RULES, {}, OPTIONS)}
    assert set(clusters) == {
        "outbound|80||api.example.com",
        "outbound|8443||api.example.com",
        "outbound|8443|tls-origination|api.example.com",
        "outbound|5432||db.example.com",
        egress.DFP_CLUSTER,  # the wildcard's TLS port: bytes through the SNI forward proxy
        egress.DFP_H2_CLUSTER,  # the wildcard's gRPC port: HTTP/2 upstream
    }
    api = clusters["outbound|80||api.example.com"]
    assert api.type == cluster_pb2.Cluster.STRICT_DNS
    assert api.typed_dns_resolver_config.name == "envoy.network.dns_resolver.cares"
    sock = api.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (sock.address, sock.port_value) == ("api.example.com", 80)
    assert clusters[egress.DFP_CLUSTER].cluster_type.name == "envoy.clusters.dynamic_forward_proxy"
    assert not clusters[egress.DFP_CLUSTER].typed_extension_protocol_options
    h2 = clusters[egress.DFP_H2_CLUSTER]
    assert h2.cluster_type.name == "envoy.clusters.dynamic_forward_proxy"
    options = hpo.HttpProtocolOptions()
    h2.typed_extension_protocol_options[HTTP_OPTIONS_KEY].Unpack(options)
    assert options.explicit_http_config.HasField("http2_protocol_options")
    from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

    originate = clusters["outbound|8443|tls-origination|api.example.com"]
    context = tls_pb2.UpstreamTlsContext()
    originate.transport_socket.typed_config.Unpack(context)
    assert context.sni == "api.example.com"
    validation = context.common_tls_context.validation_context
    assert validation.trusted_ca.filename == egress.SYSTEM_CA
    assert validation.match_typed_subject_alt_names[0].matcher.exact == "api.example.com"
    assert not clusters["outbound|8443||api.example.com"].HasField("transport_socket")


def test_http_ports_become_virtual_hosts_routed_by_host() -> None:
    vhosts = {v.name: v for v in egress.egress_virtual_hosts(RULES, {})}
    # The TLS port of an exact domain also takes Istio 0.2-style http://host:8443 requests.
    assert set(vhosts) == {
        "egress|api.example.com:80",
        "egress-tls|api.example.com:8443",
        "egress|*.example.org:8080",
    }
    assert (
        vhosts["egress-tls|api.example.com:8443"].routes[0].route.cluster
        == "outbound|8443|tls-origination|api.example.com"
    )
    assert list(vhosts["egress|api.example.com:80"].domains) == [
        "api.example.com:80",
        "api.example.com",
    ]
    assert vhosts["egress|*.example.org:8080"].routes[0].route.cluster == egress.DFP_H2_CLUSTER


def test_tls_listener_has_one_sni_chain_per_rule_and_tcp_needs_exact_names() -> None:
    listeners, problems = egress.egress_listeners(NODE, RULES, {}, {15000, 15001}, OPTIONS)
    by_port = {lst.address.socket_address.port_value: lst for lst in listeners}
    assert set(by_port) == {8443, 5432}
    chains = by_port[8443].filter_chains
    assert [list(c.filter_chain_match.server_names) for c in chains] == [
        ["api.example.com"],
        ["*.example.org"],
    ]
    assert [f.name for f in chains[1].filters] == [
        "envoy.filters.network.sni_dynamic_forward_proxy",
        "envoy.filters.network.tcp_proxy",
    ]
    assert any("*.example.net" in p for p in problems)


def test_registry_service_shadows_rule_and_taken_ports_are_reported() -> None:
    internal = {"api.example.com": object()}
    names = {c.name for c in egress.egress_clusters(RULES, internal, OPTIONS)}
    assert "outbound|80||api.example.com" not in names
    listeners, problems = egress.egress_listeners(NODE, RULES, internal, {5432}, OPTIONS)
    assert [lst.address.socket_address.port_value for lst in listeners] == [8443]
    assert any("5432" in p for p in problems)


def test_resolver_addresses_with_and_without_port() -> None:
    from envoy.extensions.network.dns_resolver.cares.v3 import cares_dns_resolver_pb2 as cares

    options = TrafficOptions(dns_resolvers=("127.0.0.53:5353", "127.0.0.54"))
    config = cares.CaresDnsResolverConfig()
    egress.dns_cache(options).typed_dns_resolver_config.typed_config.Unpack(config)
    got = [(a.socket_address.address, a.socket_address.port_value) for a in config.resolvers]
    assert got == [("127.0.0.53", 5353), ("127.0.0.54", 53)]
