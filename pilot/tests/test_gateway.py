"""Gateway translation: host/path routes, gRPC, TLS chains from secret folders, problems."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from meshfed.pilot.cache import ConfigCache, ProxyView
from meshfed.pilot.config.model import Gateway, IngressPath, PathType, ServiceRef
from meshfed.pilot.config.store import ConfigSnapshot
from meshfed.pilot.node import ProxyNode
from meshfed.pilot.translate import gateway
from meshfed.pilot.translate.traffic import TrafficIndex, TrafficOptions
from meshfed.pilot.xds_types import CLUSTER as T_CLUSTER
from meshfed.registry.model import Port, Protocol, Service

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
    from meshfed.pilot.config.store import parse_config_file

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
    from meshfed.pilot.config.store import FileConfigStore
    from meshfed.pilot.server import PilotServer
    from meshfed.registry.aggregate import AggregateRegistry

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
    from meshfed.pilot.config.store import parse_config_file

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
    # pathType: Prefix matches whole segments; the default backend is a plain prefix.
    assert [r.match.path_separated_prefix or r.match.prefix for r in web.routes] == ["/cart", "/"]
    assert web.routes[-1].route.cluster == f"outbound|9090||{GRPC.hostname}"
    # Hosts of no Ingress with a default: the first default (namespace/name order) serves.
    assert [r.route.cluster for r in by_name["gateway|*"].routes] == [
        f"outbound|80||{WEB.hostname}"
    ]


# -- pathType ---------------------------------------------------------------------------------
def test_path_types_become_exact_segment_and_plain_prefix_matches_exact_first() -> None:
    def p(path: str, path_type: PathType) -> IngressPath:
        return IngressPath("web.example.com", path, ServiceRef(name="web"), 80, path_type=path_type)

    g = gw(
        "front",
        [
            p("/foo", PathType.PREFIX),
            p("/", PathType.PREFIX),
            p("/exactpath", PathType.EXACT),
            p("/docs/", PathType.PREFIX),  # a trailing slash is ignored (Kubernetes)
            p("/a", PathType.EXACT),
            p("/legacy", PathType.IMPLEMENTATION_SPECIFIC),
        ],
    )
    _, routes, problems = gateway.gateway_resources(NODE, index(g))
    assert not problems
    matches = [
        (
            r.match.WhichOneof("path_specifier"),
            getattr(r.match, r.match.WhichOneof("path_specifier")),
        )
        for r in routes[0].virtual_hosts[0].routes
    ]
    assert matches == [
        ("path", "/exactpath"),  # exact routes first, longest first
        ("path", "/a"),
        ("prefix", "/legacy"),  # then prefixes, longest first
        ("path_separated_prefix", "/docs"),
        ("path_separated_prefix", "/foo"),
        ("prefix", "/"),  # Prefix "/" matches everything: Envoy's segment match needs a segment
    ]


INGRESS_DOC = """apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: {name}{meta}}}
spec:
  {cls}
  rules:
  - host: a.example.com
    http:
      paths:
      - {{path: {path}, {path_type}backend: {{service: {{name: web, port: {{number: 80}}}}}}}}
"""


def ingress(
    name: str = "shop",
    cls: str = "",
    meta: str = "",
    path: str = "/",
    path_type: str = "pathType: Prefix, ",
) -> str:
    return INGRESS_DOC.format(name=name, cls=cls, meta=meta, path=path, path_type=path_type)


def parse(tmp_path: Path, *docs: str) -> tuple[list, list[str]]:
    from meshfed.pilot.config.store import parse_config_file

    path = tmp_path / "ingress.yaml"
    path.write_text("---\n".join(docs))
    objects, errors = parse_config_file(path)
    return list(objects or []), [str(e) for e in errors]


def test_path_type_is_read_and_validated_with_file_object_and_field(tmp_path: Path) -> None:
    objects, errors = parse(
        tmp_path,
        ingress("exact", path="/x", path_type="pathType: Exact, "),
        ingress("impl", path="/y", path_type="pathType: ImplementationSpecific, "),
        ingress("none", path="/z", path_type=""),
    )
    assert not errors
    by_name = {o.name: o.paths[0].path_type for o in objects}
    assert by_name == {
        "exact": PathType.EXACT,
        "impl": PathType.IMPLEMENTATION_SPECIFIC,
        "none": PathType.IMPLEMENTATION_SPECIFIC,  # no pathType: today's plain prefix
    }
    objects, errors = parse(tmp_path, ingress(path_type="pathType: prefix, "))
    assert objects == [] and errors == [
        f"{tmp_path / 'ingress.yaml'}: Ingress default/shop: "
        "spec.rules[0].http.paths[0].pathType: expected one of Exact, Prefix, "
        "ImplementationSpecific (case-sensitive), got 'prefix'"
    ]
    _, errors = parse(tmp_path, ingress(path="/a?b", path_type="pathType: Exact, "))
    assert (
        len(errors) == 1
        and "spec.rules[0].http.paths[0].path: expected a path without ?" in (errors[0])
    )
    # meshfed's Gateway kind takes pathType too; without one a path stays a plain prefix.
    gateway_doc = """apiVersion: config.meshfed.io/v1alpha1
kind: Gateway
metadata: {name: front}
spec:
  rules:
  - http:
      paths:
      - {path: /a, backend: {serviceName: web, servicePort: 80}}
      - {path: /b, pathType: Exact, backend: {serviceName: web, servicePort: 80}}
"""
    (front,), errors = parse(tmp_path, gateway_doc)
    assert not errors
    assert [p.path_type for p in front.paths] == [
        PathType.IMPLEMENTATION_SPECIFIC,
        PathType.EXACT,
    ]


# -- ingress class ----------------------------------------------------------------------------
def test_ingress_class_from_the_spec_or_the_legacy_annotation(tmp_path: Path) -> None:
    def annotated(value: str) -> str:
        return f", annotations: {{kubernetes.io/ingress.class: {value}}}"

    objects, errors = parse(
        tmp_path,
        ingress("istio-annotation", meta=annotated("istio")),  # Istio 0.2's way
        ingress("meshfed-annotation", meta=annotated("meshfed")),
        ingress("nginx-annotation", meta=annotated("nginx")),
        ingress("istio-spec", cls="ingressClassName: istio"),
        ingress("nginx-spec", cls="ingressClassName: nginx"),
        ingress("both-agree", cls="ingressClassName: meshfed", meta=annotated("meshfed")),
        # Neither is ours: another controller's business, not an error.
        ingress("both-theirs", cls="ingressClassName: nginx", meta=annotated("traefik")),
        ingress("unclassed"),
        ingress("other-annotations", meta=", annotations: {example.com/team: shop}"),
    )
    assert not errors
    assert sorted(o.name for o in objects) == [
        "both-agree",
        "istio-annotation",
        "istio-spec",
        "meshfed-annotation",
        "other-annotations",
        "unclassed",
    ]


def test_conflicting_ingress_classes_are_an_error_naming_the_annotation(tmp_path: Path) -> None:
    objects, errors = parse(
        tmp_path,
        ingress(
            "mixed",
            cls="ingressClassName: nginx",
            meta=", annotations: {kubernetes.io/ingress.class: istio}",
        ),
    )
    assert objects == []
    assert errors == [
        f"{tmp_path / 'ingress.yaml'}: Ingress default/mixed: "
        "metadata.annotations.kubernetes.io/ingress.class: expected the same class as "
        "spec.ingressClassName ('nginx') or no annotation, got 'istio'"
    ]


def test_kubernetes_documents_carry_annotations() -> None:
    from meshfed.adapters.kubernetes.configstore import ROUTING_KINDS, document_of
    from meshfed.pilot.config.parse import parse_ingress

    kind = next(k for k in ROUTING_KINDS if k.kind == "Ingress")
    obj = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {
            "name": "legacy",
            "namespace": "shop",
            "annotations": {"kubernetes.io/ingress.class": "nginx"},
        },
        "spec": {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}},
    }
    doc = document_of(obj, kind)
    assert doc.annotations == {"kubernetes.io/ingress.class": "nginx"}
    assert parse_ingress(doc) == (None, [])
    obj["metadata"]["annotations"] = {"kubernetes.io/ingress.class": "istio"}
    served, errors = parse_ingress(document_of(obj, kind))
    assert not errors and served is not None and served.name == "legacy"


# -- mutual TLS -------------------------------------------------------------------------------
def _mtls_cache() -> tuple[ConfigCache, str]:
    from meshfed.pilot.mtls_plugin import MtlsPlugin
    from meshfed.registry.aggregate import AggregateRegistry
    from meshfed.registry.model import Endpoint
    from meshfed.security import mtls

    agg = AggregateRegistry()
    member = agg.add_member("m")
    meshed = {mtls.TLS_MODE_LABEL: mtls.TLS_MODE_MTLS}
    member.put_service(
        WEB,
        [Endpoint("10.0.0.5", {"http": 9080}, meshed, identity="spiffe://td/ns/default/sa/web")],
    )
    member.put_service(GRPC, [Endpoint("10.0.0.6", {"grpc": 9090})])  # no sidecar: plain
    plugin = MtlsPlugin(mtls.Policy(mtls.Mode.STRICT))
    cache = ConfigCache(agg, [plugin])
    cache.rebuild()
    return cache, f"outbound|80||{WEB.hostname}"


def _socket_name(view: ProxyView, name: str) -> str:
    from envoy.config.cluster.v3 import cluster_pb2

    cluster = cluster_pb2.Cluster()
    view.get(T_CLUSTER)[name].body.Unpack(cluster)
    sockets = {cluster.transport_socket.name} | {
        m.transport_socket.name for m in cluster.transport_socket_matches
    }
    return ",".join(sorted(sockets - {""}))


def test_gateway_with_sds_gets_mtls_clusters_like_a_sidecar() -> None:
    import attrs

    from meshfed.pilot.cache import check_consistency

    cache, web_cluster = _mtls_cache()
    node = attrs.evolve(NODE, sds=True)
    view = cache.view(node)
    sidecar = cache.view(ProxyNode(id="sidecar~10.0.0.9~a.default~x", ip="10.0.0.9", sds=True))
    assert _socket_name(view, web_cluster) == "envoy.transport_sockets.tls"
    assert view.get(T_CLUSTER)[web_cluster] is sidecar.get(T_CLUSTER)[web_cluster]  # shared
    assert not view.problems and check_consistency(view) == []


def test_gateway_without_sds_gets_plain_clusters_and_a_problem() -> None:
    from meshfed.pilot.cache import check_consistency

    cache, web_cluster = _mtls_cache()
    view = cache.view(NODE)
    with_sds = cache.view(ProxyNode(id="router~127.0.0.8~gw.default~x", ip="127.0.0.8", sds=True))
    assert _socket_name(view, web_cluster) == ""  # no SDS reference Envoy could not resolve
    assert view.version(T_CLUSTER) != with_sds.version(T_CLUSTER)
    (problem,) = view.problems
    assert "no SDS source" in problem and web_cluster in problem and "1 cluster(s)" in problem
    assert check_consistency(view) == []
    # A mesh without mutual TLS: nothing to strip, no problem, the shared table as it is.
    from meshfed.security import mtls

    cache.plugins.plugins[0].policy = mtls.Policy(mtls.Mode.OFF)
    assert cache.refresh_plugins() is not None
    assert cache.refresh_plugins() is None  # nothing moved since
    plain = cache.view(NODE)
    assert not plain.problems and _socket_name(plain, web_cluster) == ""


def test_proxy_secrets_dir_tells_pilot_where_the_secret_files_are(tmp_path: Path) -> None:
    from envoy.config.core.v3 import base_pb2
    from google.protobuf import json_format

    from meshfed.cli import build_parser
    from meshfed.cli_pilot import _spec, mtls_warning
    from meshfed.pilot.node import from_proto
    from meshfed.proxy import bootstrap

    argv = ["bootstrap", "--ip", "127.0.0.9", "--workload", "ingress", "--gateway"]
    args = build_parser().parse_args([*argv, "--secrets-dir", str(tmp_path / "secrets")])
    boot = bootstrap(_spec(args))
    assert [c["name"] for c in boot["staticResources"]["clusters"]] == ["xds-grpc"]
    node = base_pb2.Node()
    json_format.ParseDict(boot["node"], node)
    assert from_proto(node).sds
    assert from_proto(node).secrets_dir == str(tmp_path / "secrets")
    plain = bootstrap(_spec(build_parser().parse_args(argv)))
    assert [c["name"] for c in plain["staticResources"]["clusters"]] == ["xds-grpc"]
    json_format.ParseDict(plain["node"], node := base_pb2.Node())
    assert not from_proto(node).sds
    # Run without SDS while the mesh config turns mutual TLS on: the operator is told.
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(
        "apiVersion: meshfed.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\n"
        "spec: {pilot: {mtls: {mode: STRICT}}}\n"
    )
    with_mesh = build_parser().parse_args([*argv, "--config", str(mesh)])
    assert "--secrets-dir" in mtls_warning(with_mesh)
    with_sds = build_parser().parse_args([*argv, "--config", str(mesh), "--secrets-dir", "/s"])
    assert mtls_warning(with_sds) == ""
    assert mtls_warning(build_parser().parse_args(argv)) == ""  # mTLS off by default


def test_sidecar_without_sds_gets_plain_clusters_and_plain_inbound() -> None:
    """The same rule as for gateways: no config naming secrets the proxy cannot fetch."""
    from envoy.config.listener.v3 import listener_pb2

    from meshfed.pilot.cache import check_consistency

    cache, web_cluster = _mtls_cache()
    # The web workload's own sidecar, at the endpoint the registry marks as terminating mTLS.
    node = ProxyNode(id="sidecar~10.0.0.5~web.default~x", ip="10.0.0.5", app_ports=((9080, 19080),))

    def inbound_chains(view: ProxyView) -> list[str]:
        out = []
        for resource in view.get("type.googleapis.com/envoy.config.listener.v3.Listener").values():
            listener = listener_pb2.Listener()
            resource.body.Unpack(listener)
            if listener.name.startswith("inbound"):
                out.extend(c.name for c in listener.filter_chains)
        return out

    with_sds = cache.view(attrs.evolve(node, sds=True))
    assert _socket_name(with_sds, web_cluster) == "envoy.transport_sockets.tls"
    assert any(name.endswith("-mtls") for name in inbound_chains(with_sds))
    assert not with_sds.problems
    without = cache.view(node)
    assert _socket_name(without, web_cluster) == ""
    assert inbound_chains(without) and not any(n.endswith("-mtls") for n in inbound_chains(without))
    assert len(without.problems) == 2 and all("no SDS source" in p for p in without.problems)
    assert check_consistency(without) == []


@pytest.mark.parametrize(
    ("pilot", "served"),
    [
        ({}, ["istio-class", "meshfed-class", "unclassed"]),  # DEFAULT, meshfed + istio
        ({"ingressControllerMode": "STRICT"}, ["istio-class", "meshfed-class"]),
        ({"ingressClass": "edge"}, ["edge-class", "unclassed"]),
        ({"ingressClass": "edge", "ingressControllerMode": "strict"}, ["edge-class"]),
        ({"ingressControllerMode": "OFF"}, []),
    ],
)
def test_mesh_config_chooses_the_ingresses_served_like_istio(
    tmp_path: Path, pilot: dict, served: list[str]
) -> None:
    """Istio's ingressClass / ingressControllerMode, through the store the hub builds."""
    from meshfed.pilot.config.parse import IngressSelection, routing_parsers
    from meshfed.pilot.config.store import FileConfigStore

    path = tmp_path / "ingress.yaml"
    path.write_text(
        "---\n".join(
            [
                ingress("istio-class", cls="ingressClassName: istio"),
                ingress("meshfed-class", cls="ingressClassName: meshfed"),
                ingress("edge-class", meta=", annotations: {kubernetes.io/ingress.class: edge}"),
                ingress("nginx-class", cls="ingressClassName: nginx"),
                ingress("unclassed"),
            ]
        )
    )
    store = FileConfigStore([path], routing_parsers(IngressSelection.from_pilot_config(pilot)))
    store.load()
    assert not store.errors
    assert sorted(g.name for g in store.snapshot.gateways) == served


def test_bad_ingress_controller_mode_stops_the_mesh_config(tmp_path: Path) -> None:
    from meshfed.config import load_mesh_config
    from meshfed.core.resources import ConfigErrors

    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(
        "apiVersion: meshfed.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\n"
        "spec: {pilot: {ingressControllerMode: STRICTLY}}\n"
    )
    with pytest.raises(ConfigErrors) as raised:
        load_mesh_config(mesh)
    assert "spec.pilot.ingressControllerMode: expected one of OFF, DEFAULT, STRICT" in str(
        raised.value
    )
