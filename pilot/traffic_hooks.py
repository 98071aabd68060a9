"""Where routing config enters the shared cache: the few calls :mod:`pilot.cache` makes.

The cache owns versions, sharing and incremental rebuilds; this module owns everything that
route rules, destination policies, egress rules and gateways add to it, so the cache's own code
changes by a handful of lines and the traffic features can be read in one place.

Promises:
- A new config snapshot re-translates only the services whose subsets or policies changed,
  through the normal diffing path (:meth:`ConfigCache.apply`), so unchanged clusters keep
  their versions and are not re-sent; routes and listeners are rebuilt (new generation).
- Make before break (no 503 window while rules change, the seed's known issue): a config
  change is applied in three steps. :func:`stage_config` adds the clusters the new rules need
  (subsets, egress) while routes stay as they were; once proxies have them (the server waits
  for their CDS/EDS ACKs), :func:`set_config` switches the routes, and once proxies have ACKed
  those, :func:`settle` removes the clusters only the previous config used. No route a proxy
  may still hold ever points to a cluster it does not have.
- A registry change that makes a rule resolve differently (a service appears or disappears)
  also re-translates the services whose subset/policy clusters that changes.
- Egress clusters live in the cache's cluster table under a key no hostname can take, so they
  are diffed, versioned and shared exactly like service clusters.
- Gateways (node id ``router~...``) get the gateway listeners and routes instead of a
  sidecar's, plus the shared clusters (mesh mutual TLS included) and endpoints; a gateway
  without SDS gets plain copies of the mutual-TLS clusters and a problem saying so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import attrs
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2

from meshfed.pilot import xds_types as T
from meshfed.pilot.config.store import ConfigSnapshot
from meshfed.pilot.node import ProxyNode
from meshfed.pilot.translate import egress, gateway, rules
from meshfed.pilot.translate import listeners as tl
from meshfed.pilot.translate import routes as tr
from meshfed.pilot.translate import tcp_rules as tcp_rules_mod
from meshfed.pilot.translate.subsets import service_port_clusters
from meshfed.pilot.translate.traffic import TrafficIndex, TrafficOptions
from meshfed.security import mtls

if TYPE_CHECKING:
    from meshfed.pilot.cache import CacheChange, ConfigCache, ProxyView, Resource

EGRESS_KEY = "\0egress"  # not a hostname: the egress rules' slot in the cluster table


def _next_index(
    cache: ConfigCache, snapshot: ConfigSnapshot, options: TrafficOptions | None
) -> TrafficIndex:
    current = cache.traffic
    if snapshot == current.snapshot:
        extra, extra_egress = current.extra_subsets, current.extra_egress
    else:
        extra, extra_egress = current.referenced, current.snapshot.egress_rules
    return TrafficIndex.build(
        snapshot,
        cache._services.values(),
        options or current.options,
        extra_subsets=extra,
        extra_egress=extra_egress,
    )


def stage_config(
    cache: ConfigCache, snapshot: ConfigSnapshot, options: TrafficOptions | None
) -> CacheChange:
    """Step one of a config change: the new config's clusters, the old config's routes."""
    new = _next_index(cache, snapshot, options)
    current = cache.traffic
    cache.traffic = attrs.evolve(
        current,
        subsets=new.subsets,
        policies=new.policies,
        options=new.options,
        extra_subsets=new.extra_subsets,
        extra_egress=(*current.extra_egress, *snapshot.egress_rules),
    )
    return _retranslate(cache, current)


def set_config(
    cache: ConfigCache, snapshot: ConfigSnapshot, options: TrafficOptions | None
) -> CacheChange:
    """Step two (or the only step, for a cache no proxy reads yet): routes follow the config."""
    old = cache.traffic
    if snapshot != old.snapshot:
        cache.traffic = _next_index(cache, snapshot, options)
    elif options is not None and options != old.options:
        cache.traffic = attrs.evolve(old, options=options)  # egress DNS, gateway certificates
    cache.config_generation += 1
    return _retranslate(cache, old)


def settle(cache: ConfigCache) -> CacheChange | None:
    """Step three: drop clusters kept only for the previous config (None: nothing kept)."""
    current = cache.traffic
    if not current.extra_subsets and not current.extra_egress:
        return None
    cache.traffic = attrs.evolve(current, extra_subsets={}, extra_egress=()).rebuilt(
        cache._services.values()
    )
    return _retranslate(cache, current)


def _retranslate(cache: ConfigCache, old: TrafficIndex) -> CacheChange:
    """Re-translate only the services whose config-derived clusters differ from ``old``'s
    (subsets, policies): a rule edit for one service costs that service, not the mesh."""
    egress_changed = _update_egress(cache)
    new = cache.traffic
    touched = set(old.subsets) | set(old.policies) | set(new.subsets) | set(new.policies)
    hosts = {h for h in touched if old.cluster_signature(h) != new.cluster_signature(h)}
    change = cache.apply(hosts & set(cache._services))
    names_ = set(change.cluster_names) | egress_changed
    return attrs.evolve(change, services_changed=True, cluster_names=frozenset(names_))


def merge(first: CacheChange, second: CacheChange) -> CacheChange:
    """One change covering two consecutive ones (a registry batch, then a config snapshot)."""
    return attrs.evolve(
        second,
        services_changed=first.services_changed or second.services_changed,
        endpoint_names=first.endpoint_names | second.endpoint_names,
        cluster_names=first.cluster_names | second.cluster_names,
        full=first.full or second.full,
    )


def _update_egress(cache: ConfigCache, services: Mapping[str, object] | None = None) -> set[str]:
    """Re-translate the egress clusters; ``services`` (default: the cache's) shadow rules."""
    from meshfed.pilot.cache import _changed, make_resource

    index = cache.traffic
    rules_ = [*index.snapshot.egress_rules, *index.extra_egress]
    internal = cache._services if services is None else services
    new = {
        c.name: make_resource(c.name, c)
        for c in egress.egress_clusters(rules_, internal, index.options)
    }
    changed = _changed(cache._clusters.get(EGRESS_KEY, {}), new)
    if changed:
        cache._store(cache._clusters, EGRESS_KEY, new)
        cache._flat_clusters = None
        cache._digests.pop(T.CLUSTER, None)
    return changed


def hosts_to_apply(cache: ConfigCache, hosts: set[str]) -> set[str]:
    """``hosts`` plus the hosts whose config-derived clusters change with this batch."""
    registry = cache.registry
    if all(registry.service(h) == cache._services.get(h) for h in hosts):
        return hosts
    services = dict(cache._services)
    for host in hosts:
        service = registry.service(host)
        if service is None:
            services.pop(host, None)
        else:
            services[host] = service
    old = cache.traffic
    new = old.rebuilt(services.values())
    cache.traffic = new
    touched = set(old.subsets) | set(old.policies) | set(new.subsets) | set(new.policies)
    extra = {h for h in touched if old.cluster_signature(h) != new.cluster_signature(h)}
    if old.snapshot.egress_rules or old.extra_egress:
        # A registry service with an egress rule's name shadows the rule (and releases it).
        _update_egress(cache, services)
    return hosts | extra


def route_config(
    cache: ConfigCache, namespace: str, source: frozenset[str]
) -> route_pb2.RouteConfiguration:
    index = cache.traffic
    applies = rules.source_filter(source)
    return tr.outbound_route_config(
        cache._services.values(),
        namespace,
        routes_for=lambda svc, port, default: rules.service_routes(
            svc, port, default, index, applies
        ),
        extra_vhosts=egress.egress_virtual_hosts(index.snapshot.egress_rules, cache._services),
    )


def tcp_rules(
    cache: ConfigCache, listeners: Sequence[listener_pb2.Listener], source: frozenset[str]
) -> list[listener_pb2.Listener]:
    """Outbound TCP listeners with TCP route rules (subsets, subnets) and protocol filters
    (Mongo) applied."""
    index = cache.traffic
    applies = rules.source_filter(source)
    out = []
    for lst in listeners:
        if index.rules:
            lst = tcp_rules_mod.apply_tcp_rules(lst, index, applies)
        out.append(tcp_rules_mod.add_protocol_filters(lst, index))
    return out


def source_policy_clusters(cache: ConfigCache, source: frozenset[str]) -> dict[str, Resource]:
    """Clusters re-translated with the per-source policies that apply to a proxy (by name,
    replacing the shared ones in that proxy's view); empty for most proxies."""
    from meshfed.pilot.cache import make_resource

    index = cache.traffic
    hosts = index.source_policy_hosts(source) if source else []
    if not hosts:
        return {}
    key = ("source-policy", cache.generation, cache.config_generation, source)
    found = cache._proxy_parts.get(key)
    if found is None:
        found = {}
        for host in hosts:
            service = cache._services.get(host)
            if service is None:
                continue
            endpoints = cache.registry.endpoints(host)
            for port in service.ports:
                for cluster, _ in service_port_clusters(service, port, endpoints, index, source):
                    # The same transport security as the shared copy (see ConfigCache._translate).
                    mtls.apply_outbound_mtls(cluster, service, endpoints, cache.mtls_policy)
                    found[cluster.name] = make_resource(cluster.name, cluster)
        cache._proxy_parts[key] = found
    return found


def source_key(cache: ConfigCache, node: ProxyNode) -> frozenset[str]:
    index = cache.traffic
    if not index.has_source_rules or not node.ip:
        return frozenset()
    return index.source_key(cache.own_endpoints(node.ip))


def outbound_http_listener(cache: ConfigCache, node: ProxyNode) -> listener_pb2.Listener:
    filters = [*rules.http_filters(), *egress.http_filters(cache.traffic.options)]
    return tl.outbound_http_listener(node, filters, rules.websocket_disabled_by_default())


def egress_listeners(
    cache: ConfigCache, node: ProxyNode, tcp: Sequence[listener_pb2.Listener]
) -> tuple[list[listener_pb2.Listener], list[str]]:
    index = cache.traffic
    taken = set(node.reserved_ports) | {lst.address.socket_address.port_value for lst in tcp}
    return egress.egress_listeners(
        node, index.snapshot.egress_rules, cache._services, taken, index.options
    )


def is_gateway(node: ProxyNode) -> bool:
    return gateway.is_gateway(node)


def gateway_view(cache: ConfigCache, node: ProxyNode) -> ProxyView:
    from meshfed.pilot.cache import ProxyView, make_resource

    key = ("gateway", node.view_key, cache.services_generation, cache.config_generation)
    found = cache._proxy_parts.get(key)
    if found is None:
        listeners, routes, problems = gateway.gateway_resources(node, cache.traffic)
        found = (
            {lst.name: make_resource(lst.name, lst) for lst in listeners},
            {r.name: make_resource(r.name, r) for r in routes},
            (*node.problems, *problems),
        )
        cache._proxy_parts[key] = found
    listener_table, route_table, problems = found
    # Mutual TLS applies to a gateway's clusters exactly as to a sidecar's (shared clusters).
    return ProxyView(
        {
            T.CLUSTER: cache.clusters(),
            T.ENDPOINT: cache.assignments(),
            T.LISTENER: listener_table,
            T.ROUTE: route_table,
        },
        problems,
        shared_digests={
            T.CLUSTER: cache.shared_digest(T.CLUSTER),
            T.ENDPOINT: cache.shared_digest(T.ENDPOINT),
        },
    )
