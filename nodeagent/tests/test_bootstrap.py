"""The node agent's bootstrap edit: SDS cluster once, and Pilot learns the proxy has SDS."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format

from meshfed.nodeagent.agent import with_sds_cluster
from meshfed.pilot.node import from_proto
from meshfed.security import mtls


def test_sds_cluster_added_once_and_announced_to_pilot() -> None:
    bootstrap = {
        "node": {"id": "router~127.0.0.9~ingress.default~default.svc.cluster.local"},
        "static_resources": {"clusters": [{"name": "xds-grpc"}]},
    }
    once = with_sds_cluster(bootstrap, "/run/meshfed/sds.sock")
    twice = with_sds_cluster(once, "/run/meshfed/sds.sock")
    names = [c["name"] for c in twice["static_resources"]["clusters"]]
    assert names == ["xds-grpc", mtls.SDS_CLUSTER]
    assert "metadata" not in bootstrap["node"]  # the caller's dict is left alone
    node = json_format.ParseDict(twice["node"], base_pb2.Node())
    assert from_proto(node).sds
    assert not from_proto(json_format.ParseDict(bootstrap["node"], base_pb2.Node())).sds
