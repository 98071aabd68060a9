"""Resources built once per registry change and shared by every proxy (the snapshot cache).

Like go-control-plane's ``pkg/cache/v3``, the cache is separate from the gRPC server: the
server asks it for a proxy's :class:`ProxyView` (built by the pipeline in :mod:`pilot.views`
from the tables kept here) and only compares versions.

Promises:
- Every resource carries a version that is a hash of its serialized bytes, so an unchanged
  service never looks changed, and a restarted Pilot computes the same versions as before.
- Outbound clusters and endpoints are built once per service change and shared by all proxies;
  the outbound route table once per namespace and services generation; listeners and inbound
  clusters once per distinct proxy shape (IP, namespace, app ports), generation and plugin
  versions (:mod:`pilot.views`).
- Every service cluster goes through the listener plugins (:mod:`pilot.plugins`);
  :meth:`ConfigCache.refresh_plugins` re-translates after a plugin's config changed and reports
  only the clusters whose bytes changed.
- :meth:`ConfigCache.apply` rebuilds only the services an event names and reports exactly which
  resource names changed, so an endpoint change to one service costs one ClusterLoadAssignment.
- The shared cluster and assignment tables are :class:`pilot.table.SharedTable` s: replaced one
  service at a time, with versions combined incrementally, so nothing on the change path walks
  the whole mesh and a one-endpoint change costs the same at 1,000 or 50,000 services.
- A view is checked for consistency (every referenced cluster exists, every EDS cluster has an
  assignment) before it is served; inconsistencies are listed in ``view.problems``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

import attrs
import cachetools

from meshfed.pilot import traffic_hooks
from meshfed.pilot import xds_types as T
from meshfed.pilot.config.store import ConfigSnapshot
from meshfed.pilot.node import ProxyNode
from meshfed.pilot.plugins import ClusterContext, ListenerPlugin, PluginSet
from meshfed.pilot.resources import CacheChange, ProxyView, Resource, make_resource
from meshfed.pilot.table import SharedTable
from meshfed.pilot.translate import listeners as tl
from meshfed.pilot.translate import routes as tr
from meshfed.pilot.translate import traffic as tt
from meshfed.pilot.translate.subsets import service_port_clusters
from meshfed.pilot.views import ProxyViews
from meshfed.registry.aggregate import AggregateRegistry
from meshfed.registry.model import Endpoint, Locality, Service


class ConfigCache:
    """The shared, incrementally maintained translation of the aggregate registry."""

    def __init__(self, registry: AggregateRegistry, plugins: Sequence[ListenerPlugin] = ()) -> None:
        self.registry = registry
        self.plugins = PluginSet(plugins)
        # The plugins' versions as of the last refresh: the key of everything they shaped, so
        # listeners and clusters move to a plugin's new config together.
        self.plugins_key = self.plugins.key
        self.generation = 0
        self.services_generation = 0
        self._services: dict[str, Service] = {}
        self._endpoints: dict[str, frozenset[Endpoint]] = {}  # what each host was applied with
        # One group per service hostname (plus slots such as the egress rules').
        self._clusters = SharedTable()
        self._assignments = SharedTable()
        self._routes: cachetools.LRUCache = cachetools.LRUCache(maxsize=256)
        self._source_clusters: cachetools.LRUCache = cachetools.LRUCache(maxsize=256)
        self._own: cachetools.LRUCache = cachetools.LRUCache(maxsize=4096)  # (ip, generation)
        # Routing config: see pilot.translate.traffic and pilot.traffic_hooks.
        self.traffic = tt.TrafficIndex()
        self.config_generation = 0
        self.views = ProxyViews(self)

    # -- plugins ----------------------------------------------------------------------------
    def refresh_plugins(self) -> CacheChange | None:
        """Re-translate after a plugin's config changed (None: no plugin's version moved).

        Clusters are re-translated and diffed, so only those whose bytes changed are reported;
        listeners are keyed by the plugins' versions and rebuilt on the next view, and only
        those whose bytes changed get new versions."""
        key = self.plugins.key
        if key == self.plugins_key:
            return None
        self.plugins_key = key
        change = self.apply(set(self._services))
        return attrs.evolve(change, services_changed=True)

    # -- routing config ---------------------------------------------------------------------
    def set_config(
        self, snapshot: ConfigSnapshot, options: tt.TrafficOptions | None = None
    ) -> CacheChange:
        """Adopt a new routing-config snapshot; re-translate whatever it touches."""
        return traffic_hooks.set_config(self, snapshot, options)

    def stage_config(
        self, snapshot: ConfigSnapshot, options: tt.TrafficOptions | None = None
    ) -> CacheChange:
        """Add the clusters ``snapshot`` needs, routes unchanged (make before break)."""
        return traffic_hooks.stage_config(self, snapshot, options)

    def settle_config(self) -> CacheChange | None:
        """Remove clusters only the previous config used (after proxies have new routes)."""
        return traffic_hooks.settle(self)

    # -- building ---------------------------------------------------------------------------
    def rebuild(self) -> CacheChange:
        """Translate the whole registry (startup, or after a reconnect storm)."""
        hosts = set(self.registry.services()) | set(self._services)
        change = self.apply(hosts)
        return attrs.evolve(change, full=True)

    def apply(self, hostnames: Iterable[str]) -> CacheChange:
        """Re-translate the named services; report which resources changed."""
        services_changed = False
        endpoint_names: set[str] = set()
        cluster_names: set[str] = set()
        addresses: set[str] = set()
        # Hosts whose subset/policy clusters change because the service set changed.
        hostnames = traffic_hooks.hosts_to_apply(self, set(hostnames))
        for host in sorted(hostnames):
            service = self.registry.service(host)
            endpoints = self.registry.endpoints(host) if service is not None else ()
            old_service = self._services.get(host)
            if service != old_service:
                services_changed = True
            if service is None:
                self._services.pop(host, None)
            else:
                self._services[host] = service
            applied = frozenset(endpoints)
            previous = self._endpoints.get(host, frozenset())
            if applied != previous:
                addresses.update(e.address for e in applied ^ previous)
            if applied:
                self._endpoints[host] = applied
            else:
                self._endpoints.pop(host, None)
            new_clusters, new_assignments = self._translate(service, endpoints)
            cluster_names |= self._clusters.replace_group(host, new_clusters)
            endpoint_names |= self._assignments.replace_group(host, new_assignments)
        if services_changed:
            self.services_generation += 1
        self.generation += 1
        return CacheChange(
            self.generation,
            services_changed,
            frozenset(endpoint_names),
            frozenset(cluster_names),
            addresses=frozenset(addresses),
        )

    def _translate(
        self,
        service: Service | None,
        endpoints: tuple[Endpoint, ...],
        source: frozenset[str] = frozenset(),
        with_assignments: bool = True,
    ) -> tuple[dict[str, Resource], dict[str, Resource]]:
        if service is None:
            return {}, {}
        clusters: dict[str, Resource] = {}
        assignments: dict[str, Resource] = {}
        plugins = self.plugins
        for port in service.ports:
            # The service's cluster plus its subset clusters, with destination policies applied.
            ctx = ClusterContext(service, port, endpoints) if plugins else None
            for cluster, cla in service_port_clusters(
                service, port, endpoints, self.traffic, source, with_assignments
            ):
                if ctx is not None:
                    plugins.cluster(ctx, cluster)
                clusters[cluster.name] = make_resource(cluster.name, cluster)
                if cla is not None:
                    assignments[cluster.name] = make_resource(cluster.name, cla)
        return clusters, assignments

    def replace_cluster_group(self, key: str, table: Mapping[str, Resource]) -> set[str]:
        """Replace the clusters kept under ``key`` (a slot no hostname can take, e.g. the egress
        rules'); returns the names that changed."""
        return self._clusters.replace_group(key, table)

    def source_policy_clusters(self, source: frozenset[str]) -> dict[str, Resource]:
        """Clusters re-translated with the per-source policies that apply to a proxy (by name,
        replacing the shared ones in that proxy's view); empty for most proxies."""
        hosts = self.traffic.source_policy_hosts(source) if source else []
        if not hosts:
            return {}
        key = (self.generation, self.config_generation, source, self.plugins_key)
        found = self._source_clusters.get(key)
        if found is None:
            found = {}
            for host in hosts:
                service = self._services.get(host)
                if service is not None:
                    endpoints = self.registry.endpoints(host)
                    clusters, _ = self._translate(
                        service, endpoints, source, with_assignments=False
                    )
                    found.update(clusters)
            self._source_clusters[key] = found
        return found

    # -- reading ----------------------------------------------------------------------------
    def services(self) -> dict[str, Service]:
        return dict(self._services)

    @property
    def service_table(self) -> Mapping[str, Service]:
        """The translated services by hostname, read-only and without a copy."""
        return MappingProxyType(self._services)

    def clusters(self) -> SharedTable:
        """Every shared outbound cluster by name (live: read it within one push)."""
        return self._clusters

    def assignments(self) -> SharedTable:
        """Every shared ClusterLoadAssignment by name (live: read it within one push)."""
        return self._assignments

    def shared_digest(self, type_url: str) -> str:
        """The version of a whole shared table (clusters or assignments)."""
        return (self._clusters if type_url == T.CLUSTER else self._assignments).version

    def route(self, namespace: str, source: frozenset[str] = frozenset()) -> Resource:
        """The outbound route table for ``namespace``; ``source`` names the source-matching
        rules that apply to the asking proxy (see TrafficIndex.source_key)."""
        key = (namespace, self.services_generation, self.config_generation, source)
        found = self._routes.get(key)
        if found is None:
            config = traffic_hooks.route_config(self, namespace, source)
            found = make_resource(config.name, config)
            self._routes[key] = found
        return found

    def own_endpoints(self, ip: str) -> tuple[tuple[Service, Endpoint], ...]:
        """(service, endpoint) pairs for endpoints at ``ip``: the workload a proxy fronts.

        Asked several times per view (inbound listeners, source rules, locality) on every push,
        so it is kept per IP until the next applied change."""
        key = (ip, self.generation)
        found = self._own.get(key)
        if found is None:
            found = self._own[key] = tuple(
                (service, e)
                for service, e in self.registry.at_address(ip)
                if service.hostname in self._services
            )
        return found

    def view(self, node: ProxyNode) -> ProxyView:
        """What ``node`` should have now (:class:`pilot.views.ProxyViews`)."""
        return self.views.view(node)

    def locality_of(self, node: ProxyNode) -> Locality:
        return self.views.locality_of(node)


def check_consistency(view: ProxyView) -> list[str]:
    """Problems that would make Envoy route to something it does not have.

    Used by tests and the debug endpoints; the translators guarantee it by construction, this
    proves it on a concrete view (it unpacks every cluster, so it is not on the push path).
    """
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.listener.v3 import listener_pb2
    from envoy.config.route.v3 import route_pb2
    from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

    problems = []
    clusters = view.get(T.CLUSTER)
    assignments = view.get(T.ENDPOINT)
    for name, res in clusters.items():
        cluster = cluster_pb2.Cluster()
        res.body.Unpack(cluster)
        if cluster.type == cluster_pb2.Cluster.EDS:
            wanted = cluster.eds_cluster_config.service_name or name
            if wanted not in assignments:
                problems.append(f"EDS cluster {name} has no ClusterLoadAssignment")
    for res in view.get(T.ROUTE).values():
        config = route_pb2.RouteConfiguration()
        res.body.Unpack(config)
        for cluster in tr.referenced_clusters(config):
            if cluster not in clusters:
                problems.append(f"route {config.name} references missing cluster {cluster}")
    for res in view.get(T.LISTENER).values():
        listener = listener_pb2.Listener()
        res.body.Unpack(listener)
        for chain in listener.filter_chains:
            for filt in chain.filters:
                if filt.name == tl.TCP_PROXY_FILTER:
                    proxy = tcp_proxy_pb2.TcpProxy()
                    filt.typed_config.Unpack(proxy)
                    if proxy.cluster not in clusters:
                        problems.append(
                            f"listener {listener.name} references missing cluster {proxy.cluster}"
                        )
    return problems
