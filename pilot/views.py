"""One proxy's view of the mesh, built in one pipeline from the shared cache.

The order is fixed and each step is a function of the previous step's output and the node:

1. **base**: a sidecar's listeners (outbound HTTP, outbound TCP shaped by route rules, egress,
   inbound), its outbound route table and per-proxy clusters; or a gateway's listeners and
   routes. Both share the cache's cluster and endpoint tables, and every chain goes through the
   listener plugins (:mod:`pilot.plugins`);
2. **interception**: ``INTERCEPTION_MODE=REDIRECT`` turns explicit listeners into the
   ``virtualOutbound`` / ``virtualInbound`` layout (:mod:`pilot.translate.interception`);
3. **locality**: assignments prioritized for where the proxy runs
   (:func:`pilot.translate.endpoints.prioritized`);
4. **secrets**: a proxy without a node agent's secrets gets plain copies of the clusters that
   name them (:mod:`pilot.sds_fallback`); a proxy with them gets copies of the clusters and
   listeners whose mesh TLS names them, pointed at its own secret files
   (:func:`security.mtls.use_secret_files`).

Promises:
- Each step's output is kept under a key made of what it depends on (the proxy shape, the
  cache's generations, the plugins' versions, the previous step's versions), so equal proxies
  share one build and a proxy whose inputs did not change costs a few dictionary look-ups.
- Versions are computed per step from the previous step's versions (never by re-hashing a
  shared table), so a view's versions move exactly when its bytes do.
- No step copies or walks a shared table on a push: per-proxy resources are laid over the
  shared ones (:class:`pilot.table.Layered`, the proxy's own first), and the locality step
  keeps one :class:`pilot.table.DerivedTable` per locality that re-prioritizes only the
  assignments changed since it was last read. Endpoints pass through every cached step
  unchanged, so a cached step never hands out an older endpoint table.
- This module reads the cache through :class:`SharedConfig` only; it never writes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import cachetools
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshfed.pilot import sds_fallback, traffic_hooks
from meshfed.pilot import xds_types as T
from meshfed.pilot.config import sidecar as sidecar_config
from meshfed.pilot.node import ProxyNode
from meshfed.pilot.plugins import ChainContext, Direction, PluginSet, ProxyContext
from meshfed.pilot.resources import ProxyView, Resource, digest, make_resource
from meshfed.pilot.table import DerivedTable, Layered, SharedTable
from meshfed.pilot.translate import gateway, interception, names
from meshfed.pilot.translate import listeners as tl
from meshfed.pilot.translate.endpoints import prioritized
from meshfed.pilot.translate.traffic import TrafficIndex
from meshfed.registry.model import Endpoint, Locality, Service
from meshfed.security import mtls

Own = tuple[tuple[Service, Endpoint], ...]
Table = dict[str, Resource]
Clusters = Mapping[str, Resource]
SidecarPart = tuple[Table, Table, tuple[str, ...]]  # listeners, per-proxy clusters, problems
GatewayPart = tuple[Table, Table, Table, tuple[str, ...]]  # listeners, routes, clusters, problems


class SharedConfig(traffic_hooks.TrafficCache, Protocol):
    """What the pipeline reads from the shared cache (:class:`pilot.cache.ConfigCache`)."""

    generation: int
    services_generation: int
    plugins: PluginSet
    plugins_key: tuple[tuple[str, str], ...]  # the plugins' versions as of the last refresh

    def clusters(self) -> Mapping[str, Resource]: ...

    def assignments(self) -> SharedTable: ...

    def shared_digest(self, type_url: str) -> str: ...

    def route(self, namespace: str, source: frozenset[str] = frozenset()) -> Resource: ...

    def source_policy_clusters(self, source: frozenset[str]) -> Mapping[str, Resource]: ...


class ProxyViews:
    """The pipeline and the per-step tables it keeps (bounded, least recently used first)."""

    def __init__(self, shared: SharedConfig) -> None:
        self.shared = shared
        # Every step's builds, by a key that starts with what the step is.
        self._parts: cachetools.LRUCache[tuple[object, ...], Any] = cachetools.LRUCache(4096)
        # Per proxy locality: the shared assignments prioritized for it, kept up to date.
        self._locality_tables: cachetools.LRUCache[Locality, DerivedTable] = cachetools.LRUCache(
            maxsize=64
        )
        # Interception: (clusters, cluster version, listeners, problems) per listener and
        # cluster version; endpoints are not part of it (they pass through).
        self._redirect: cachetools.LRUCache[
            tuple[object, ...], tuple[Clusters, str, Table, tuple[str, ...]]
        ] = cachetools.LRUCache(maxsize=1024)

    def view(self, node: ProxyNode) -> ProxyView:
        """What ``node`` should have now."""
        if gateway.is_gateway(node):
            view = self._gateway(node)
        else:
            view = self._sidecar(node)
            scope = self.scope_of(node)
            if scope is not None:
                view = self._scoped(view, scope)
        if node.interception == interception.REDIRECT:
            view = self._redirect_view(node, view)
        locality = self.locality_of(node)
        if locality.region:
            view = self._with_locality(view, locality)
        if not node.sds:
            return self._without_sds(node, view)
        # (A node built in code may say ``sds`` without a directory: it gets the shared form.)
        return self._with_secret_files(node.secrets_dir, view) if node.secrets_dir else view

    def locality_of(self, node: ProxyNode) -> Locality:
        """Where ``node`` runs: its own ``node.locality``, else the one locality every registry
        endpoint at its IP agrees on (a VM registered in Consul is in its datacenter)."""
        if node.locality.region:
            return node.locality
        found = {e.locality for _, e in self.shared.own_endpoints(node.ip)} if node.ip else set()
        return found.pop() if len(found) == 1 else Locality()

    # -- 1. base ----------------------------------------------------------------------------
    def _extra_clusters(
        self, node: ProxyNode, own: Own, is_gateway: bool, problems: list[str]
    ) -> dict[str, Resource]:
        plugins = self.shared.plugins
        if not plugins:
            return {}
        extra = plugins.extra_clusters(ProxyContext(node, own, is_gateway), problems)
        return {c.name: make_resource(c.name, c) for c in extra}

    def _sidecar_part(self, node: ProxyNode) -> SidecarPart:
        shared = self.shared
        own = shared.own_endpoints(node.ip) if node.app_ports else ()
        source = traffic_hooks.source_key(shared, node)
        plugins = shared.plugins
        key = (
            "sidecar",
            node.view_key,
            shared.services_generation,
            shared.config_generation,
            own,
            source,
            shared.plugins_key,
        )
        found: SidecarPart | None = self._parts.get(key)
        if found is not None:
            return found
        problems: list[str] = list(node.problems)
        listeners: dict[str, Resource] = {}
        proxy_clusters: dict[str, Resource] = {}
        if not node.ip:
            problems.append("proxy has no IP (node metadata IP or id sidecar~IP~...): no listeners")
        else:
            http = traffic_hooks.outbound_http_listener(shared, node, problems, own)
            listeners[http.name] = make_resource(http.name, http)
            tcp, tcp_problems = tl.outbound_tcp_listeners(node, shared.service_table.values())
            tcp = traffic_hooks.tcp_rules(shared, tcp, source)
            problems.extend(tcp_problems)
            egress, egress_problems = traffic_hooks.egress_listeners(shared, node, tcp)
            problems.extend(egress_problems)
            for listener in [*tcp, *egress]:
                if plugins:
                    self._outbound_tcp_plugins(node, own, listener, problems)
                listeners[listener.name] = make_resource(listener.name, listener)
            in_listeners, in_clusters = tl.inbound(node, own, plugins, problems)
            for listener in in_listeners:
                listeners[listener.name] = make_resource(listener.name, listener)
            for cluster in in_clusters:
                proxy_clusters[cluster.name] = make_resource(cluster.name, cluster)
            if node.app_ports and not in_listeners:
                problems.append(
                    f"APP_PORTS set but no registry endpoint at {node.ip} uses those ports"
                )
        proxy_clusters.update(self._extra_clusters(node, own, False, problems))
        found = (listeners, proxy_clusters, tuple(problems))
        self._parts[key] = found
        return found

    def _outbound_tcp_plugins(
        self, node: ProxyNode, own: Own, listener: listener_pb2.Listener, problems: list[str]
    ) -> None:
        port = listener.address.socket_address.port_value
        host = ""
        for chain in listener.filter_chains[:1]:
            cluster = _tcp_proxy_cluster(chain.filters)
            parsed = names.parse_outbound_cluster(cluster) if cluster else None
            host = parsed[0] if parsed else ""
        service = self.shared.service_table.get(host) if host else None
        service_port = service.port_by_number(port) if service is not None else None
        ctx = ChainContext(
            node,
            Direction.OUTBOUND,
            port,
            service_port.protocol if service_port is not None else None,
            (service,) if service is not None else (),
            host=host,
            own=own,
        )
        self.shared.plugins.tcp_listener(ctx, listener)
        problems.extend(p for p in ctx.problems if p not in problems)

    def _sidecar(self, node: ProxyNode) -> ProxyView:
        shared = self.shared
        listeners, proxy_clusters, problems = self._sidecar_part(node)
        source = traffic_hooks.source_key(shared, node)
        # Per-source DestinationPolicy: this proxy's own versions of some outbound clusters.
        overrides = shared.source_policy_clusters(source) if source else {}
        if overrides:
            proxy_clusters = {**proxy_clusters, **overrides}
        clusters = shared.clusters()
        all_clusters = Layered(proxy_clusters, clusters) if proxy_clusters else clusters
        route = shared.route(node.namespace, source)
        cds_version = shared.shared_digest(T.CLUSTER)
        if proxy_clusters:
            cds_version = digest(
                [("", cds_version), *((n, r.version) for n, r in proxy_clusters.items())]
            )
        return ProxyView(
            {
                T.CLUSTER: all_clusters,
                T.ENDPOINT: shared.assignments(),
                T.LISTENER: listeners,
                T.ROUTE: {route.name: route},
            },
            problems,
            shared_digests={T.CLUSTER: cds_version, T.ENDPOINT: shared.shared_digest(T.ENDPOINT)},
        )

    def _gateway(self, node: ProxyNode) -> ProxyView:
        shared = self.shared
        plugins = shared.plugins
        key = (
            "gateway",
            node.view_key,
            shared.services_generation,
            shared.config_generation,
            shared.plugins_key,
        )
        found: GatewayPart | None = self._parts.get(key)
        if found is None:
            index: TrafficIndex = shared.traffic
            listeners, routes, problems = gateway.gateway_resources(node, index, plugins)
            all_problems = [*node.problems, *problems]
            extra = self._extra_clusters(node, (), True, all_problems)
            found = (
                {lst.name: make_resource(lst.name, lst) for lst in listeners},
                {r.name: make_resource(r.name, r) for r in routes},
                extra,
                tuple(all_problems),
            )
            self._parts[key] = found
        listener_table, route_table, extra, gateway_problems = found
        # Mutual TLS applies to a gateway's clusters exactly as to a sidecar's (shared clusters).
        clusters: Clusters = shared.clusters()
        cds_version = shared.shared_digest(T.CLUSTER)
        if extra:
            clusters = Layered(extra, clusters)
            cds_version = digest([("", cds_version), *((n, r.version) for n, r in extra.items())])
        return ProxyView(
            {
                T.CLUSTER: clusters,
                T.ENDPOINT: shared.assignments(),
                T.LISTENER: listener_table,
                T.ROUTE: route_table,
            },
            gateway_problems,
            shared_digests={T.CLUSTER: cds_version, T.ENDPOINT: shared.shared_digest(T.ENDPOINT)},
        )

    # -- 2. interception --------------------------------------------------------------------
    def _redirect_view(self, node: ProxyNode, view: ProxyView) -> ProxyView:
        """The same config with interception listeners (built once per listener version)."""
        key = (node.view_key, view.version(T.LISTENER), view.version(T.CLUSTER))
        found = self._redirect.get(key)
        if found is None:
            explicit = {}
            for name, res in view.get(T.LISTENER).items():
                listener = listener_pb2.Listener()
                res.body.Unpack(listener)
                explicit[name] = listener
            built, problems = interception.redirect_listeners(
                node, explicit, self.shared.service_table.values()
            )
            blackhole = make_resource(interception.BLACKHOLE, interception.blackhole_cluster())
            found = (
                Layered({blackhole.name: blackhole}, view.get(T.CLUSTER)),
                digest([("", view.version(T.CLUSTER)), (blackhole.name, blackhole.version)]),
                {lst.name: make_resource(lst.name, lst) for lst in built},
                (*view.problems, *problems),
            )
            self._redirect[key] = found
        clusters, cds_version, listeners, all_problems = found
        return ProxyView(
            {
                T.CLUSTER: clusters,
                T.ENDPOINT: view.get(T.ENDPOINT),
                T.LISTENER: listeners,
                T.ROUTE: view.get(T.ROUTE),
            },
            all_problems,
            shared_digests={T.CLUSTER: cds_version, T.ENDPOINT: view.version(T.ENDPOINT)},
        )

    # -- 1b. Sidecar scope -------------------------------------------------------------------
    def scope_of(self, node: ProxyNode) -> sidecar_config.Sidecar | None:
        """The Sidecar resource that limits what ``node`` receives (None: the whole mesh)."""
        sidecars = self.shared.traffic.snapshot.sidecars
        if not sidecars:
            return None
        own = self.shared.own_endpoints(node.ip) if node.ip else ()
        return sidecar_config.for_proxy(sidecars, node.namespace, [e.labels for _, e in own])

    def _admits(self, scope: sidecar_config.Sidecar, cluster: str) -> bool:
        parsed = names.parse_outbound_cluster(cluster)
        if parsed is None:
            return True  # inbound, static and plugin clusters are the proxy's own
        service = self.shared.service_table.get(parsed[0])
        return service is None or scope.admits(service)

    def _scoped(self, view: ProxyView, scope: sidecar_config.Sidecar) -> ProxyView:
        """``view`` without the clusters, outbound listeners and virtual hosts of services
        outside ``scope``; each part kept per (scope, input version)."""
        cds_version = view.version(T.CLUSTER)
        key: tuple[object, ...] = ("scope-cds", scope.key, cds_version)
        clusters: Table | None = self._parts.get(key)
        if clusters is None:
            clusters = {n: r for n, r in view.get(T.CLUSTER).items() if self._admits(scope, n)}
            self._parts[key] = clusters
        key = ("scope-lds", scope.key, view.version(T.LISTENER), cds_version)
        listeners: Table | None = self._parts.get(key)
        if listeners is None:
            listeners = {}
            for name, res in view.get(T.LISTENER).items():
                listener = listener_pb2.Listener()
                res.body.Unpack(listener)
                chains = listener.filter_chains[:1]
                target = _tcp_proxy_cluster(chains[0].filters) if chains else ""
                if not target or self._admits(scope, target):
                    listeners[name] = res
            self._parts[key] = listeners
        routes: Table = {}
        for name, res in view.get(T.ROUTE).items():
            key = ("scope-rds", scope.key, res.version)
            found: Resource | None = self._parts.get(key)
            if found is None:
                config = route_pb2.RouteConfiguration()
                res.body.Unpack(config)
                kept = [
                    vh
                    for vh in config.virtual_hosts
                    if self._admits_host(scope, vh.name.rpartition(":")[0] or vh.name)
                ]
                del config.virtual_hosts[:]
                config.virtual_hosts.extend(kept)
                found = self._parts[key] = make_resource(name, config)
            routes[name] = found
        return ProxyView(
            {**view.resources, T.CLUSTER: clusters, T.LISTENER: listeners, T.ROUTE: routes},
            view.problems,
            shared_digests={
                T.CLUSTER: digest([("", cds_version), ("scope", scope.key)]),
                T.ENDPOINT: view.version(T.ENDPOINT),
            },
        )

    def _admits_host(self, scope: sidecar_config.Sidecar, host: str) -> bool:
        service = self.shared.service_table.get(host)
        return service is None or scope.admits(service)

    # -- 3. locality ------------------------------------------------------------------------
    def _with_locality(self, view: ProxyView, locality: Locality) -> ProxyView:
        """``view`` whose assignments prefer ``locality`` (:func:`endpoints.prioritized`); one
        table per locality, shared by every proxy there, re-prioritizing only the assignments
        that changed since it was last read."""
        table = self._locality_tables.get(locality)
        if table is None:

            def derive(res: Resource) -> Resource:
                cla = endpoint_pb2.ClusterLoadAssignment()
                res.body.Unpack(cla)
                return make_resource(res.name, prioritized(cla, locality))

            table = self._locality_tables[locality] = DerivedTable(
                self.shared.assignments(), derive
            )
        version = digest([("", self.shared.shared_digest(T.ENDPOINT)), ("locality", str(locality))])
        return ProxyView(
            {**view.resources, T.ENDPOINT: table.refresh()},
            view.problems,
            shared_digests={T.CLUSTER: view.version(T.CLUSTER), T.ENDPOINT: version},
        )

    # -- 4. secrets -------------------------------------------------------------------------
    def _with_secret_files(self, directory: str, view: ProxyView) -> ProxyView:
        """``view`` with the mesh secrets its clusters and listeners name pointed at the
        files in ``directory``. Which resources name the agent's SDS cluster is found once per
        table version for every proxy (a byte search); each of those is copied once per
        directory and resource version, so a push costs a look-up per mesh-TLS resource."""
        resources = dict(view.resources)
        digests: dict[str, str] = {}
        for type_url in (T.CLUSTER, T.LISTENER):
            version = view.version(type_url)
            overrides: Table = {}
            for name, resource in self._naming_sds(type_url, version, view).items():
                key = ("secret-files", type_url, directory, name, resource.version)
                copy: Resource | None = self._parts.get(key)
                if copy is None:
                    copy = _pointed_at_files(type_url, name, resource, directory)
                    self._parts[key] = copy
                overrides[name] = copy
            if overrides:
                resources[type_url] = Layered(overrides, view.get(type_url))
                version = digest([("", version), *((n, r.version) for n, r in overrides.items())])
            digests[type_url] = version
        if all(resources[t] is view.resources.get(t) for t in resources):
            return view
        return ProxyView(
            resources,
            view.problems,
            shared_digests={**digests, T.ENDPOINT: view.version(T.ENDPOINT)},
        )

    def _naming_sds(self, type_url: str, version: str, view: ProxyView) -> Mapping[str, Resource]:
        key = ("naming-sds", type_url, version)
        found: dict[str, Resource] | None = self._parts.get(key)
        if found is None:
            marker = mtls.SDS_CLUSTER.encode()
            found = {n: r for n, r in view.get(type_url).items() if marker in r.body.value}
            self._parts[key] = found
        return found

    def _without_sds(self, node: ProxyNode, view: ProxyView) -> ProxyView:
        """``view`` with plain copies of its mesh-mTLS clusters (:mod:`pilot.sds_fallback`)."""
        cds_version = view.version(T.CLUSTER)
        key = ("no-sds", cds_version)
        found: tuple[Table, tuple[str, ...]] | None = self._parts.get(key)
        if found is None:
            stripped, stripped_problems = sds_fallback.plain_clusters(node, view.get(T.CLUSTER))
            plain = {n: make_resource(n, c) for n, c in stripped.items()}
            found = (plain, tuple(stripped_problems))
            self._parts[key] = found
        overrides, problems = found
        if not overrides:
            return view
        clusters = Layered(overrides, view.get(T.CLUSTER))
        return ProxyView(
            {**view.resources, T.CLUSTER: clusters},
            (*view.problems, *problems),
            shared_digests={
                T.CLUSTER: digest(
                    [("", cds_version), *((n, r.version) for n, r in overrides.items())]
                ),
                T.ENDPOINT: view.version(T.ENDPOINT),
            },
        )


def _pointed_at_files(type_url: str, name: str, resource: Resource, directory: str) -> Resource:
    message: cluster_pb2.Cluster | listener_pb2.Listener = (
        cluster_pb2.Cluster() if type_url == T.CLUSTER else listener_pb2.Listener()
    )
    resource.body.Unpack(message)
    mtls.use_secret_files(message, directory)
    return make_resource(name, message)


def _tcp_proxy_cluster(filters: Iterable[lc.Filter]) -> str:
    for filt in filters:
        if filt.name == tl.TCP_PROXY_FILTER:
            proxy = tcp_proxy_pb2.TcpProxy()
            filt.typed_config.Unpack(proxy)
            if proxy.cluster:
                return str(proxy.cluster)
            if proxy.weighted_clusters.clusters:
                return str(proxy.weighted_clusters.clusters[0].name)
    return ""
