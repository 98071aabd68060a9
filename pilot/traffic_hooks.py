"""Where routing config enters the shared cache and the proxy views.

The cache owns versions, sharing and incremental rebuilds; this module owns everything that
route rules, destination policies, egress rules and gateways add to it, so the traffic features
can be read in one place. It talks to the cache only through :class:`TrafficCache`, a narrow
public interface (it never imports :mod:`pilot.cache`).

Promises:
- A new config snapshot re-translates only the services whose subsets or policies changed,
  through the normal diffing path (:meth:`ConfigCache.apply`), so unchanged clusters keep
  their versions and are not re-sent; routes and listeners are rebuilt (new generation).
- Make before break (no 503 window while rules change): a config
  change is applied in three steps. :func:`stage_config` adds the clusters the new rules need
  (subsets, egress) while routes stay as they were; once proxies have them (the server waits
  for their CDS/EDS ACKs), :func:`set_config` switches the routes, and once proxies have ACKed
  those, :func:`settle` removes the clusters only the previous config used. No route a proxy
  may still hold ever points to a cluster it does not have.
- A registry change that makes a rule resolve differently (a service appears or disappears)
  also re-translates the services whose subset/policy clusters that changes.
- Egress clusters live in the cache's cluster table under a key no hostname can take, so they
  are diffed, versioned and shared exactly like service clusters.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import attrs
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2

from meshfed.pilot.config.store import ConfigSnapshot
from meshfed.pilot.node import ProxyNode
from meshfed.pilot.plugins import PluginSet
from meshfed.pilot.resources import CacheChange, Resource, make_resource, merge_changes
from meshfed.pilot.translate import egress, rules
from meshfed.pilot.translate import listeners as tl
from meshfed.pilot.translate import routes as tr
from meshfed.pilot.translate import tcp_rules as tcp_rules_mod
from meshfed.pilot.translate.traffic import TrafficIndex, TrafficOptions
from meshfed.registry.aggregate import AggregateRegistry
from meshfed.registry.model import Endpoint, Service

EGRESS_KEY = "\0egress"  # not a hostname: the egress rules' slot in the cluster table


class TrafficCache(Protocol):
    """The cache as this module (and the view pipeline) sees it."""

    registry: AggregateRegistry
    traffic: TrafficIndex
    config_generation: int
    plugins: PluginSet

    @property
    def service_table(self) -> Mapping[str, Service]:
        """The translated services by hostname (read-only)."""
        ...

    def apply(self, hostnames: Iterable[str]) -> CacheChange: ...

    def replace_cluster_group(self, key: str, table: Mapping[str, Resource]) -> set[str]:
        """Replace the clusters stored under ``key``; the names that changed."""
        ...

    def own_endpoints(self, ip: str) -> tuple[tuple[Service, Endpoint], ...]: ...


def _next_index(
    cache: TrafficCache, snapshot: ConfigSnapshot, options: TrafficOptions | None
) -> TrafficIndex:
    current = cache.traffic
    if snapshot == current.snapshot:
        extra, extra_egress = current.extra_subsets, current.extra_egress
    else:
        extra, extra_egress = current.referenced, current.snapshot.egress_rules
    return TrafficIndex.build(
        snapshot,
        cache.service_table.values(),
        options or current.options,
        extra_subsets=extra,
        extra_egress=extra_egress,
    )


def stage_config(
    cache: TrafficCache, snapshot: ConfigSnapshot, options: TrafficOptions | None
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
    cache: TrafficCache, snapshot: ConfigSnapshot, options: TrafficOptions | None
) -> CacheChange:
    """Step two (or the only step, for a cache no proxy reads yet): routes follow the config."""
    old = cache.traffic
    if snapshot != old.snapshot:
        cache.traffic = _next_index(cache, snapshot, options)
    elif options is not None and options != old.options:
        cache.traffic = attrs.evolve(old, options=options)  # egress DNS, gateway certificates
    cache.config_generation += 1
    return _retranslate(cache, old)


def settle(cache: TrafficCache) -> CacheChange | None:
    """Step three: drop clusters kept only for the previous config (None: nothing kept)."""
    current = cache.traffic
    if not current.extra_subsets and not current.extra_egress:
        return None
    cache.traffic = attrs.evolve(current, extra_subsets={}, extra_egress=()).rebuilt(
        cache.service_table.values()
    )
    return _retranslate(cache, current)


def _retranslate(cache: TrafficCache, old: TrafficIndex) -> CacheChange:
    """Re-translate only the services whose config-derived clusters differ from ``old``'s
    (subsets, policies): a rule edit for one service costs that service, not the mesh."""
    egress_changed = _update_egress(cache)
    new = cache.traffic
    touched = set(old.subsets) | set(old.policies) | set(new.subsets) | set(new.policies)
    hosts = {h for h in touched if old.cluster_signature(h) != new.cluster_signature(h)}
    change = cache.apply(hosts & set(cache.service_table))
    names_ = set(change.cluster_names) | egress_changed
    return attrs.evolve(change, services_changed=True, cluster_names=frozenset(names_))


merge = merge_changes  # one change covering a registry batch and then a config snapshot


def _update_egress(cache: TrafficCache, services: Mapping[str, object] | None = None) -> set[str]:
    """Re-translate the egress clusters; ``services`` (default: the cache's) shadow rules."""
    index = cache.traffic
    rules_ = [*index.snapshot.egress_rules, *index.extra_egress]
    internal = cache.service_table if services is None else services
    new = {
        c.name: make_resource(c.name, c)
        for c in egress.egress_clusters(rules_, internal, index.options)
    }
    return cache.replace_cluster_group(EGRESS_KEY, new)


def hosts_to_apply(cache: TrafficCache, hosts: set[str]) -> set[str]:
    """``hosts`` plus the hosts whose config-derived clusters change with this batch."""
    registry = cache.registry
    if all(registry.service(h) == cache.service_table.get(h) for h in hosts):
        return hosts
    services = dict(cache.service_table)
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
    cache: TrafficCache, namespace: str, source: frozenset[str]
) -> route_pb2.RouteConfiguration:
    index = cache.traffic
    applies = rules.source_filter(source)
    return tr.outbound_route_config(
        cache.service_table.values(),
        namespace,
        routes_for=lambda svc, port, default: rules.service_routes(
            svc, port, default, index, applies
        ),
        extra_vhosts=egress.egress_virtual_hosts(index.snapshot.egress_rules, cache.service_table),
    )


def tcp_rules(
    cache: TrafficCache, listeners: Sequence[listener_pb2.Listener], source: frozenset[str]
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


def source_key(cache: TrafficCache, node: ProxyNode) -> frozenset[str]:
    index = cache.traffic
    if not index.has_source_rules or not node.ip:
        return frozenset()
    return index.source_key(cache.own_endpoints(node.ip))


def outbound_http_listener(
    cache: TrafficCache,
    node: ProxyNode,
    problems: list[str] | None = None,
    own: Sequence[tuple[Service, Endpoint]] = (),
) -> listener_pb2.Listener:
    filters = [*rules.http_filters(), *egress.http_filters(cache.traffic.options)]
    return tl.outbound_http_listener(
        node, filters, rules.websocket_disabled_by_default(), cache.plugins, problems, own
    )


def egress_listeners(
    cache: TrafficCache, node: ProxyNode, tcp: Sequence[listener_pb2.Listener]
) -> tuple[list[listener_pb2.Listener], list[str]]:
    index = cache.traffic
    taken = set(node.reserved_ports) | {lst.address.socket_address.port_value for lst in tcp}
    return egress.egress_listeners(
        node, index.snapshot.egress_rules, cache.service_table, taken, index.options
    )
