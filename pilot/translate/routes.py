"""Route configuration (RDS) for the outbound HTTP listener: one virtual host per service port.

The app reaches a service by sending ``Host: <name>`` to its sidecar's outbound HTTP port (or by
using the sidecar as its HTTP proxy, which sends the absolute URL). Names that match:

- ``host:port`` and ``vip:port`` for every HTTP port;
- the bare ``host`` (and ``vip``) for the service's "default" HTTP port: 80 when the service has
  it, else its lowest-numbered HTTP port;
- the same for short names: every leading part of the hostname (``b.demo``, ``b.demo.svc``...);
  the first label alone (``b``) only for proxies in the service's own namespace, like Kubernetes
  DNS search paths.

Envoy rejects a route configuration in which two virtual hosts share a domain, so a domain is
given to the first service (by hostname order) that claims it and skipped for later ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2

from meshfed.pilot.translate import names
from meshfed.pilot.translate.protos import pack, seconds
from meshfed.registry.model import Port, Service

# Retries on connection-level failures only: this is what keeps an endpoint removed mid-request
# from surfacing as a 503, without replaying
# requests an upstream has already answered.
RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,reset"
NUM_RETRIES = 2
ROUTE_TIMEOUT_S = 15.0


def default_http_port(service: Service) -> Port | None:
    http = [p for p in service.ports if p.protocol.is_http]
    if not http:
        return None
    return next((p for p in http if p.number == 80), http[0])


def candidate_domains(service: Service, port: Port, namespace: str) -> list[str]:
    """Every Host value that should reach ``service`` on ``port`` from a proxy in ``namespace``."""
    parts = service.hostname.split(".")
    short = [".".join(parts[:i]) for i in range(2, len(parts))]
    if service.namespace == namespace and len(parts) > 1:
        short.insert(0, parts[0])
    bases = [service.hostname, *short]
    if service.address:
        bases.append(service.address)
    default = default_http_port(service)
    out: list[str] = []
    for base in bases:
        out.append(f"{base}:{port.number}")
        if default is not None and default.number == port.number:
            out.append(base)
    return out


def _route(cluster: str) -> rc.Route:
    retry = rc.RetryPolicy(
        retry_on=RETRY_ON,
        num_retries={"value": NUM_RETRIES},
        retry_host_predicate=[
            rc.RetryPolicy.RetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=pack(previous_hosts_pb2.PreviousHostsPredicate()),
            )
        ],
        host_selection_retry_max_attempts=3,
    )
    return rc.Route(
        match=rc.RouteMatch(prefix="/"),
        route=rc.RouteAction(cluster=cluster, timeout=seconds(ROUTE_TIMEOUT_S), retry_policy=retry),
    )


def default_route(cluster: str) -> rc.Route:
    """A service's route when no rule applies: all paths, connection-level retries."""
    return _route(cluster)


# Hook for traffic rules (pilot.translate.rules): a service port's routes given its default route.
RoutesFor = Callable[[Service, Port, rc.Route], list[rc.Route]]


def outbound_route_config(
    services: Iterable[Service],
    namespace: str,
    routes_for: RoutesFor | None = None,
    extra_vhosts: Iterable[rc.VirtualHost] = (),
) -> route_pb2.RouteConfiguration:
    """The outbound HTTP route table as seen from a proxy in ``namespace``.

    ``routes_for`` lets route rules replace a service's single default route; ``extra_vhosts``
    (egress rules) are added after the services, minus any domain a service already claims.
    """
    taken: set[str] = set()
    vhosts: list[rc.VirtualHost] = []
    for service in sorted(services, key=lambda s: s.hostname):
        for port in service.ports:
            if not port.protocol.is_http:
                continue
            domains = []
            for domain in candidate_domains(service, port, namespace):
                if domain not in taken:
                    taken.add(domain)
                    domains.append(domain)
            if not domains:
                continue
            cluster = names.outbound_cluster(service.hostname, port.number)
            default = _route(cluster)
            vhosts.append(
                rc.VirtualHost(
                    name=f"{service.hostname}:{port.number}",
                    domains=domains,
                    routes=routes_for(service, port, default) if routes_for else [default],
                )
            )
    for vhost in extra_vhosts:
        domains = [d for d in vhost.domains if d not in taken]
        if domains:
            taken.update(domains)
            del vhost.domains[:]
            vhost.domains.extend(domains)
            vhosts.append(vhost)
    return route_pb2.RouteConfiguration(
        name=names.OUTBOUND_HTTP_ROUTE,
        virtual_hosts=vhosts,
        validate_clusters={"value": False},
    )


def referenced_clusters(config: route_pb2.RouteConfiguration) -> set[str]:
    out = set()
    for vh in config.virtual_hosts:
        for r in vh.routes:
            if r.route.cluster:
                out.add(r.route.cluster)
            out.update(w.name for w in r.route.weighted_clusters.clusters)
            out.update(m.cluster for m in r.route.request_mirror_policies if m.cluster)
    return out
