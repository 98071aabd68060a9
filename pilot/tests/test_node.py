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
