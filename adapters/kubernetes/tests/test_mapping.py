"""The pure Kubernetes-to-model mapping, on objects shaped exactly as the API serialises them."""

from __future__ import annotations

import random
from typing import Any

import pytest

from meshfed.adapters.kubernetes.mapping import map_service, protocol_for, selector_endpoints
from meshfed.adapters.kubernetes.namespaces import NamespaceFilter, SelectorError, parse_selector
from meshfed.adapters.kubernetes.registry import parse_params
from meshfed.registry.model import Locality, Location, Port, Protocol, Resolution

NS = "shop"


def svc(name: str = "cart", **spec: Any) -> dict[str, Any]:
    spec.setdefault("clusterIP", "10.0.0.7")
    spec.setdefault("ports", [{"name": "http", "port": 80, "targetPort": 8080}])
    return {"metadata": {"name": name, "namespace": NS, "labels": {"app": name}}, "spec": spec}


def ep(address: str, ready: bool | None = True, pod: str = "", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"addresses": [address], **extra}
    if ready is not None:
        out["conditions"] = {"ready": ready}
    if pod:
        out["targetRef"] = {"kind": "Pod", "name": pod, "namespace": NS}
    return out


def eslice(name: str, endpoints: list[dict[str, Any]], ports: Any = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": NS},
        "addressType": "IPv4",
        "ports": ports if ports is not None else [{"name": "http", "port": 8080}],
        "endpoints": endpoints,
    }


def pod(name: str, sa: str = "cart-sa", node: str = "", **labels: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"serviceAccountName": sa}
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": name, "namespace": NS, "labels": labels}, "spec": spec}


NODES = {
    "n1": {
        "metadata": {
            "name": "n1",
            "labels": {
                "topology.kubernetes.io/region": "eu-west",
                "topology.kubernetes.io/zone": "eu-west-1a",
            },
        }
    }
}


def mapped(service: dict[str, Any], slices=(), legacy=None, pods=None, selector_pods=None):
    return map_service(
        service,
        slices,
        legacy,
        pods or {},
        NODES,
        "cluster.local",
        "example.org",
        "k8s",
        selector_pods,
    )


@pytest.mark.parametrize(
    ("name", "app_protocol", "expected"),
    [
        ("http", None, Protocol.HTTP),
        ("http-web", None, Protocol.HTTP),
        ("http2-api", None, Protocol.HTTP2),
        ("grpc", None, Protocol.GRPC),
        ("grpc-web-ui", None, Protocol.GRPC),
        ("tcp-db", None, Protocol.TCP),
        ("mongo-main", None, Protocol.MONGO),
        ("redis", None, Protocol.REDIS),
        ("https", None, Protocol.TLS),
        ("metrics", None, Protocol.TCP),
        ("httpx", None, Protocol.TCP),  # a prefix is a whole word before "-"
        ("", None, Protocol.TCP),
        ("tcp-x", "http", Protocol.HTTP),  # appProtocol wins over the name
        ("web", "kubernetes.io/h2c", Protocol.HTTP2),
        ("http", "example.com/custom", Protocol.HTTP),  # unknown appProtocol: fall back to name
    ],
)
def test_protocol_from_app_protocol_then_name_then_tcp(
    name: str, app_protocol: str | None, expected: Protocol
) -> None:
    assert protocol_for(name, app_protocol) is expected


def test_service_with_slices_pods_and_nodes() -> None:
    service = svc(
        ports=[
            {"name": "http", "port": 80, "targetPort": 8080},
            {"name": "grpc-api", "port": 9090, "targetPort": 9091, "appProtocol": "grpc"},
            {"name": "dns", "port": 53, "protocol": "UDP"},  # UDP is not carried by the mesh
        ]
    )
    slices = [
        eslice(
            "cart-1",
            [ep("10.1.0.1", pod="cart-a", nodeName="n1"), ep("10.1.0.2", False, pod="cart-b")],
            ports=[{"name": "http", "port": 8080}, {"name": "grpc-api", "port": 9091}],
        )
    ]
    pods = {
        (NS, "cart-a"): pod("cart-a", app="cart", version="v1"),
        (NS, "cart-b"): pod("cart-b", sa="other", node="n1", app="cart", version="v2"),
    }
    out = mapped(service, slices, pods=pods)
    (s,) = out.services
    assert s.hostname == "cart.shop.svc.cluster.local" and s.address == "10.0.0.7"
    assert s.ports == (Port(80, "http", Protocol.HTTP), Port(9090, "grpc-api", Protocol.GRPC))
    assert dict(s.labels) == {"app": "cart"} and s.namespace == NS
    a, b = out.endpoints[s.hostname]
    assert (a.address, a.healthy, dict(a.ports)) == (
        "10.1.0.1",
        True,
        {"http": 8080, "grpc-api": 9091},
    )
    assert a.identity == "spiffe://example.org/ns/shop/sa/cart-sa"
    assert (a.workload, b.workload) == ("cart-a", "cart-b")  # the pods' names
    assert dict(a.labels) == {"app": "cart", "version": "v1"}
    assert a.locality == Locality("eu-west", "eu-west-1a")
    # Not ready: kept, unhealthy; locality from the pod's node when the slice names none.
    assert (b.address, b.healthy, b.identity) == (
        "10.1.0.2",
        False,
        "spiffe://example.org/ns/shop/sa/other",
    )
    assert b.locality == Locality("eu-west", "eu-west-1a")
    assert out.pods == {(NS, "cart-a"), (NS, "cart-b")} and out.nodes == {"n1"}


def test_equal_inputs_in_any_order_give_equal_objects() -> None:
    endpoints = [ep(f"10.1.0.{i}", i % 3 != 0, pod=f"p{i}") for i in range(12)]
    pods = {(NS, f"p{i}"): pod(f"p{i}", app="cart") for i in range(12)}
    halves = [eslice("s1", endpoints[:6]), eslice("s2", endpoints[6:])]
    first = mapped(svc(), halves, pods=pods)
    shuffled = endpoints[:]
    random.Random(7).shuffle(shuffled)
    second = mapped(svc(), [eslice("s2", shuffled[6:]), eslice("s1", shuffled[:6])], pods=pods)
    assert first == second


def test_duplicate_endpoint_across_slices_ready_copy_wins() -> None:
    out = mapped(svc(), [eslice("a", [ep("10.1.0.1", False)]), eslice("b", [ep("10.1.0.1")])])
    (only,) = out.endpoints["cart.shop.svc.cluster.local"]
    assert only.healthy


def test_nil_ready_condition_means_ready() -> None:
    out = mapped(svc(), [eslice("a", [ep("10.1.0.1", ready=None)])])
    assert out.endpoints["cart.shop.svc.cluster.local"][0].healthy


def test_legacy_endpoints_only_when_there_is_no_slice() -> None:
    legacy = {
        "metadata": {"name": "cart", "namespace": NS},
        "subsets": [
            {
                "addresses": [{"ip": "10.2.0.1"}],
                "notReadyAddresses": [{"ip": "10.2.0.2"}],
                "ports": [{"name": "http", "port": 8080}],
            }
        ],
    }
    out = mapped(svc(), legacy=legacy)
    eps = out.endpoints["cart.shop.svc.cluster.local"]
    assert [(e.address, e.healthy) for e in eps] == [("10.2.0.1", True), ("10.2.0.2", False)]
    with_slice = mapped(svc(), [eslice("s", [ep("10.1.0.9")])], legacy=legacy)
    assert [e.address for e in with_slice.endpoints["cart.shop.svc.cluster.local"]] == ["10.1.0.9"]


def test_unnamed_single_port_joins_its_slice_port() -> None:
    service = svc(ports=[{"port": 6379, "targetPort": 7000}])
    out = mapped(service, [eslice("s", [ep("10.1.0.1")], ports=[{"port": 7000}])])
    (s,) = out.services
    assert s.ports == (Port(6379, "port-6379", Protocol.TCP),)
    assert dict(out.endpoints[s.hostname][0].ports) == {"port-6379": 7000}


def test_headless_service_gets_per_pod_hostnames() -> None:
    service = svc("db", clusterIP="None")
    slices = [eslice("db-x", [ep("10.3.0.1", hostname="db-0"), ep("10.3.0.2", hostname="db-1")])]
    out = mapped(service, slices)
    hosts = [s.hostname for s in out.services]
    assert hosts == [
        "db.shop.svc.cluster.local",
        "db-0.db.shop.svc.cluster.local",
        "db-1.db.shop.svc.cluster.local",
    ]
    assert all(s.address is None and s.headless for s in out.services)
    assert len(out.endpoints["db.shop.svc.cluster.local"]) == 2
    (only,) = out.endpoints["db-1.db.shop.svc.cluster.local"]
    assert only.address == "10.3.0.2" and only.hostname == "db-1.db.shop.svc.cluster.local"


def test_external_name_is_a_dns_mesh_external_service() -> None:
    service = svc("pay", type="ExternalName", externalName="api.payments.example.com.")
    service["spec"].pop("clusterIP")
    out = mapped(service)
    (s,) = out.services
    assert (s.resolution, s.location, s.address) == (Resolution.DNS, Location.MESH_EXTERNAL, None)
    (e,) = out.endpoints[s.hostname]
    assert e.address == "api.payments.example.com" and dict(e.ports) == {"http": 80}


def test_selector_fallback_follows_the_slice_controller_rules() -> None:
    service = svc(
        ports=[{"name": "http", "port": 80, "targetPort": "web"}], selector={"app": "cart"}
    )

    def p(name: str, ip: str | None, ready: str, **extra: Any) -> dict[str, Any]:
        obj = pod(name, app=extra.pop("app", "cart"))
        obj["spec"]["containers"] = [{"ports": [{"name": "web", "containerPort": 8081}]}]
        obj["status"] = {"podIP": ip, "phase": extra.pop("phase", "Running")}
        obj["status"]["conditions"] = [{"type": "Ready", "status": ready}]
        obj["metadata"].update(extra)
        return obj

    pods = [
        p("ok", "10.4.0.1", "True"),
        p("unready", "10.4.0.2", "False"),
        p("no-ip", None, "True"),
        p("done", "10.4.0.3", "True", phase="Succeeded"),
        p("other", "10.4.0.4", "True", app="else"),
        p("leaving", "10.4.0.5", "True", deletionTimestamp="2026-01-01T00:00:00Z"),
    ]
    raws = selector_endpoints(service, pods)
    assert [(r.address, r.ready, r.ports) for r in raws] == [
        ("10.4.0.1", True, (("http", 8081),)),
        ("10.4.0.2", False, (("http", 8081),)),
        ("10.4.0.5", False, (("http", 8081),)),
    ]
    out = mapped(service, selector_pods=pods)
    assert out.from_pods
    assert [e.address for e in out.endpoints["cart.shop.svc.cluster.local"]] == [
        "10.4.0.1",
        "10.4.0.2",
        "10.4.0.5",
    ]
    # Slices, when present, win over the fallback.
    with_slice = mapped(service, [eslice("s", [ep("10.1.0.1")])], selector_pods=pods)
    assert not with_slice.from_pods


def test_odd_shapes_are_treated_as_absent() -> None:
    service = {"metadata": {"name": "x", "namespace": NS}, "spec": {"ports": "nope"}}
    broken = {"metadata": {"name": "s", "namespace": NS}, "endpoints": [{"addresses": []}, 5]}
    out = mapped(service, [broken])
    assert out.services[0].ports == () and out.endpoints == {}


def test_namespace_filter_list_selector_and_system_namespace() -> None:
    listed = NamespaceFilter(["a", "b"], system_namespace="mesh")
    assert listed.allows("a") and listed.allows("mesh") and not listed.allows("c")
    selected = NamespaceFilter(selector="mesh=on,!legacy", system_namespace="mesh")
    changed = selected.set_namespaces(
        [
            {"metadata": {"name": "a", "labels": {"mesh": "on"}}},
            {"metadata": {"name": "b", "labels": {"mesh": "on", "legacy": "1"}}},
            {"metadata": {"name": "c"}},
        ]
    )
    assert changed == {"a"} and selected.allows("mesh")
    assert selected.update_namespace({"metadata": {"name": "c", "labels": {"mesh": "on"}}})
    assert selected.allows("c")
    assert selected.update_namespace({"metadata": {"name": "c"}}, deleted=True)


@pytest.mark.parametrize("bad", ["", "a b=c", ",", "=x"])
def test_bad_selectors_are_rejected_with_the_term(bad: str) -> None:
    with pytest.raises(SelectorError, match="namespaceSelector"):
        parse_selector(bad)


def test_params_are_checked() -> None:
    params = parse_params({"clusterDomain": "corp.local.", "namespaces": ["a"]})
    assert params.cluster_domain == "corp.local" and params.namespaces == ("a",)
    for bad, message in (
        ({"namespaces": "a"}, "namespaces: expected a list"),
        ({"namespaces": ["a"], "namespaceSelector": "x=y"}, "not both"),
        ({"kubeconfg": "/x"}, "unknown parameter"),
        ({"serviceEntries": "yes"}, "serviceEntries: expected true or false"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_params(bad)


def test_crd_config_store_serves_the_ingresses_the_mesh_config_chooses() -> None:
    """The hub's Kubernetes config store parses Ingresses with the mesh's selection."""
    from meshfed.config import MeshConfig, RegistryConfig
    from meshfed.configstores import kube_config_components
    from meshfed.core.resources import Document

    mesh = MeshConfig(
        registries=(RegistryConfig("k8s", "kubernetes", {"kubeconfig": "/nonexistent"}),),
        pilot={"ingressControllerMode": "STRICT"},
    )
    (component,) = kube_config_components(mesh)
    parse = component.store.resources.parsers["Ingress"]
    backend = {"service": {"name": "web", "port": {"number": 80}}}
    spec = {"rules": [{"host": "a", "http": {"paths": [{"path": "/", "backend": backend}]}}]}

    def doc(spec_class: str) -> Document:
        body = {**spec, "ingressClassName": spec_class} if spec_class else spec
        return Document("k8s", 0, "networking.k8s.io/v1", "Ingress", "x", "default", {}, body)

    assert parse(doc("")) == (None, [])  # STRICT: an Ingress naming no class is not ours
    assert parse(doc("nginx")) == (None, [])
    served, errors = parse(doc("istio"))
    assert errors == [] and served.name == "x" and served.paths[0].host == "a"
