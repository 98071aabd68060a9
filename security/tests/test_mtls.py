"""The Envoy config that :mod:`security.mtls` builds for Pilot (shape; real Envoys run it in
``integration/test_security_mtls.py``)."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from meshfed.core import xds
from meshfed.registry.model import Endpoint, Location, Port, Protocol, Service
from meshfed.security import mtls

SVC = Service("reviews.shop.svc.cluster.local", "shop", [Port(9080, "http", Protocol.HTTP)])
MESHED = {mtls.TLS_MODE_LABEL: mtls.TLS_MODE_MTLS}


def _ep(addr: str, identity: str = "", labels: dict[str, str] | None = None) -> Endpoint:
    return Endpoint(addr, identity=identity, labels=labels or {})


def test_outbound_mtls_to_sidecars_verifies_the_known_identities() -> None:
    eps = [
        _ep("10.0.0.1", "spiffe://td/ns/shop/sa/reviews", MESHED),
        _ep("10.0.0.2", "spiffe://td/ns/shop/sa/reviews-v2", MESHED),
    ]
    cluster = cluster_pb2.Cluster(name="outbound|9080||reviews")
    assert mtls.apply_outbound_mtls(cluster, SVC, eps, mtls.Policy(mtls.Mode.PERMISSIVE))
    ctx = tls_pb2.UpstreamTlsContext()
    assert not cluster.HasField("transport_socket")  # the default, for endpoints without one
    (match,) = cluster.transport_socket_matches
    assert dict(match.match) == mtls.MTLS_MATCH
    assert match.transport_socket.name == mtls.TLS_SOCKET
    match.transport_socket.typed_config.Unpack(ctx)
    assert ctx.sni == SVC.hostname
    common = ctx.common_tls_context
    assert [c.name for c in common.tls_certificate_sds_secret_configs] == [mtls.CERT_SECRET]
    combined = common.combined_validation_context
    assert combined.validation_context_sds_secret_config.name == mtls.ROOT_SECRET
    sans = [
        m.matcher.exact for m in combined.default_validation_context.match_typed_subject_alt_names
    ]
    assert sans == ["spiffe://td/ns/shop/sa/reviews", "spiffe://td/ns/shop/sa/reviews-v2"]
    grpc_service = common.tls_certificate_sds_secret_configs[0].sds_config.api_config_source
    assert grpc_service.grpc_services[0].envoy_grpc.cluster_name == mtls.SDS_CLUSTER
    # No key material ever travels in xDS.
    assert b"PRIVATE KEY" not in cluster.SerializeToString()


@pytest.mark.parametrize(
    ("service", "endpoints", "policy"),
    [
        # endpoints without a sidecar (identity known, but no tlsMode label) -> plain
        (SVC, [_ep("10.0.0.1", "spiffe://td/ns/shop/sa/reviews")], mtls.Policy(mtls.Mode.STRICT)),
        # mesh-external destinations -> plain
        (
            Service("api.example.com", location=Location.MESH_EXTERNAL),
            [_ep("1.2.3.4", "spiffe://td/ns/a/sa/b", MESHED)],
            mtls.Policy(mtls.Mode.STRICT),
        ),
        # per-destination override OFF
        (
            SVC,
            [_ep("10.0.0.1", "spiffe://td/ns/a/sa/b", MESHED)],
            mtls.Policy(mtls.Mode.STRICT, {SVC.hostname: mtls.Mode.OFF}),
        ),
        # no endpoints known yet
        (SVC, [], mtls.Policy(mtls.Mode.STRICT)),
    ],
)
def test_plain_traffic_to_destinations_without_sidecar_or_with_mtls_off(
    service: Service, endpoints: list[Endpoint], policy: mtls.Policy
) -> None:
    cluster = cluster_pb2.Cluster(name="c")
    assert not mtls.apply_outbound_mtls(cluster, service, endpoints, policy)
    assert not cluster.HasField("transport_socket") and not cluster.transport_socket_matches


def test_mixed_service_gets_mtls_per_endpoint() -> None:
    """Half migrated: only the endpoints with a sidecar are selected for mutual TLS."""
    meshed = _ep("10.0.0.1", "spiffe://td/ns/shop/sa/reviews", MESHED)
    legacy = _ep("10.0.0.2", "spiffe://td/ns/shop/sa/legacy")  # identity, but no sidecar
    cluster = cluster_pb2.Cluster(name="c")
    assert mtls.apply_outbound_mtls(cluster, SVC, [meshed, legacy], mtls.Policy(mtls.Mode.STRICT))
    (match,) = cluster.transport_socket_matches
    ctx = tls_pb2.UpstreamTlsContext()
    match.transport_socket.typed_config.Unpack(ctx)
    sans = ctx.common_tls_context.combined_validation_context.default_validation_context
    assert [m.matcher.exact for m in sans.match_typed_subject_alt_names] == [meshed.identity]
    assert mtls.endpoint_socket_metadata(meshed) == mtls.MTLS_MATCH
    assert mtls.endpoint_socket_metadata(legacy) is None
    # Without SDS the proxy gets the cluster back plain (pilot.sds_fallback).
    assert mtls.strip_mesh_tls(cluster) and not cluster.transport_socket_matches
    assert not mtls.strip_mesh_tls(cluster)


def _inbound(filters: list[lc.Filter]) -> listener_pb2.Listener:
    return listener_pb2.Listener(name="in", filter_chains=[lc.FilterChain(filters=filters)])


def _http_filter() -> lc.Filter:
    manager = hcm.HttpConnectionManager(stat_prefix="in")
    return lc.Filter(name="hcm", typed_config=xds.pack(manager))


def test_strict_inbound_requires_a_client_certificate_and_sets_xfcc() -> None:
    listener = _inbound([_http_filter()])
    mtls.apply_inbound_mtls(listener, mtls.Mode.STRICT)
    (chain,) = listener.filter_chains
    ctx = tls_pb2.DownstreamTlsContext()
    chain.transport_socket.typed_config.Unpack(ctx)
    assert ctx.require_client_certificate.value is True
    manager = hcm.HttpConnectionManager()
    chain.filters[0].typed_config.Unpack(manager)
    assert manager.forward_client_cert_details == hcm.HttpConnectionManager.SANITIZE_SET
    assert manager.set_current_client_cert_details.uri
    assert not listener.listener_filters


def test_permissive_inbound_serves_tls_and_plain_on_one_port() -> None:
    tcp = lc.Filter(name="envoy.filters.network.tcp_proxy")
    listener = _inbound([tcp])
    mtls.apply_inbound_mtls(listener, mtls.Mode.PERMISSIVE)
    chains = {c.filter_chain_match.transport_protocol: c for c in listener.filter_chains}
    assert set(chains) == {"tls", "raw_buffer"}
    assert chains["tls"].HasField("transport_socket")
    assert not chains["raw_buffer"].HasField("transport_socket")
    assert [f.name for f in listener.listener_filters] == [mtls.TLS_INSPECTOR]
    assert chains["tls"].filters[0] == tcp  # non-HTTP filters are kept as they are


def test_a_transport_socket_set_by_policy_is_kept() -> None:
    eps = [_ep("10.0.0.1", "spiffe://td/ns/shop/sa/reviews", MESHED)]
    cluster = cluster_pb2.Cluster(name="c")
    cluster.transport_socket.name = "operator-tls"
    assert not mtls.apply_outbound_mtls(cluster, SVC, eps, mtls.Policy(mtls.Mode.STRICT))
    assert cluster.transport_socket.name == "operator-tls"


def test_off_leaves_the_listener_alone_and_policy_parsing() -> None:
    listener = _inbound([_http_filter()])
    before = listener.SerializeToString()
    mtls.apply_inbound_mtls(listener, mtls.Mode.OFF)
    assert listener.SerializeToString() == before
    policy = mtls.Policy.from_dict({"mode": "strict", "destinations": {"legacy.svc": "off"}})
    assert policy.mode_for("legacy.svc") is mtls.Mode.OFF
    assert policy.mode_for("other.svc") is mtls.Mode.STRICT
    assert policy.inbound_mode(["legacy.svc", "other.svc"]) is mtls.Mode.STRICT
    assert mtls.Policy(mtls.Mode.OFF).inbound_mode([]) is mtls.Mode.OFF
    with pytest.raises(ValueError, match="PERMISSIVE"):
        mtls.Policy.from_dict({"mode": "sometimes"})


def test_policy_from_mesh_config_never_crashes_pilot(caplog: pytest.LogCaptureFixture) -> None:
    assert mtls.policy_from_config({}).mode is mtls.Mode.OFF
    assert mtls.policy_from_config({"mtls": {"mode": "STRICT"}}).mode is mtls.Mode.STRICT
    assert mtls.policy_from_config({"mtls": {"mode": "bogus"}}).mode is mtls.Mode.OFF
    assert mtls.policy_from_config({"mtls": "STRICT"}).mode is mtls.Mode.OFF
    assert "pilot.mtls" in caplog.text


def test_inbound_mode_only_for_endpoints_marked_as_meshed() -> None:
    policy = mtls.Policy(mtls.Mode.STRICT)
    meshed = _ep("10.0.0.1", "spiffe://td/ns/shop/sa/reviews", MESHED)
    unmarked = _ep("10.0.0.1", "spiffe://td/ns/shop/sa/reviews")
    assert mtls.inbound_mode_for(policy, [(SVC, meshed)]) is mtls.Mode.STRICT
    # Clients do not originate mTLS to unmarked endpoints, so their sidecar must not require it.
    assert mtls.inbound_mode_for(policy, [(SVC, unmarked)]) is mtls.Mode.OFF
    assert mtls.inbound_mode_for(policy, []) is mtls.Mode.OFF
    permissive = mtls.Policy(mtls.Mode.OFF, {SVC.hostname: mtls.Mode.PERMISSIVE})
    assert mtls.inbound_mode_for(permissive, [(SVC, meshed)]) is mtls.Mode.PERMISSIVE


def test_use_secret_files_points_cluster_and_listener_secrets_at_the_proxys_files() -> None:
    eps = [_ep("10.0.0.1", "spiffe://td/ns/shop/sa/reviews", MESHED)]
    cluster = cluster_pb2.Cluster(name="outbound|9080||reviews")
    assert mtls.apply_outbound_mtls(cluster, SVC, eps, mtls.Policy(mtls.Mode.PERMISSIVE))
    assert mtls.use_secret_files(cluster, "/run/meshfed/web")
    ctx = tls_pb2.UpstreamTlsContext()
    cluster.transport_socket_matches[0].transport_socket.typed_config.Unpack(ctx)
    common = ctx.common_tls_context
    cert = common.tls_certificate_sds_secret_configs[0].sds_config.path_config_source
    assert cert.path == "/run/meshfed/web/default.json"
    assert cert.watched_directory.path == "/run/meshfed/web"
    root = common.combined_validation_context.validation_context_sds_secret_config
    assert root.sds_config.path_config_source.path == "/run/meshfed/web/ROOTCA.json"
    assert mtls.uses_mesh_sds(common)  # still the mesh's secrets (the no-SDS fallback strips it)
    assert not mtls.use_secret_files(cluster, "/run/meshfed/web")  # nothing left to point

    listener = listener_pb2.Listener(
        name="in", filter_chains=[lc.FilterChain(filters=[lc.Filter(name="x")])]
    )
    mtls.apply_inbound_transport(listener, mtls.Mode.STRICT)
    assert mtls.use_secret_files(listener, "/d")
    down = tls_pb2.DownstreamTlsContext()
    listener.filter_chains[0].transport_socket.typed_config.Unpack(down)
    paths = [
        c.sds_config.path_config_source.path
        for c in down.common_tls_context.tls_certificate_sds_secret_configs
    ]
    assert paths == ["/d/default.json"]


def test_use_secret_files_leaves_other_tls_alone() -> None:
    other = tls_pb2.UpstreamTlsContext(sni="example.com")
    cluster = cluster_pb2.Cluster(
        name="egress",
        transport_socket=mtls.base_pb2.TransportSocket(
            name=mtls.TLS_SOCKET, typed_config=xds.pack(other)
        ),
    )
    before = cluster.SerializeToString()
    assert not mtls.use_secret_files(cluster, "/d")
    assert cluster.SerializeToString() == before
