"""Node identity parsing: metadata first, Istio-style id as fallback, bad input reported."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2

from meshfed.pilot.node import from_proto


def test_metadata_and_id_fallbacks() -> None:
    node = base_pb2.Node(id="sidecar~127.0.0.5~reviews.shop~shop.svc.cluster.local")
    node.metadata.update({"APP_PORTS": "9080:8080, 9090", "IDENTITY": "spiffe://x/ns/shop/sa/r"})
    p = from_proto(node)
    assert (p.ip, p.namespace, p.workload) == ("127.0.0.5", "shop", "reviews")
    assert p.app_ports == ((9080, 8080), (9090, 9090))
    assert p.app_address == "127.0.0.5" and p.identity.endswith("/sa/r")


def test_bad_metadata_is_reported_not_fatal() -> None:
    node = base_pb2.Node(id="x")
    node.metadata.update({"IP": "not-an-ip", "APP_PORTS": "abc,70000", "ADMIN_PORT": "x"})
    p = from_proto(node)
    assert p.ip == "" and p.app_ports == () and len(p.problems) == 4


def test_labels_come_from_metadata_as_a_map_or_a_string() -> None:
    from google.protobuf import json_format

    from meshfed.pilot.node import from_proto
    from meshfed.proxy import ProxySpec, bootstrap
    from meshfed.registry.model import Labels

    boot = bootstrap(
        ProxySpec(
            ip="127.0.0.9", workload="gw", role="router", labels="istio=ingressgateway,app=gw"
        )
    )
    node = json_format.ParseDict(boot["node"], base_pb2.Node())
    assert from_proto(node).labels == Labels({"istio": "ingressgateway", "app": "gw"})
    node.metadata.fields["LABELS"].string_value = "a=1, b=2,broken"
    parsed = from_proto(node)
    assert parsed.labels == Labels({"a": "1", "b": "2"})
    assert any("LABELS entry 'broken'" in p for p in parsed.problems)
    node.metadata.fields["LABELS"].number_value = 3
    assert from_proto(node).labels == Labels() and from_proto(node).problems
