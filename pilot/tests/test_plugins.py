"""Listener plugins: the Protocol, where hooks run, how their versions drive pushes."""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import pytest
from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import empty_pb2

from meshfed.core.tracing import TracingSettings
from meshfed.pilot import xds_types as T
from meshfed.pilot.cache import ConfigCache, ProxyView, check_consistency
from meshfed.pilot.config.model import EgressPort, EgressRule, Gateway, IngressPath, ServiceRef
from meshfed.pilot.config.store import ConfigSnapshot
from meshfed.pilot.mixer_plugin import MixerDataPath, MixerPlugin
from meshfed.pilot.mtls_plugin import MtlsPlugin
from meshfed.pilot.node import ProxyNode
from meshfed.pilot.plugins import (
    ChainContext,
    ClusterContext,
    HttpChain,
    ListenerPlugin,
    PluginBase,
    PluginSet,
    ProxyContext,
    TcpChain,
    protocol_mismatches,
)
from meshfed.pilot.tracing_plugin import TracingPlugin
from meshfed.pilot.translate.protos import pack
from meshfed.registry.aggregate import AggregateRegistry
from meshfed.registry.model import Endpoint, Port, Protocol, Service
from meshfed.security import mtls

DOC = Path(__file__).resolve().parents[2] / "docs" / "pilot-plugins.md"
MESHED = {mtls.TLS_MODE_LABEL: mtls.TLS_MODE_MTLS}
WEB = Service("web.default.svc.cluster.local", ports=(Port(80, "http", Protocol.HTTP),))
DB = Service("db.default.svc.cluster.local", ports=(Port(5432, "tcp", Protocol.TCP),))
SIDECAR = ProxyNode(
    id="sidecar~10.0.0.5~web.default~x", ip="10.0.0.5", app_ports=((9080, 19080),), sds=True
)
DB_SIDECAR = ProxyNode(
    id="sidecar~10.0.0.7~db.default~x", ip="10.0.0.7", app_ports=((5432, 15432),), sds=True
)
GATEWAY = ProxyNode(id="router~127.0.0.9~ingress.default~x", ip="127.0.0.9", sds=True)
HEADER_MUTATION = "envoy.filters.http.header_mutation"


def doc_example() -> dict:
    """The plugin in docs/pilot-plugins.md, run as written."""
    block = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert block is not None, "docs/pilot-plugins.md lost its example"
    namespace: dict = {}
    exec(compile(block.group(1), str(DOC), "exec"), namespace)
    return namespace


class TcpTap(PluginBase):
    """Adds a (never served) network filter and an access log to every TCP chain."""

    name = "tcp-tap"

    def __init__(self) -> None:
        self.tag = "v1"

    def version(self) -> str:
        return self.tag

    def _tap(self, chain: TcpChain) -> None:
        chain.add_filter(
            lc.Filter(name=f"test.tap.{self.tag}", typed_config=pack(empty_pb2.Empty()))
        )
        chain.add_access_log(accesslog_pb2.AccessLog(name=f"test.log.{self.tag}"))

    def on_inbound_tcp(self, ctx: ChainContext, chain: TcpChain) -> None:
        assert [s.hostname for s in ctx.services] == [DB.hostname] and ctx.port == 5432
        self._tap(chain)

    def on_outbound_tcp(self, ctx: ChainContext, chain: TcpChain) -> None:
        self._tap(chain)


class LocalClient(PluginBase):
    """A per-proxy cluster, only for proxies with the node agent (here: SDS)."""

    name = "local-client"

    def version(self) -> str:
        return "1"

    def extra_clusters(self, ctx: ProxyContext) -> list[cluster_pb2.Cluster]:
        if not ctx.proxy.sds:
            return []
        return [cluster_pb2.Cluster(name="local-client", type=cluster_pb2.Cluster.STATIC)]


class Broken(PluginBase):
    name = "broken"

    def on_inbound_http(self, ctx: ChainContext, chain: HttpChain) -> None:
        chain.add_filter(hcm.HttpFilter(name="half.done"))
        raise RuntimeError("boom")


def cache_with(*plugins: ListenerPlugin) -> ConfigCache:
    agg = AggregateRegistry()
    member = agg.add_member("m")
    member.put_service(WEB, [Endpoint("10.0.0.5", {"http": 9080}, MESHED, identity="spiffe://x")])
    member.put_service(DB, [Endpoint("10.0.0.7", {"tcp": 5432})])
    member.mark_synced()
    cache = ConfigCache(agg, plugins)
    paths = (IngressPath("*", "/", ServiceRef(name="web"), 80),)
    gateways = [Gateway("front", "default", "/cfg/gw.yaml", "Gateway", paths)]
    egress = EgressRule(
        "ext", "default", "/cfg/e.yaml", "ext.example.com", (EgressPort(7000, Protocol.TCP),)
    )
    cache.set_config(ConfigSnapshot.of([*gateways, egress]))
    cache.rebuild()
    return cache


def listeners(view: ProxyView) -> dict[str, listener_pb2.Listener]:
    out = {}
    for name, res in view.get(T.LISTENER).items():
        listener = listener_pb2.Listener()
        res.body.Unpack(listener)
        out[name] = listener
    return out


def http_filters(listener: listener_pb2.Listener) -> list[list[str]]:
    """The HTTP filter names of each chain's connection manager."""
    out = []
    for chain in listener.filter_chains:
        for filt in chain.filters:
            if filt.typed_config.Is(hcm.HttpConnectionManager.DESCRIPTOR):
                manager = hcm.HttpConnectionManager()
                filt.typed_config.Unpack(manager)
                out.append([f.name for f in manager.http_filters])
    return out


def versions(view: ProxyView) -> dict[str, dict[str, str]]:
    return {t: {n: r.version for n, r in view.get(t).items()} for t in T.PUSH_ORDER}


# -- the contract ---------------------------------------------------------------------------
def test_every_plugin_matches_the_protocol() -> None:
    shipped = [
        MtlsPlugin(),
        MixerPlugin(MixerDataPath(enabled=True)),
        doc_example()["ResponseHeader"]("x-a", "1"),
        TcpTap(),
        LocalClient(),
        TracingPlugin(TracingSettings(enabled=True, collector="127.0.0.1:4317")),
    ]
    for plugin in shipped:
        assert isinstance(plugin, ListenerPlugin)
        assert protocol_mismatches(plugin) == [], plugin


def test_a_plugin_whose_hook_differs_from_the_protocol_is_refused() -> None:
    class Wrong(PluginBase):
        name = "wrong"

        def on_inbound_http(self, chain: HttpChain) -> None:  # type: ignore[override]
            return None

    (problem,) = protocol_mismatches(Wrong())
    assert problem.startswith("on_inbound_http: parameters ['chain']")
    with pytest.raises(TypeError, match=r"listener plugin .*on_inbound_http"):
        PluginSet([Wrong()])
    assert "extra_clusters: missing" in protocol_mismatches(object())


# -- where the hooks run --------------------------------------------------------------------
def test_doc_example_reaches_inbound_and_gateway_http_but_not_outbound() -> None:
    plugin = doc_example()["ResponseHeader"]("x-served-by", "mesh")
    cache = cache_with(plugin)
    sidecar = listeners(cache.view(SIDECAR))
    inbound = sidecar["inbound|10.0.0.5:9080"]
    assert http_filters(inbound) == [[HEADER_MUTATION, "envoy.filters.http.router"]]
    assert HEADER_MUTATION not in http_filters(sidecar["outbound_http"])[0]
    gateway = listeners(cache.view(GATEWAY))
    (gw_listener,) = gateway.values()
    assert http_filters(gw_listener) == [[HEADER_MUTATION, "envoy.filters.http.router"]]
    assert check_consistency(cache.view(SIDECAR)) == []


def test_every_tcp_chain_goes_through_the_plugins_interception_included() -> None:
    cache = cache_with(TcpTap())

    def taps(listener: listener_pb2.Listener) -> list[tuple[list[str], list[str]]]:
        out = []
        for chain in listener.filter_chains:
            names = [f.name for f in chain.filters]
            proxy = tcp_proxy_pb2.TcpProxy()
            chain.filters[-1].typed_config.Unpack(proxy)
            out.append((names, [a.name for a in proxy.access_log]))
        return out

    want = (["test.tap.v1", "envoy.filters.network.tcp_proxy"], ["test.log.v1"])
    web = listeners(cache.view(SIDECAR))
    assert taps(web["outbound|10.0.0.5:5432"]) == [want]  # the service port
    assert taps(web["outbound|10.0.0.5:7000"]) == [want]  # the egress rule's port
    assert taps(listeners(cache.view(DB_SIDECAR))["inbound|10.0.0.7:5432"]) == [want]
    redirect = listeners(cache.view(attrs.evolve(SIDECAR, interception="REDIRECT")))
    tcp_chains = [c for c in redirect["virtualOutbound"].filter_chains if "5432" in c.name]
    assert [f.name for f in tcp_chains[0].filters] == want[0]


def test_extra_clusters_are_per_proxy_for_sidecars_and_gateways() -> None:
    cache = cache_with(LocalClient())
    for node in (SIDECAR, GATEWAY):
        with_client = cache.view(node)
        assert "local-client" in with_client.get(T.CLUSTER)
        without = cache.view(attrs.evolve(node, sds=False))
        assert "local-client" not in without.get(T.CLUSTER)
        assert with_client.version(T.CLUSTER) != without.version(T.CLUSTER)


def test_mutual_tls_wraps_the_filters_of_later_plugins() -> None:
    header = doc_example()["ResponseHeader"]("x-served-by", "mesh")
    cache = cache_with(MtlsPlugin(mtls.Policy(mtls.Mode.PERMISSIVE)), header)
    inbound = listeners(cache.view(SIDECAR))["inbound|10.0.0.5:9080"]
    names = [c.name for c in inbound.filter_chains]
    assert names == ["inbound|10.0.0.5:9080-mtls", "inbound|10.0.0.5:9080-plain"]
    assert http_filters(inbound) == [[HEADER_MUTATION, "envoy.filters.http.router"]] * 2
    manager = hcm.HttpConnectionManager()
    inbound.filter_chains[0].filters[0].typed_config.Unpack(manager)
    assert manager.forward_client_cert_details == hcm.HttpConnectionManager.SANITIZE_SET


def test_a_failing_plugin_is_contained_and_reported() -> None:
    cache = cache_with(Broken(), doc_example()["ResponseHeader"]("x-a", "1"))
    view = cache.view(SIDECAR)
    inbound = listeners(view)["inbound|10.0.0.5:9080"]
    assert http_filters(inbound) == [[HEADER_MUTATION, "envoy.filters.http.router"]]
    assert any("broken failed in on_inbound_http" in p for p in view.problems)


def test_cluster_hook_sees_every_service_cluster() -> None:
    seen: list[tuple[str, str]] = []

    class Spy(PluginBase):
        name = "spy"

        def on_cluster(self, ctx: ClusterContext, cluster: cluster_pb2.Cluster) -> None:
            seen.append((ctx.service.hostname, cluster.name))

    cache_with(Spy())
    assert {("web.default.svc.cluster.local", "outbound|80||web.default.svc.cluster.local")} <= set(
        seen
    )
    assert ("db.default.svc.cluster.local", "outbound|5432||db.default.svc.cluster.local") in seen


# -- versions and pushes --------------------------------------------------------------------
def test_changing_only_a_plugins_config_changes_only_what_it_touches() -> None:
    plugin = doc_example()["ResponseHeader"]("x-served-by", "v1")
    cache = cache_with(MtlsPlugin(mtls.Policy(mtls.Mode.PERMISSIVE)), plugin, TcpTap())
    before = {n: versions(cache.view(n)) for n in (SIDECAR, GATEWAY)}
    assert cache.refresh_plugins() is None  # nothing moved: nothing to push
    assert {n: versions(cache.view(n)) for n in (SIDECAR, GATEWAY)} == before

    plugin.value = "v2"
    change = cache.refresh_plugins()
    assert change is not None and not change.cluster_names and not change.endpoint_names
    after = {n: versions(cache.view(n)) for n in (SIDECAR, GATEWAY)}
    for node in (SIDECAR, GATEWAY):
        for type_url in (T.CLUSTER, T.ENDPOINT, T.ROUTE):
            assert after[node][type_url] == before[node][type_url], (node.id, type_url)
    moved = {
        (node.id, name)
        for node in (SIDECAR, GATEWAY)
        for name, version in after[node][T.LISTENER].items()
        if before[node][T.LISTENER][name] != version
    }
    assert moved == {
        (SIDECAR.id, "inbound|10.0.0.5:9080"),
        (GATEWAY.id, "gateway|127.0.0.9:15001"),
    }


def test_a_cluster_plugin_change_reports_only_the_clusters_whose_bytes_changed() -> None:
    plugin = MtlsPlugin(mtls.Policy(mtls.Mode.OFF))
    cache = cache_with(plugin)
    web = "outbound|80||web.default.svc.cluster.local"
    plugin.policy = mtls.Policy(mtls.Mode.STRICT)
    change = cache.refresh_plugins()
    assert change is not None and change.cluster_names == {web}  # db has no sidecar endpoint
