"""Resources built once per registry change and shared by every proxy (the snapshot cache).

Like go-control-plane's ``pkg/cache/v3``, the cache is separate from the gRPC server: the
server asks it for a proxy's :class:`ProxyView` and only compares versions.

Promises:
- Every resource carries a version that is a hash of its serialized bytes, so an unchanged
  service never looks changed, and a restarted Pilot computes the same versions as before.
- Outbound clusters and endpoints are built once per service change and shared by all proxies;
  the outbound route table once per namespace and services generation; listeners and inbound
  clusters once per distinct proxy shape (IP, namespace, app ports) and generation.
- :meth:`ConfigCache.apply` rebuilds only the services an event names and reports exactly which
  resource names changed, so an endpoint change to one service costs one ClusterLoadAssignment.
- A view is checked for consistency (every referenced cluster exists, every EDS cluster has an
  assignment) before it is served; inconsistencies are listed in ``view.problems``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import attrs
import cachetools
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from meshfed.pilot import sds_fallback, traffic_hooks
from meshfed.pilot import xds_types as T
from meshfed.pilot.config.store import ConfigSnapshot
from meshfed.pilot.node import ProxyNode
from meshfed.pilot.translate import listeners as tl
from meshfed.pilot.translate import routes as tr
from meshfed.pilot.translate import traffic as tt
from meshfed.pilot.translate.endpoints import prioritized
from meshfed.pilot.translate.protos import pack
from meshfed.pilot.translate.subsets import service_port_clusters
from meshfed.registry.aggregate import AggregateRegistry
from meshfed.registry.model import Endpoint, Locality, Service
from meshfed.security import mtls


@attrs.frozen(slots=True)
class Resource:
    """One serialized xDS resource and its content version."""

    name: str
    version: str
    body: any_pb2.Any


def make_resource(name: str, message: Message) -> Resource:
    body = pack(message)
    return Resource(name, hashlib.blake2b(body.value, digest_size=8).hexdigest(), body)


def digest(items: Iterable[tuple[str, str]]) -> str:
    """A version for a set of (name, version) pairs, independent of iteration order."""
    h = hashlib.blake2b(digest_size=8)
    for name, version in sorted(items):
        h.update(name.encode())
        h.update(b"\0")
        h.update(version.encode())
        h.update(b"\n")
    return h.hexdigest()


@attrs.frozen(slots=True)
class CacheChange:
    """What one :meth:`ConfigCache.apply` changed, for the server to decide what to push."""

    generation: int
    services_changed: bool  # clusters, routes or listeners may differ
    endpoint_names: frozenset[str]  # ClusterLoadAssignments that changed or were removed
    cluster_names: frozenset[str]  # outbound clusters that changed or were removed
    full: bool = False

    @property
    def endpoints_only(self) -> bool:
        return not self.full and not self.services_changed and not self.cluster_names


class ProxyView:
    """Everything one proxy should have, by type, with per-type versions computed lazily."""

    def __init__(
        self,
        resources: Mapping[str, Mapping[str, Resource]],
        problems: Iterable[str] = (),
        shared_digests: Mapping[str, str] | None = None,
    ) -> None:
        self.resources = resources
        self.problems = tuple(problems)
        self._versions: dict[str, str] = {}
        self._shared = dict(shared_digests or {})

    def get(self, type_url: str) -> Mapping[str, Resource]:
        return self.resources.get(type_url, {})

    def version(self, type_url: str) -> str:
        if type_url in self._shared:
            return self._shared[type_url]
        if type_url not in self._versions:
            self._versions[type_url] = digest(
                (name, res.version) for name, res in self.get(type_url).items()
            )
        return self._versions[type_url]

    def subset_version(self, type_url: str, names_: Iterable[str]) -> str:
        have = self.get(type_url)
        return digest((n, have[n].version) for n in names_ if n in have)


class ConfigCache:
    """The shared, incrementally maintained translation of the aggregate registry."""

    def __init__(self, registry: AggregateRegistry) -> None:
        self.registry = registry
        self.generation = 0
        self.services_generation = 0
        self._services: dict[str, Service] = {}
        self._clusters: dict[str, dict[str, Resource]] = {}
        self._assignments: dict[str, dict[str, Resource]] = {}
        self._flat_clusters: dict[str, Resource] | None = None
        self._flat_assignments: dict[str, Resource] | None = None
        self._digests: dict[str, str] = {}  # type -> version of a whole shared table
        self._routes: cachetools.LRUCache = cachetools.LRUCache(maxsize=256)
        self._proxy_parts: cachetools.LRUCache = cachetools.LRUCache(maxsize=4096)
        # Per proxy locality: assignment name -> (shared version, prioritized resource).
        self._locality_tables: cachetools.LRUCache = cachetools.LRUCache(maxsize=64)
        self._own: cachetools.LRUCache = cachetools.LRUCache(maxsize=4096)  # (ip, generation)
        # Routing config (issue 9): see pilot.translate.traffic and pilot.traffic_hooks.
        self.traffic = tt.TrafficIndex()
        self.config_generation = 0
        self.mtls_policy = mtls.Policy(mtls.Mode.OFF)

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
            new_clusters, new_assignments = self._translate(service, endpoints)
            cluster_names |= _changed(self._clusters.get(host, {}), new_clusters)
            endpoint_names |= _changed(self._assignments.get(host, {}), new_assignments)
            self._store(self._clusters, host, new_clusters)
            self._store(self._assignments, host, new_assignments)
        if cluster_names:
            self._flat_clusters = None
            self._digests.pop(T.CLUSTER, None)
        if endpoint_names:
            self._flat_assignments = None
            self._digests.pop(T.ENDPOINT, None)
        if services_changed:
            self.services_generation += 1
        self.generation += 1
        return CacheChange(
            self.generation,
            services_changed,
            frozenset(endpoint_names),
            frozenset(cluster_names),
        )

    @staticmethod
    def _store(table: dict[str, dict[str, Resource]], host: str, value: dict) -> None:
        if value:
            table[host] = value
        else:
            table.pop(host, None)

    def _translate(
        self, service: Service | None, endpoints: tuple[Endpoint, ...]
    ) -> tuple[dict[str, Resource], dict[str, Resource]]:
        if service is None:
            return {}, {}
        clusters: dict[str, Resource] = {}
        assignments: dict[str, Resource] = {}
        for port in service.ports:
            # The service's cluster plus its subset clusters, with destination policies applied.
            for cluster, cla in service_port_clusters(service, port, endpoints, self.traffic):
                mtls.apply_outbound_mtls(cluster, service, endpoints, self.mtls_policy)
                clusters[cluster.name] = make_resource(cluster.name, cluster)
                if cla is not None:
                    assignments[cluster.name] = make_resource(cluster.name, cla)
        return clusters, assignments

    # -- reading ----------------------------------------------------------------------------
    def services(self) -> dict[str, Service]:
        return dict(self._services)

    def clusters(self) -> dict[str, Resource]:
        if self._flat_clusters is None:
            self._flat_clusters = {n: r for t in self._clusters.values() for n, r in t.items()}
        return self._flat_clusters

    def assignments(self) -> dict[str, Resource]:
        if self._flat_assignments is None:
            self._flat_assignments = {
                n: r for t in self._assignments.values() for n, r in t.items()
            }
        return self._flat_assignments

    def shared_digest(self, type_url: str) -> str:
        """The version of a whole shared table (clusters or assignments), once per change."""
        found = self._digests.get(type_url)
        if found is None:
            table = self.clusters() if type_url == T.CLUSTER else self.assignments()
            found = self._digests[type_url] = digest((n, r.version) for n, r in table.items())
        return found

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

    def _proxy_part(
        self, node: ProxyNode
    ) -> tuple[dict[str, Resource], dict[str, Resource], tuple[str, ...]]:
        own = self.own_endpoints(node.ip) if node.app_ports else ()
        source = traffic_hooks.source_key(self, node)
        key = (node.view_key, self.services_generation, self.config_generation, own, source)
        found = self._proxy_parts.get(key)
        if found is not None:
            return found
        problems: list[str] = list(node.problems)
        listeners: dict[str, Resource] = {}
        inbound_clusters: dict[str, Resource] = {}
        if not node.ip:
            problems.append("proxy has no IP (node metadata IP or id sidecar~IP~...): no listeners")
        else:
            http = traffic_hooks.outbound_http_listener(self, node)
            listeners[http.name] = make_resource(http.name, http)
            tcp, tcp_problems = tl.outbound_tcp_listeners(node, self._services.values())
            tcp = traffic_hooks.tcp_rules(self, tcp, source)
            problems.extend(tcp_problems)
            egress, egress_problems = traffic_hooks.egress_listeners(self, node, tcp)
            problems.extend(egress_problems)
            for listener in [*tcp, *egress]:
                listeners[listener.name] = make_resource(listener.name, listener)
            in_listeners, in_clusters = tl.inbound(node, own)
            inbound_mode = mtls.inbound_mode_for(self.mtls_policy, own)
            if inbound_mode is not mtls.Mode.OFF and not node.sds:
                # Envoy would refuse a listener naming secrets it cannot fetch.
                inbound_mode = mtls.Mode.OFF
                problems.append(sds_fallback.inbound_problem(node))
            for listener in in_listeners:
                mtls.apply_inbound_mtls(listener, inbound_mode)
                listeners[listener.name] = make_resource(listener.name, listener)
            for cluster in in_clusters:
                inbound_clusters[cluster.name] = make_resource(cluster.name, cluster)
            if node.app_ports and not in_listeners:
                problems.append(
                    f"APP_PORTS set but no registry endpoint at {node.ip} uses those ports"
                )
        found = (listeners, inbound_clusters, tuple(problems))
        self._proxy_parts[key] = found
        return found

    def view(self, node: ProxyNode) -> ProxyView:
        """What ``node`` should have now."""
        if traffic_hooks.is_gateway(node):
            view = traffic_hooks.gateway_view(self, node)
        else:
            view = self._sidecar_view(node)
        locality = self.locality_of(node)
        if locality.region:
            view = self._with_locality(view, locality)
        return view if node.sds else self._without_sds(node, view)

    def locality_of(self, node: ProxyNode) -> Locality:
        """Where ``node`` runs: its own ``node.locality``, else the one locality every registry
        endpoint at its IP agrees on (a VM registered in Consul is in its datacenter)."""
        if node.locality.region:
            return node.locality
        found = {e.locality for _, e in self.own_endpoints(node.ip)} if node.ip else set()
        return found.pop() if len(found) == 1 else Locality()

    def _with_locality(self, view: ProxyView, locality: Locality) -> ProxyView:
        """``view`` whose assignments prefer ``locality`` (:func:`endpoints.prioritized`); one
        table per locality and assignments version, shared by every proxy there."""
        shared = self.shared_digest(T.ENDPOINT)
        key = ("eds", locality, shared)
        found = self._proxy_parts.get(key)
        if found is None:
            # Reuse what did not change since this locality's last table: only new or changed
            # assignments are unpacked and re-prioritized.
            previous = self._locality_tables.get(locality, {})
            table: dict[str, tuple[str, Resource]] = {}
            for name, res in self.assignments().items():
                before = previous.get(name)
                if before is None or before[0] != res.version:
                    cla = endpoint_pb2.ClusterLoadAssignment()
                    res.body.Unpack(cla)
                    before = (res.version, make_resource(name, prioritized(cla, locality)))
                table[name] = before
            self._locality_tables[locality] = table
            found = (
                {n: r for n, (_, r) in table.items()},
                digest([("", shared), ("locality", str(locality))]),
            )
            self._proxy_parts[key] = found
        assignments, version = found
        return ProxyView(
            {**view.resources, T.ENDPOINT: assignments},
            view.problems,
            shared_digests={T.CLUSTER: view.version(T.CLUSTER), T.ENDPOINT: version},
        )

    def _without_sds(self, node: ProxyNode, view: ProxyView) -> ProxyView:
        """``view`` with plain copies of its mesh-mTLS clusters (:mod:`pilot.sds_fallback`)."""
        cds_version = view.version(T.CLUSTER)
        key = ("no-sds", cds_version)
        found = self._proxy_parts.get(key)
        if found is None:
            stripped, problems = sds_fallback.plain_clusters(node, view.get(T.CLUSTER))
            found = ({n: make_resource(n, c) for n, c in stripped.items()}, tuple(problems))
            self._proxy_parts[key] = found
        overrides, problems = found
        if not overrides:
            return view
        clusters = {**view.get(T.CLUSTER), **overrides}
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

    def _sidecar_view(self, node: ProxyNode) -> ProxyView:
        listeners, inbound_clusters, problems = self._proxy_part(node)
        source = traffic_hooks.source_key(self, node)
        # Per-source DestinationPolicy: this proxy's own versions of some outbound clusters.
        overrides = traffic_hooks.source_policy_clusters(self, source)
        if overrides:
            inbound_clusters = {**inbound_clusters, **overrides}
        shared = self.clusters()
        all_clusters = {**shared, **inbound_clusters} if inbound_clusters else shared
        route = self.route(node.namespace, source)
        cds_version = self.shared_digest(T.CLUSTER)
        if inbound_clusters:
            cds_version = digest(
                [("", cds_version), *((n, r.version) for n, r in inbound_clusters.items())]
            )
        return ProxyView(
            {
                T.CLUSTER: all_clusters,
                T.ENDPOINT: self.assignments(),
                T.LISTENER: listeners,
                T.ROUTE: {route.name: route},
            },
            problems,
            shared_digests={T.CLUSTER: cds_version, T.ENDPOINT: self.shared_digest(T.ENDPOINT)},
        )


def _changed(old: Mapping[str, Resource], new: Mapping[str, Resource]) -> set[str]:
    names_ = set(old) | set(new)
    return {n for n in names_ if (old.get(n) and old[n].version) != (new.get(n) and new[n].version)}


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
