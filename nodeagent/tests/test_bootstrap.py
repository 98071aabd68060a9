"""The node agent's bootstrap edit: Pilot learns where the proxy's secrets are, and an
operator's static mesh TLS is pointed at the same files."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from meshfed.nodeagent import agent
from meshfed.nodeagent.agent import with_secret_files
from meshfed.pilot.node import from_proto
from meshfed.security import mtls


def test_secrets_directory_announced_to_pilot_and_static_tls_pointed_at_it() -> None:
    inbound = listener_pb2.Listener(
        name="in", filter_chains=[lc.FilterChain(filters=[lc.Filter(name="x")])]
    )
    mtls.apply_inbound_transport(inbound, mtls.Mode.STRICT)
    bootstrap = {
        "node": {"id": "router~127.0.0.9~ingress.default~default.svc.cluster.local"},
        "static_resources": {
            "clusters": [{"name": "xds-grpc"}],
            "listeners": [json_format.MessageToDict(inbound)],
        },
    }
    boot = with_secret_files(bootstrap, "/run/meshfed/web")
    assert with_secret_files(boot, "/run/meshfed/web") == boot  # idempotent
    assert "metadata" not in bootstrap["node"]  # the caller's dict is left alone
    node = from_proto(json_format.ParseDict(boot["node"], base_pb2.Node()))
    assert node.sds and node.secrets_dir == "/run/meshfed/web"
    assert not from_proto(json_format.ParseDict(bootstrap["node"], base_pb2.Node())).sds
    assert [c["name"] for c in boot["static_resources"]["clusters"]] == ["xds-grpc"]
    listener = json_format.ParseDict(
        boot["static_resources"]["listeners"][0], listener_pb2.Listener()
    )
    context = tls_pb2.DownstreamTlsContext()
    listener.filter_chains[0].transport_socket.typed_config.Unpack(context)
    (cert,) = context.common_tls_context.tls_certificate_sds_secret_configs
    assert cert.sds_config.path_config_source.path == "/run/meshfed/web/default.json"


def test_a_relative_secrets_path_is_a_problem_and_no_mesh_tls() -> None:
    node = base_pb2.Node(id="sidecar~127.0.0.9~web.default~default.svc.cluster.local")
    node.metadata.update({"SDS": "true", "SDS_PATH": "secrets"})
    parsed = from_proto(node)
    assert not parsed.sds and parsed.secrets_dir == ""
    assert any("SDS_PATH='secrets'" in p and "absolute" in p for p in parsed.problems)


def test_the_agents_mirrors_of_mtls_names_are_equal() -> None:
    assert agent.SDS_PLACEHOLDER_CLUSTER == mtls.SDS_CLUSTER
    assert (agent.TLS_MODE_LABEL, agent.TLS_MODE_MTLS) == (mtls.TLS_MODE_LABEL, mtls.TLS_MODE_MTLS)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["name", "sds_config", "sdsConfig", "x"]), inner, max_size=4
        )
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(static=json_values, path=st.text(max_size=20))
def test_hostile_bootstraps_and_metadata_never_crash(static: object, path: str) -> None:
    boot = with_secret_files({"static_resources": static}, "/run/meshfed/web")
    assert boot["node"]["metadata"]["SDS_PATH"] == "/run/meshfed/web"
    node = base_pb2.Node(id="sidecar~127.0.0.9~web.default~default.svc.cluster.local")
    node.metadata.update({"SDS": "true", "SDS_PATH": path})
    parsed = from_proto(node)
    assert parsed.secrets_dir in ("", path)
    assert parsed.sds == parsed.secrets_dir.startswith("/")
