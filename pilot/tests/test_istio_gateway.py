"""Istio Gateway + VirtualService at a gateway: parsed from YAML, translated to the gateway's
listeners, filter chains and routes; sidecars unaffected by gateway-only VirtualServices."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import attrs
import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from meshfed.pilot.config.store import ConfigSnapshot, parse_config_file
from meshfed.pilot.node import ProxyNode
from meshfed.pilot.translate import gateway
from meshfed.pilot.translate.traffic import TrafficIndex, TrafficOptions
from meshfed.registry.model import Labels, Port, Protocol, Service

WEB = Service("web.default.svc.cluster.local", ports=(Port(80, "http", Protocol.HTTP),))
API = Service("api.shop.svc.cluster.local", ports=(Port(8000, "http", Protocol.HTTP),))
SECURE = Service("secure.default.svc.cluster.local", ports=(Port(8443, "tls", Protocol.TLS),))
NODE = ProxyNode(id="router~127.0.0.9~ingress.default~default.svc.cluster.local", ip="127.0.0.9")

CONFIG = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: front, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 8080, name: http, protocol: HTTP}
    hosts: ["*/web.example.com", "shop/*.shop.example.com"]
  - port: {number: 8081, name: http-redirect, protocol: HTTP}
    hosts: [web.example.com]
    tls: {httpsRedirect: true}
  - port: {number: 8443, name: https, protocol: HTTPS}
    hosts: [web.example.com]
    tls: {mode: SIMPLE, credentialName: web-cert}
  - port: {number: 8443, name: https-mtls, protocol: HTTPS}
    hosts: [mtls.example.com]
    tls: {mode: MUTUAL, serverCertificate: certs/s.crt, privateKey: certs/s.key,
          caCertificates: /abs/ca.crt, minProtocolVersion: TLSV1_2}
  - port: {number: 9443, name: tls, protocol: TLS}
    hosts: ["*.secure.example.com"]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: web, namespace: default}
spec:
  hosts: [web.example.com, mtls.example.com]
  gateways: [front]
  http:
  - match: [{uri: {prefix: /api}}]
    route: [{destination: {host: api.shop}}]
  - route: [{destination: {host: web}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: shop, namespace: shop}
spec:
  hosts: ["*.shop.example.com"]
  gateways: [default/front]
  http: [{route: [{destination: {host: api}}]}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: sneaky, namespace: other}
spec:
  hosts: ["a.shop.example.com"]
  gateways: [default/front]
  http: [{route: [{destination: {host: web.default}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: secure, namespace: default}
spec:
  hosts: ["a.secure.example.com"]
  gateways: [front]
  tls:
  - match: [{sniHosts: [a.secure.example.com]}]
    route: [{destination: {host: secure, port: {number: 8443}}}]
"""


def snapshot(tmp_path: Path, text: str = CONFIG) -> ConfigSnapshot:
    path = tmp_path / "gw.yaml"
    path.write_text(textwrap.dedent(text))
    objects, errors = parse_config_file(path)
    assert objects is not None, errors
    return ConfigSnapshot.of(objects)


def resources(snap: ConfigSnapshot, node: ProxyNode = NODE) -> tuple:
    index = TrafficIndex.build(snap, [WEB, API, SECURE], TrafficOptions(gateway_certs_dir="/certs"))
    listeners, routes, problems = gateway.gateway_resources(node, index)
    return (
        {lst.name.rsplit(":", 1)[1]: lst for lst in listeners},
        {r.name: r for r in routes},
        problems,
    )


def test_http_server_routes_bound_virtual_services_by_host(tmp_path: Path) -> None:
    listeners, routes, problems = resources(snapshot(tmp_path))
    assert set(listeners) >= {"8080", "8081", "8443", "9443"}
    table = routes["gateway|8080"]
    vhosts = {vh.name: vh for vh in table.virtual_hosts}
    web = vhosts["gateway|web.example.com"]
    assert list(web.domains) == ["web.example.com", "web.example.com:8080"]
    assert [r.route.cluster for r in web.routes] == [
        f"outbound|8000||{API.hostname}",
        f"outbound|80||{WEB.hostname}",
    ]
    assert web.routes[0].match.prefix == "/api"
    # shop/*.shop.example.com takes the shop namespace's VirtualService only.
    shop = vhosts["gateway|*.shop.example.com"]
    assert [r.route.cluster for r in shop.routes] == [f"outbound|8000||{API.hostname}"]
    assert "gateway|a.shop.example.com" not in vhosts
    assert problems == []


def test_https_redirect_requires_tls(tmp_path: Path) -> None:
    _, routes, _ = resources(snapshot(tmp_path))
    (vhost,) = routes["gateway|8081"].virtual_hosts
    assert vhost.require_tls == vhost.ALL


def test_simple_and_mutual_servers_are_sni_chains_with_their_certificates(tmp_path: Path) -> None:
    listeners, routes, _ = resources(snapshot(tmp_path))
    chains = {tuple(c.filter_chain_match.server_names): c for c in listeners["8443"].filter_chains}
    simple, mutual = chains[("web.example.com",)], chains[("mtls.example.com",)]
    ctx = tls_pb2.DownstreamTlsContext()
    simple.transport_socket.typed_config.Unpack(ctx)
    cert = ctx.common_tls_context.tls_certificates[0]
    assert cert.certificate_chain.filename == "/certs/web-cert/tls.crt"
    assert cert.private_key.filename == "/certs/web-cert/tls.key"
    assert not ctx.require_client_certificate.value
    mutual.transport_socket.typed_config.Unpack(ctx)
    assert ctx.require_client_certificate.value
    assert ctx.common_tls_context.validation_context.trusted_ca.filename == "/abs/ca.crt"
    assert ctx.common_tls_context.tls_certificates[0].certificate_chain.filename == str(
        tmp_path / "certs/s.crt"
    )
    manager = hcm.HttpConnectionManager()
    simple.filters[0].typed_config.Unpack(manager)
    table = routes[manager.rds.route_config_name]
    assert [vh.name for vh in table.virtual_hosts] == ["gateway|web.example.com"]


def test_passthrough_goes_by_sni_to_the_tls_route_cluster(tmp_path: Path) -> None:
    listeners, _, _ = resources(snapshot(tmp_path))
    (chain,) = listeners["9443"].filter_chains
    assert list(chain.filter_chain_match.server_names) == ["a.secure.example.com"]
    proxy = tcp_proxy_pb2.TcpProxy()
    chain.filters[0].typed_config.Unpack(proxy)
    assert proxy.cluster == f"outbound|8443||{SECURE.hostname}"
    assert not chain.HasField("transport_socket")


def test_gateway_only_virtual_service_does_not_reach_sidecars(tmp_path: Path) -> None:
    snap = snapshot(tmp_path)
    assert snap.route_rules == ()
    index = TrafficIndex.build(snap, [WEB, API, SECURE])
    assert dict(index.rules) == {}


def test_selector_chooses_gateways_by_proxy_labels(tmp_path: Path) -> None:
    other = ProxyNode(id=NODE.id, ip=NODE.ip, labels=Labels({"istio": "egressgateway"}))
    listeners, _, _ = resources(snapshot(tmp_path), other)
    assert set(listeners) == {"15001"}  # only the default Ingress port, no Gateway servers


INGRESS = """
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: old, namespace: default}
spec:
  rules:
  - host: web.example.com
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: api, port: {number: 80}}}}]
  - host: legacy.example.com
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]
"""


def test_gateway_wins_over_ingress_on_the_same_host_and_port(tmp_path: Path) -> None:
    snap = snapshot(tmp_path, CONFIG + "---" + INGRESS)
    node = ProxyNode(id=NODE.id, ip=NODE.ip, outbound_http_port=8080)
    _, routes, _ = resources(snap, node)
    vhosts = {vh.name: vh for vh in routes["gateway|8080"].virtual_hosts}
    # web.example.com: the VirtualService's routes only; legacy.example.com: the Ingress's.
    assert [r.route.cluster for r in vhosts["gateway|web.example.com"].routes][-1] == (
        f"outbound|80||{WEB.hostname}"
    )
    assert len(vhosts["gateway|web.example.com"].routes) == 2
    assert "gateway|legacy.example.com" in vhosts
    assert any(
        "Ingress default/old is not applied for host web.example.com where Gateway "
        "default/front also serves it" in n
        for n in snap.notes
    ), snap.notes


def test_validate_and_analyze_report_the_precedence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from meshfed.cli import main
    from meshfed.pilot.analysis import Catalog, analyze

    path = tmp_path / "both.yaml"
    path.write_text(CONFIG + "---" + INGRESS)
    assert main(["validate", str(path)]) == 0
    err = capsys.readouterr().err
    assert "warning: Ingress default/old is not applied for host web.example.com" in err
    objects, _ = parse_config_file(path)
    assert objects is not None
    findings = analyze(ConfigSnapshot.of(objects), Catalog())
    assert any(f.code == "MF0108" and f.object == "Ingress default/old" for f in findings)


def test_a_virtual_service_naming_a_missing_gateway_is_reported(tmp_path: Path) -> None:
    snap = snapshot(
        tmp_path,
        """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: lost, namespace: default}
spec:
  hosts: [x.example.com]
  gateways: [nowhere]
  http: [{route: [{destination: {host: web}}]}]
""",
    )
    assert (
        "VirtualService default/lost.http[0] is bound to Gateway default/nowhere, "
        "which does not exist" in snap.notes
    )


BOOKINFO_GATEWAY = """
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: bookinfo-gateway
spec:
  # The selector matches the ingress gateway pod labels.
  selector:
    istio: ingressgateway # use istio default controller
  servers:
  - port:
      number: 8080
      name: http
      protocol: HTTP
    hosts:
    - "*"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: bookinfo
spec:
  hosts:
  - "*"
  gateways:
  - bookinfo-gateway
  http:
  - match:
    - uri:
        exact: /productpage
    - uri:
        prefix: /static
    - uri:
        exact: /login
    - uri:
        exact: /logout
    - uri:
        prefix: /api/v1/products
    route:
    - destination:
        host: productpage
        port:
          number: 9080
"""
PRODUCTPAGE = Service(
    "productpage.default.svc.cluster.local",
    ports=(Port(9080, "http", Protocol.HTTP), Port(9090, "http-admin", Protocol.HTTP)),
)


def test_istios_bookinfo_gateway_sample_as_written(tmp_path: Path) -> None:
    snap = snapshot(tmp_path, BOOKINFO_GATEWAY)
    assert snap.route_rules == ()  # nothing for sidecars
    index = TrafficIndex.build(snap, [PRODUCTPAGE])
    _, tables, problems = gateway.gateway_resources(NODE, index)
    assert problems == []
    (vhost,) = {t.name: t for t in tables}["gateway|8080"].virtual_hosts
    assert list(vhost.domains) == ["*"]
    matches = [(r.match.path or r.match.prefix) for r in vhost.routes]
    assert matches == ["/productpage", "/static", "/login", "/logout", "/api/v1/products"]
    cluster = f"outbound|9080||{PRODUCTPAGE.hostname}"
    assert {r.route.cluster for r in vhost.routes} == {cluster}


def test_a_virtual_service_on_mesh_and_a_gateway_configures_both(tmp_path: Path) -> None:
    text = CONFIG.replace(
        "  hosts: [web.example.com, mtls.example.com]\n  gateways: [front]",
        "  hosts: [web]\n  gateways: [mesh, front]",
    )
    snap = snapshot(tmp_path, text)
    assert [r.ref for r in snap.route_rules] == [
        "VirtualService default/web.http[0]",
        "VirtualService default/web.http[1]",
    ]
    assert any(g.host == WEB.hostname for g in snap.gateway_routes)


def test_a_destination_port_is_refused_with_mesh(tmp_path: Path) -> None:
    path = tmp_path / "vs.yaml"
    path.write_text(
        BOOKINFO_GATEWAY.split("---")[1]
        .replace("- bookinfo-gateway", "- mesh")
        .replace('- "*"\n  gateways', "- productpage\n  gateways")
    )
    objects, errors = parse_config_file(path)
    assert objects is None
    assert any(
        "spec.http[0].route[0].destination.port: not supported by meshfed with `mesh`" in str(e)
        for e in errors
    ), errors


def test_a_server_on_the_admin_port_is_a_problem_not_a_listener(tmp_path: Path) -> None:
    snap = snapshot(tmp_path, CONFIG.replace("number: 8081", "number: 15000"))
    listeners, _, problems = resources(snap)
    assert "15000" not in listeners
    assert any(
        "port 15000 (Gateway default/front) is the gateway's admin port" in p for p in problems
    )


def test_analyze_reports_unbound_gateways_and_routes_to_no_service(tmp_path: Path) -> None:
    from meshfed.pilot.analysis import Catalog, analyze

    lonely = CONFIG.split("---")[0].replace("name: front", "name: lonely")
    snap = snapshot(tmp_path, CONFIG + "---" + lonely)
    catalog = Catalog({s.hostname: s for s in (WEB, SECURE)})  # no api
    found = {(f.code, f.object, f.message) for f in analyze(snap, catalog)}
    assert (
        "MF0105",
        "Gateway default/lonely",
        "no VirtualService is bound to the gateway: it serves only 404s",
    ) in found
    assert ("MF0106", "VirtualService default/web.web.example.com.http[0]",
            "gateway route to api.shop names no service") in found  # fmt: skip
    assert not any(code == "MF0105" and obj == "Gateway default/front" for code, obj, _ in found)


def test_ingress_tls_shares_the_https_port_with_a_gateway_that_wins_its_hosts(
    tmp_path: Path,
) -> None:
    ingress = INGRESS.replace(
        "spec:\n",
        "spec:\n  tls: [{hosts: [web.example.com, legacy.example.com], secretName: old}]\n",
    )
    node = ProxyNode(id=NODE.id, ip=NODE.ip, outbound_http_port=7080)  # its TLS port: 7443
    text = CONFIG.replace("{number: 8443, name: https", "{number: 7443, name: https")
    snap = snapshot(tmp_path, text + "---" + ingress)
    listeners, _, problems = resources(snap, node)
    chains = {
        tuple(c.filter_chain_match.server_names): c.name for c in listeners["7443"].filter_chains
    }
    # legacy.example.com stays the Ingress's; web.example.com is the Gateway's SIMPLE server.
    assert chains[("legacy.example.com",)] == "tls|/certs/old"
    assert chains[("web.example.com",)].startswith("tls|gateway|7443|default/front|")
    assert ("mtls.example.com",) in chains
    assert not any("SNI" in p for p in problems), problems


def test_gateways_and_their_routes_survive_the_merge_of_several_stores(tmp_path: Path) -> None:
    from meshfed.pilot.config.store import FileConfigStore
    from meshfed.pilot.server import PilotServer

    docs = CONFIG.split("---")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "gw.yaml").write_text(docs[0])
    (tmp_path / "b" / "vs.yaml").write_text("---".join(docs[1:]))
    stores = [FileConfigStore([tmp_path / "a"]), FileConfigStore([tmp_path / "b"])]
    for store in stores:
        store.load()
    merged = PilotServer(config_stores=stores).config_snapshot()
    one = snapshot(tmp_path / "a", CONFIG)  # the same folder: relative certificate paths agree
    strip = [attrs.evolve(g, file="") for g in merged.istio_gateways]
    assert strip == [attrs.evolve(g, file="") for g in one.istio_gateways]

    def routes_of(snap: ConfigSnapshot) -> list[tuple]:
        http = [(r.gateways, r.host, r.rule.name, r.rule.route) for r in snap.gateway_routes]
        return http + [(r.gateways, r.name, r.destinations) for r in snap.l4_routes]

    assert routes_of(merged) == routes_of(one) and len(routes_of(one)) == 7
    assert not any("does not exist" in n for n in merged.notes), merged.notes
    assert resources(merged)[:2] == resources(one)[:2]


def test_listener_plugins_shape_every_gateway_connection_manager(tmp_path: Path) -> None:
    from meshfed.pilot.plugins import ChainContext, HttpChain, PluginBase, PluginSet

    seen: list[tuple[int, bool, str]] = []

    class Spy(PluginBase):
        name = "spy"

        def on_gateway_http(self, ctx: ChainContext, chain: HttpChain) -> None:
            table = chain.route_config
            seen.append((ctx.port, ctx.tls, table.name if table is not None else ""))

    index = TrafficIndex.build(
        snapshot(tmp_path), [WEB, API, SECURE], TrafficOptions(gateway_certs_dir="/certs")
    )
    gateway.gateway_resources(NODE, index, PluginSet([Spy()]))
    tls = sorted(name for port, is_tls, name in seen if is_tls)
    assert tls == ["gateway|8443|default/front|https", "gateway|8443|default/front|https-mtls"]
    plain = sorted(name for port, is_tls, name in seen if not is_tls)
    assert plain == ["gateway|15001", "gateway|8080", "gateway|8081"]


BAD_PORTS = """
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ports, namespace: default}
spec:
  hosts: [web.example.com]
  gateways: [front]
  http:
  - match: [{uri: {prefix: /only-bad}}]
    route: [{destination: {host: web, port: {number: 9999}}}]
  - match: [{uri: {prefix: /split}}]
    route:
    - {destination: {host: api.shop, port: {number: 8001}}, weight: 30}
    - {destination: {host: web, port: {number: 80}}, weight: 70}
"""


def test_a_destination_port_the_service_lacks_takes_no_traffic_and_is_reported(
    tmp_path: Path,
) -> None:
    _, routes, problems = resources(snapshot(tmp_path, CONFIG + BAD_PORTS))
    vhost = next(
        vh for vh in routes["gateway|8080"].virtual_hosts if vh.name == "gateway|web.example.com"
    )
    by_prefix = {r.match.prefix: r for r in vhost.routes}
    # Only a port the service lacks: the route keeps its match and answers 503, rather than
    # sending the request to another port or letting it fall through to a later route.
    only_bad = by_prefix["/only-bad"]
    assert only_bad.WhichOneof("action") == "direct_response"
    assert only_bad.direct_response.status == 503
    # A split: the bad destination's share goes to the others, never to another api port.
    split = by_prefix["/split"]
    assert split.route.cluster == f"outbound|80||{WEB.hostname}"
    assert not split.route.HasField("weighted_clusters")
    assert {p.split(": ", 1)[1].split(" (")[0] for p in problems if "ports." in p} == {
        f"route[0].destination.port: {WEB.hostname} has no HTTP port 9999",
        f"route[0].destination.port: {API.hostname} has no HTTP port 8001",
    }


def test_analyze_reports_a_gateway_destination_port_the_service_lacks(tmp_path: Path) -> None:
    from meshfed.pilot.analysis import Catalog, analyze

    snap = snapshot(tmp_path, CONFIG + BAD_PORTS)
    catalog = Catalog({s.hostname: s for s in (WEB, API, SECURE)})
    found = [
        f for f in analyze(snap, catalog) if f.object.startswith("VirtualService default/ports")
    ]
    assert {(f.code, f.severity, f.object, f.message.split(":")[0]) for f in found} == {
        ("MF0106", "error", "VirtualService default/ports.http[0]",
         "route[0].destination.port 9999"),
        ("MF0106", "error", "VirtualService default/ports.http[1]",
         "route[0].destination.port 8001"),
    }  # fmt: skip
    assert all(f.file == str(tmp_path / "gw.yaml") for f in found)
    assert any("expected one of: 8000" in f.message for f in found)


def test_meshfed_analyze_names_the_file_object_and_field_of_a_missing_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from meshfed.cli import main

    entry = """
---
apiVersion: networking.meshfed.io/v1alpha1
kind: ServiceEntry
metadata: {name: web, namespace: default}
spec:
  hosts: [web.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP}]
  endpoints: [{address: 127.0.0.1}]
"""
    path = tmp_path / "edge.yaml"
    path.write_text(CONFIG.split("---")[0] + entry + BAD_PORTS)
    assert main(["analyze", str(path), "-o", "json"]) == 1
    rows = json.loads(capsys.readouterr().out)["findings"]
    (row,) = [r for r in rows if "destination.port" in r["message"]]
    assert row["code"] == "MF0106" and row["severity"] == "error"
    assert row["object"] == "VirtualService default/ports.http[0]"
    assert row["file"] == str(path)
    assert row["message"].startswith("route[0].destination.port 9999: ")
    assert "expected one of: 80" in row["message"]
