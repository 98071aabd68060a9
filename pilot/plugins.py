"""Listener plugins: the one extension point for what goes on a proxy's listeners and clusters.

Every HTTP connection manager and every TCP filter chain Pilot builds for a sidecar or a gateway
passes through the plugins, in order, before it is serialized: inbound and outbound, HTTP and
TCP, explicit and interception mode (interception listeners are built from the explicit ones,
so they carry the same filters), gateways' plain and TLS ports. Every mesh service cluster
(shared or per-source) passes through :meth:`ListenerPlugin.on_cluster`, and a plugin may add
per-proxy clusters (:meth:`ListenerPlugin.extra_clusters`), for example a static cluster on a
node-local Unix socket. Mutual TLS is such a plugin (:mod:`pilot.mtls_plugin`); the contract for
writing one is ``docs/pilot-plugins.md``.

Promises:
- Hooks receive a typed, read-only context (the proxy, the direction, the port, the services
  the chain serves) and a mutable builder (:class:`HttpChain`, :class:`TcpChain`), or the
  message itself (clusters, the finished inbound listener). They return nothing and do no I/O:
  the output is a pure function of the context and the plugin's config.
- A plugin's :meth:`~ListenerPlugin.version` is part of every cache key its output is stored
  under (:attr:`PluginSet.key`), and the output is part of each resource's content version. So
  a plugin whose config did not change costs nothing and causes no push, and one that changed
  re-sends only the resources whose bytes changed (the listeners, or clusters, it touches).
- A plugin that raises is contained: the chain is built without that plugin's change, the
  error is logged and reported as a problem of the proxy (``proxy-status``); the rest of the
  config is served.
"""

from __future__ import annotations

import enum
import inspect
import logging
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import attrs
from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshfed.pilot.node import ProxyNode
from meshfed.pilot.translate.protos import pack
from meshfed.registry.model import Endpoint, Port, Service
from meshfed.registry.model import Protocol as PortProtocol

log = logging.getLogger("meshfed.pilot.plugins")

ROUTER_FILTER = "envoy.filters.http.router"
TCP_PROXY_FILTER = "envoy.filters.network.tcp_proxy"

Own = tuple[tuple[Service, Endpoint], ...]


class Direction(enum.Enum):
    INBOUND = "inbound"  # traffic the mesh sends to the proxy's own workload
    OUTBOUND = "outbound"  # traffic the workload sends out (services, egress)
    GATEWAY = "gateway"  # traffic entering the mesh at a gateway


@attrs.frozen(slots=True)
class ProxyContext:
    """The proxy a view is built for: its node and the registry endpoints at its address."""

    proxy: ProxyNode
    own: Own = ()
    gateway: bool = False


@attrs.frozen(slots=True)
class ChainContext:
    """Where a filter chain sits.

    ``port`` is the listener port (inbound: the endpoint port the mesh dials; outbound TCP:
    the service or egress port; the shared outbound HTTP listener: the proxy's outbound HTTP
    port; gateway: the gateway port). ``services`` are the destinations the chain serves:
    inbound, the proxy's own services on that port; outbound TCP, the one service (empty for
    egress); outbound HTTP and gateways serve many, chosen per route, so it is empty there and
    ``host`` is empty too. ``host`` names the destination of an outbound TCP chain (a service
    or an egress rule's domain). ``tls`` marks a gateway's TLS-terminating chains.
    """

    proxy: ProxyNode
    direction: Direction
    port: int
    protocol: PortProtocol | None = None
    services: tuple[Service, ...] = ()
    host: str = ""
    own: Own = ()
    tls: bool = False
    problems: list[str] = attrs.field(factory=list, eq=False, repr=False)

    def report(self, problem: str) -> None:
        """Tell the operator something (shown in ``proxy-status``); does not stop the build."""
        if problem not in self.problems:
            self.problems.append(problem)


@attrs.frozen(slots=True)
class ClusterContext:
    """A mesh service cluster: the service port it reaches and the endpoints behind it."""

    service: Service
    port: Port
    endpoints: tuple[Endpoint, ...]


class HttpChain:
    """One HTTP connection manager being built; its filter list ends with the router.

    ``manager`` may be changed freely (access logs, header handling). ``route_config`` is the
    route table this manager serves when it is built in the same step (an inbound port's inline
    table, a gateway port's RDS table), so a plugin can set per-route config there (for
    example ``typed_per_filter_config`` to turn a filter off on some routes); it is None for
    the shared outbound route table.
    """

    def __init__(
        self,
        manager: hcm.HttpConnectionManager,
        route_config: route_pb2.RouteConfiguration | None = None,
    ) -> None:
        self.manager = manager
        self.route_config = route_config
        self._first = 0  # filters added with first=True so far

    def add_filter(self, filt: hcm.HttpFilter, first: bool = False) -> None:
        """Insert ``filt`` before the router (after earlier additions), or, with ``first``,
        ahead of every filter built so far (after earlier ``first`` additions)."""
        filters = self.manager.http_filters
        if first:
            filters.insert(self._first, filt)
            self._first += 1
            return
        at = len(filters)
        if filters and filters[-1].name == ROUTER_FILTER:
            at -= 1
        filters.insert(at, filt)

    @property
    def filter_names(self) -> list[str]:
        return [f.name for f in self.manager.http_filters]

    def add_access_log(self, entry: accesslog_pb2.AccessLog) -> None:
        self.manager.access_log.append(entry)


class TcpChain:
    """The network filters of one TCP filter chain being built; the last is the terminal
    filter (``tcp_proxy``) when the chain has one."""

    def __init__(self, filters: Sequence[lc.Filter]) -> None:
        self.filters: list[lc.Filter] = list(filters)
        self._first = 0
        self._logs: list[accesslog_pb2.AccessLog] = []

    def _terminal(self) -> bool:
        return bool(self.filters) and self.filters[-1].name == TCP_PROXY_FILTER

    def add_filter(self, filt: lc.Filter, first: bool = False) -> None:
        """Insert ``filt`` before the terminal filter (after earlier additions), or, with
        ``first``, ahead of every filter built so far (after earlier ``first`` additions)."""
        if first:
            self.filters.insert(self._first, filt)
            self._first += 1
            return
        self.filters.insert(len(self.filters) - 1 if self._terminal() else len(self.filters), filt)

    @property
    def filter_names(self) -> list[str]:
        return [f.name for f in self.filters]

    def add_access_log(self, entry: accesslog_pb2.AccessLog) -> None:
        """An access log on the chain's ``tcp_proxy`` (ignored for a chain without one)."""
        self._logs.append(entry)

    def built(self) -> list[lc.Filter]:
        if not self._logs or not self._terminal():
            return list(self.filters)
        proxy = tcp_proxy_pb2.TcpProxy()
        self.filters[-1].typed_config.Unpack(proxy)
        proxy.access_log.extend(self._logs)
        terminal = lc.Filter(name=self.filters[-1].name, typed_config=pack(proxy))
        return [*self.filters[:-1], terminal]


@runtime_checkable
class ListenerPlugin(Protocol):
    """What a plugin implements. Subclass :class:`PluginBase` to inherit no-op hooks."""

    name: str

    def version(self) -> str:
        """A key of the plugin's config: equal keys promise equal output for equal input."""
        ...

    def on_cluster(self, ctx: ClusterContext, cluster: cluster_pb2.Cluster) -> None:
        """Every mesh service cluster (shared by all proxies, so no proxy in the context)."""
        ...

    def on_inbound_http(self, ctx: ChainContext, chain: HttpChain) -> None: ...

    def on_inbound_tcp(self, ctx: ChainContext, chain: TcpChain) -> None: ...

    def on_outbound_http(self, ctx: ChainContext, chain: HttpChain) -> None: ...

    def on_outbound_tcp(self, ctx: ChainContext, chain: TcpChain) -> None: ...

    def on_gateway_http(self, ctx: ChainContext, chain: HttpChain) -> None: ...

    def on_inbound_listener(self, ctx: ChainContext, listener: listener_pb2.Listener) -> None:
        """An inbound listener once its chain is built: transport security (filter chains
        per transport protocol, listener filters) goes here, so it wraps every filter."""
        ...

    def extra_clusters(self, ctx: ProxyContext) -> Sequence[cluster_pb2.Cluster]:
        """Clusters this proxy gets beside the mesh's (for example one on a local socket)."""
        ...


class PluginBase:
    """No-op hooks: a plugin overrides only what it changes."""

    name = "plugin"

    def version(self) -> str:
        return ""

    def on_cluster(self, ctx: ClusterContext, cluster: cluster_pb2.Cluster) -> None:
        return None

    def on_inbound_http(self, ctx: ChainContext, chain: HttpChain) -> None:
        return None

    def on_inbound_tcp(self, ctx: ChainContext, chain: TcpChain) -> None:
        return None

    def on_outbound_http(self, ctx: ChainContext, chain: HttpChain) -> None:
        return None

    def on_outbound_tcp(self, ctx: ChainContext, chain: TcpChain) -> None:
        return None

    def on_gateway_http(self, ctx: ChainContext, chain: HttpChain) -> None:
        return None

    def on_inbound_listener(self, ctx: ChainContext, listener: listener_pb2.Listener) -> None:
        return None

    def extra_clusters(self, ctx: ProxyContext) -> Sequence[cluster_pb2.Cluster]:
        return ()


HOOKS: tuple[str, ...] = (
    "version",
    "on_cluster",
    "on_inbound_http",
    "on_inbound_tcp",
    "on_outbound_http",
    "on_outbound_tcp",
    "on_gateway_http",
    "on_inbound_listener",
    "extra_clusters",
)


def protocol_mismatches(plugin: object) -> list[str]:
    """How ``plugin`` differs from :class:`ListenerPlugin` (empty: it conforms).

    ``isinstance`` against a runtime-checkable Protocol only looks for attribute names; this
    also compares each hook's parameters, so a hook with a missing or renamed argument is
    caught by a test instead of by a TypeError during a push.
    """
    problems = []
    if not isinstance(getattr(plugin, "name", None), str):
        problems.append("name: expected a str attribute")
    for hook in HOOKS:
        method = getattr(plugin, hook, None)
        if not callable(method):
            problems.append(f"{hook}: missing")
            continue
        want = list(inspect.signature(getattr(ListenerPlugin, hook)).parameters)[1:]
        have = list(inspect.signature(method).parameters)
        if have != want:
            problems.append(f"{hook}: parameters {have}, expected {want}")
    return problems


def _implements(plugin: object, hook: str) -> bool:
    """False when ``plugin`` inherits :class:`PluginBase`'s no-op for ``hook``."""
    return getattr(type(plugin), hook, None) is not getattr(PluginBase, hook)


class PluginSet:
    """The plugins of one Pilot, run in order; what the translators call."""

    def __init__(self, plugins: Iterable[ListenerPlugin] = ()) -> None:
        self.plugins: tuple[ListenerPlugin, ...] = tuple(plugins)
        for plugin in self.plugins:
            problems = protocol_mismatches(plugin)
            if problems:
                raise TypeError(f"listener plugin {plugin!r}: {'; '.join(problems)}")
        # Per hook, the plugins that implement it: an inherited no-op costs nothing per chain.
        self._by_hook: dict[str, tuple[ListenerPlugin, ...]] = {
            hook: tuple(p for p in self.plugins if _implements(p, hook)) for hook in HOOKS
        }

    def __bool__(self) -> bool:
        return bool(self.plugins)

    @property
    def key(self) -> tuple[tuple[str, str], ...]:
        """Every plugin's (name, version): part of the key of everything plugins shape."""
        return tuple((p.name, p.version()) for p in self.plugins)

    def _run(
        self, plugin: ListenerPlugin, hook: str, problems: list[str] | None, *args: object
    ) -> bool:
        try:
            getattr(plugin, hook)(*args)
        except Exception as exc:
            log.exception("listener plugin %s failed in %s", plugin.name, hook)
            if problems is not None:
                problem = f"listener plugin {plugin.name} failed in {hook}: {exc!r}"[:300]
                if problem not in problems:
                    problems.append(problem)
            return False
        return True

    def cluster(self, ctx: ClusterContext, cluster: cluster_pb2.Cluster) -> None:
        for plugin in self._by_hook["on_cluster"]:
            saved = cluster_pb2.Cluster()
            saved.CopyFrom(cluster)
            if not self._run(plugin, "on_cluster", None, ctx, cluster):
                cluster.CopyFrom(saved)

    def http(self, ctx: ChainContext, chain: HttpChain) -> None:
        """Run the HTTP hook of ``ctx.direction`` over ``chain``."""
        hook = {
            Direction.INBOUND: "on_inbound_http",
            Direction.OUTBOUND: "on_outbound_http",
            Direction.GATEWAY: "on_gateway_http",
        }[ctx.direction]
        for plugin in self._by_hook[hook]:
            saved = hcm.HttpConnectionManager()
            saved.CopyFrom(chain.manager)
            routes = None
            if chain.route_config is not None:
                routes = route_pb2.RouteConfiguration()
                routes.CopyFrom(chain.route_config)
            first = chain._first
            if not self._run(plugin, hook, ctx.problems, ctx, chain):
                chain.manager.CopyFrom(saved)
                if routes is not None and chain.route_config is not None:
                    chain.route_config.CopyFrom(routes)
                chain._first = first

    def tcp_filters(self, ctx: ChainContext, filters: Sequence[lc.Filter]) -> list[lc.Filter]:
        """``filters`` (one TCP chain's) after the TCP hook of ``ctx.direction``."""
        if not self.plugins:
            return list(filters)
        hook = "on_inbound_tcp" if ctx.direction is Direction.INBOUND else "on_outbound_tcp"
        built = list(filters)
        for plugin in self._by_hook[hook]:
            chain = TcpChain(built)
            if self._run(plugin, hook, ctx.problems, ctx, chain):
                built = chain.built()
        return built

    def tcp_listener(self, ctx: ChainContext, listener: listener_pb2.Listener) -> None:
        """Every filter chain of a TCP ``listener`` through the TCP hook (in place)."""
        if not self.plugins:
            return
        for chain in listener.filter_chains:
            built = self.tcp_filters(ctx, chain.filters)
            del chain.filters[:]
            chain.filters.extend(built)

    def inbound_listener(self, ctx: ChainContext, listener: listener_pb2.Listener) -> None:
        for plugin in self._by_hook["on_inbound_listener"]:
            saved = listener_pb2.Listener()
            saved.CopyFrom(listener)
            if not self._run(plugin, "on_inbound_listener", ctx.problems, ctx, listener):
                listener.CopyFrom(saved)

    def extra_clusters(self, ctx: ProxyContext, problems: list[str]) -> list[cluster_pb2.Cluster]:
        out: list[cluster_pb2.Cluster] = []
        for plugin in self._by_hook["extra_clusters"]:
            try:
                out.extend(plugin.extra_clusters(ctx))
            except Exception as exc:
                log.exception("listener plugin %s failed in extra_clusters", plugin.name)
                problem = f"listener plugin {plugin.name} failed in extra_clusters: {exc!r}"
                problems.append(problem[:300])
        return out


NO_PLUGINS = PluginSet()
