"""Pilot's debug endpoints under the names and shapes Istio's users know from istiod.

- ``GET /debug/adsz``: every connected proxy: connection id, peer, when it connected, its node
  metadata and, per type URL, the resource names it watches (``"*"`` for a wildcard watch).
- ``GET /debug/endpointz[?service=HOST]``: every service instance Pilot builds from, one entry
  per (service, port, endpoint), with the registry that supplied the endpoint.
- ``GET /debug/push_status``: the last push: when it started and ended, what triggered it, how
  many responses it queued, and ``ProxyStatus``: per problem kind, per proxy, what Pilot could
  not build for that proxy (Istio's ``pilot_conflict_*`` / ``pilot_eds_no_instances`` view).

They read Pilot's own state at request time; nothing is kept for them but the last push record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from aiohttp import web

from meshfed.pilot import xds_types as T
from meshfed.pilot.ads import Connection, DiscoveryServer
from meshfed.registry.aggregate import AggregateRegistry


@attrs.define
class PushRecord:
    """What the last push did (``/debug/push_status``)."""

    start: float = 0.0
    end: float = 0.0
    triggers: dict[str, int] = attrs.field(factory=dict)
    responses: int = 0
    full: bool = False
    services_changed: bool = False
    endpoint_names: list[str] = attrs.field(factory=list)
    count: int = 0

    def started(self, triggers: Iterable[str]) -> None:
        self.start, self.end = time.time(), 0.0
        self.triggers = {}
        for trigger in triggers:
            self.triggers[trigger] = self.triggers.get(trigger, 0) + 1

    def finished(
        self, responses: int, full: bool, services: bool, endpoints: Iterable[str]
    ) -> None:
        self.end = time.time()
        self.responses, self.full, self.services_changed = responses, full, services
        self.endpoint_names = sorted(endpoints)
        self.count += 1


def adsz(discovery: DiscoveryServer | None) -> dict[str, Any]:
    conns = [] if discovery is None else list(discovery.connections.values())
    clients = []
    for conn in sorted(conns, key=lambda c: (c.node.id, c.connected_at)):
        watches = {}
        for type_url, watch in conn.watches.items():
            names = sorted(watch.subscribed)
            watches[type_url] = ["*"] if getattr(watch, "wildcard", False) and not names else names
        described = conn.describe()
        clients.append(
            {
                "connectionId": conn.id,
                "proxy": conn.node.id,
                "connectedAt": conn.connected_at,
                "address": conn.peer,
                "protocol": described["protocol"],
                "metadata": described["node"],
                "watches": watches,
            }
        )
    return {"totalClients": len(clients), "clients": clients}


def endpointz(aggregate: AggregateRegistry | None, service: str | None = None) -> list[dict]:
    if aggregate is None:
        return []
    services = aggregate.services()
    out = []
    for host in [service] if service else sorted(services):
        svc = services.get(host)
        if svc is None:
            continue
        for endpoint in aggregate.endpoints(host):
            for port in svc.ports:
                out.append(
                    {
                        "service": host,
                        "servicePort": {
                            "name": port.name,
                            "port": port.number,
                            "protocol": port.protocol.value,
                        },
                        "endpoint": {
                            "address": endpoint.address,
                            "port": endpoint.target_port(port),
                            "labels": dict(endpoint.labels.items_tuple),
                            "serviceAccount": endpoint.identity,
                            "locality": str(endpoint.locality),
                            "healthStatus": "HEALTHY" if endpoint.healthy else "UNHEALTHY",
                            "weight": endpoint.weight,
                            "registry": endpoint.registry,
                        },
                    }
                )
    return out


def _problem_kind(problem: str) -> str:
    if "is taken by the sidecar itself" in problem:
        return "pilot_conflict_outbound_listener_tcp_over_current_http"
    if "has no local listener: port" in problem:
        return "pilot_conflict_outbound_listener_tcp_over_current_tcp"
    if "has no ClusterLoadAssignment" in problem:
        return "pilot_eds_no_instances"
    if "references missing cluster" in problem:
        return "meshfed_route_missing_cluster"
    return "meshfed_proxy_problem"


def push_status(discovery: DiscoveryServer | None, record: PushRecord) -> dict[str, Any]:
    proxies: dict[str, dict[str, Any]] = {}
    conns: list[Connection] = [] if discovery is None else list(discovery.connections.values())
    for conn in conns:
        for problem in conn.problems:
            kind = _problem_kind(problem)
            proxies.setdefault(kind, {}).setdefault(conn.node.id, {"messages": []})
            proxies[kind][conn.node.id]["messages"].append(problem)
    return {
        "Start": record.start,
        "End": record.end,
        "Pushes": record.count,
        "Triggers": record.triggers,
        "Responses": record.responses,
        "Full": record.full,
        "ServicesChanged": record.services_changed,
        "EndpointsChanged": record.endpoint_names,
        "ProxyStatus": proxies,
        "Types": [T.short(t) for t in T.PUSH_ORDER],
    }


def routes(
    discovery: Callable[[], DiscoveryServer | None],
    aggregate: Callable[[], AggregateRegistry | None],
    record: PushRecord,
) -> list[web.RouteDef]:
    async def handle_adsz(request: web.Request) -> web.Response:
        """connected proxies, their node metadata and watched resources"""
        return web.json_response(adsz(discovery()))

    async def handle_endpointz(request: web.Request) -> web.Response:
        """every service instance: service, port, endpoint, source registry (?service=HOST)"""
        return web.json_response(endpointz(aggregate(), request.query.get("service")))

    async def handle_push_status(request: web.Request) -> web.Response:
        """the last push: triggers, responses, and what could not be built per proxy"""
        return web.json_response(push_status(discovery(), record))

    return [
        web.get("/debug/adsz", handle_adsz),
        web.get("/debug/endpointz", handle_endpointz),
        web.get("/debug/push_status", handle_push_status),
    ]
