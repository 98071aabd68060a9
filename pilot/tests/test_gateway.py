"""Gateway translation: host/path routes, gRPC, TLS chains from secret folders, problems."""

from __future__ import annotations

from pathlib import Path

from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from pilot.config.model import Gateway, IngressPath, ServiceRef
from pilot.config.store import ConfigSnapshot
from pilot.node import ProxyNode
from pilot.translate import gateway
from pilot.translate.traffic import TrafficIndex, TrafficOptions
from registry.model import Port, Protocol, Service

WEB = Service("web.default.svc.cluster.local", ports=(Port(80, "http", Protocol.HTTP),))
GRPC = Service("greeter.default.svc.cluster.local", ports=(Port(9090, "grpc", Protocol.GRPC),))
NODE = ProxyNode(id="router~127.0.0.9~ingress.default~default.svc.cluster.local", ip="127.0.0.9")


def index(*gateways: Gateway, certs: str = "/certs") -> TrafficIndex:
    return TrafficIndex.build(
        ConfigSnapshot.of(gateways), [WEB, GRPC], TrafficOptions(gateway_certs_dir=certs)
    )


def gw(name: str, paths: list[IngressPath], tls: tuple = (), port: int = 0) -> Gateway:
    return Gateway(name, "default", "/cfg/gw.yaml", "Gateway", tuple(paths), tls, port)


def test_gateway_node_is_recognised_by_its_id() -> None:
    assert gateway.is_gateway(NODE)
    assert not gateway.is_gateway(ProxyNode(id="sidecar~127.0.0.2~a.default~x", ip="127.0.0.2"))
    assert gateway.https_port(80) == 443 and gateway.https_port(8080) == 8443


def test_routes_by_host_then_longest_path_and_grpc() -> None:
    g = gw(
        "front",
        [
            IngressPath("web.example.com", "/", ServiceRef(name="web"), 80),
            IngressPath("web.example.com", "/api", ServiceRef(name="web"), "http"),
            IngressPath("*", "/", ServiceRef(name="greeter"), 9090, grpc=True),
            IngressPath("x.example.com", "/", ServiceRef(name="missing"), 80),
        ],
    )
    listeners, routes, problems = gateway.gateway_resources(NODE, index(g))
    assert [lst.name for lst in listeners] == ["gateway|127.0.0.9:15001"]
    (config,) = routes
    assert [v.name for v in config.virtual_hosts] == ["gateway|web.example.com", "gateway|*"]
    web = config.virtual_hosts[0]
    assert list(web.domains) == ["web.example.com", "web.example.com:15001"]
    assert [r.match.prefix for r in web.routes] == ["/api", "/"]
    assert config.virtual_hosts[1].routes[0].route.cluster == f"outbound|9090||{GRPC.hostname}"
    assert config.virtual_hosts[1].routes[0].route.timeout.seconds == 0
    assert len(problems) == 1 and "missing" in problems[0]


def test_tls_hosts_get_an_sni_chain_with_files_from_the_secret_folder() -> None:
    g = gw(
        "front",
        [IngressPath("web.example.com", "/", ServiceRef(name="web"), 80)],
        tls=(("web.example.com", "web-tls"), ("*", "./local")),
    )
    listeners, routes, _ = gateway.gateway_resources(NODE, index(g))
    tls_listener = next(lst for lst in listeners if lst.address.socket_address.port_value == 15364)
    assert {r.name for r in routes} == {"gateway|15001", "gateway|15364"}
    chains = {c.name: c for c in tls_listener.filter_chains}
    assert set(chains) == {"tls|/certs/web-tls", "tls|/cfg/local"}
    assert list(chains["tls|/certs/web-tls"].filter_chain_match.server_names) == ["web.example.com"]
    assert not chains["tls|/cfg/local"].filter_chain_match.server_names  # "*": any name
    context = tls_pb2.DownstreamTlsContext()
    chains["tls|/certs/web-tls"].transport_socket.typed_config.Unpack(context)
    cert = context.common_tls_context.tls_certificates[0]
    assert Path(cert.certificate_chain.filename) == Path("/certs/web-tls/tls.crt")
    assert Path(cert.private_key.filename) == Path("/certs/web-tls/tls.key")
    assert list(context.common_tls_context.alpn_protocols) == ["h2", "http/1.1"]


def test_ingress_of_another_class_is_skipped_without_error(tmp_path: Path) -> None:
    from pilot.config.store import parse_config_file

    doc = """apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: {name}}}
spec:
  {cls}
  rules:
  - host: a.example.com
    http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}
"""
    path = tmp_path / "ingress.yaml"
    path.write_text(
        "---\n".join(
            [
                doc.format(name="mine", cls="ingressClassName: meshfed"),
                doc.format(name="theirs", cls="ingressClassName: nginx"),
                doc.format(name="unclassed", cls=""),
            ]
        )
    )
    objects, errors = parse_config_file(path)
    assert not errors and objects is not None
    assert sorted(o.name for o in objects) == ["mine", "unclassed"]


def test_meshfed_proxy_gateway_flags_make_a_router_node() -> None:
    from meshfed.cli import build_parser
    from meshfed.cli_pilot import _spec
    from meshfed.proxy import bootstrap

    args = build_parser().parse_args(
        ["bootstrap", "--ip", "127.0.0.9", "--workload", "ingress", "--gateway"]
    )
    spec = _spec(args)
    assert spec.role == "router" and spec.outbound_http_port == 80
    boot = bootstrap(spec)
    assert boot["node"]["id"].startswith("router~127.0.0.9~ingress.default")
    assert boot["node"]["metadata"]["OUTBOUND_HTTP_PORT"] == "80"
    args = build_parser().parse_args(
        [
            "bootstrap",
            "--ip",
            "127.0.0.9",
            "--workload",
            "in",
            "--gateway",
            "--gateway-port",
            "8080",
        ]
    )
    assert _spec(args).outbound_http_port == 8080
    sidecar = _spec(
        build_parser().parse_args(["bootstrap", "--ip", "127.0.0.9", "--workload", "a"])
    )
    assert sidecar.role == "sidecar" and sidecar.node_id.startswith("sidecar~")


def test_configz_reports_conflicts_and_unresolved_references(tmp_path: Path) -> None:
    from pilot.config.store import FileConfigStore
    from pilot.server import PilotServer
    from registry.aggregate import AggregateRegistry

    rule = """apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {{name: {name}}}
spec: {{destination: {{name: reviews}}, precedence: 1}}
"""
    (tmp_path / "r.yaml").write_text(rule.format(name="a") + "---\n" + rule.format(name="b"))
    store = FileConfigStore([tmp_path])
    store.load()
    server = PilotServer(AggregateRegistry(), config_stores=[store])
    body = server.configz()
    assert body["stores"][0]["route_rules"] == ["RouteRule default/a", "RouteRule default/b"]
    assert len(body["conflicts"]) == 1 and "RouteRule default/a" in body["conflicts"][0]


def test_default_backend_is_last_in_every_host(tmp_path: Path) -> None:
    from pilot.config.store import parse_config_file

    path = tmp_path / "ingress.yaml"
    path.write_text(
        """apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop}
spec:
  defaultBackend: {service: {name: greeter, port: {number: 9090}}}
  rules:
  - host: web.example.com
    http:
      paths:
      - {path: /cart, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
---
apiVersion: extensions/v1beta1
kind: Ingress
metadata: {name: only-default}
spec:
  backend: {serviceName: web, servicePort: 80}
"""
    )
    objects, errors = parse_config_file(path)
    assert not errors and objects is not None
    _, routes, problems = gateway.gateway_resources(NODE, index(*objects))
    assert not problems
    (config,) = routes
    by_name = {v.name: v for v in config.virtual_hosts}
    web = by_name["gateway|web.example.com"]
    assert [r.match.prefix for r in web.routes] == ["/cart", "/"]
    assert web.routes[-1].route.cluster == f"outbound|9090||{GRPC.hostname}"
    # Hosts of no Ingress with a default: the first default (namespace/name order) serves.
    assert [r.route.cluster for r in by_name["gateway|*"].routes] == [
        f"outbound|80||{WEB.hostname}"
    ]
