"""The dashboard's one document: everything the page draws, built from the hub's live state.

Built from the same functions as the debug endpoints, so the page can never disagree with them:
the merged catalog and registries from :func:`~meshfed.registryview.registry_view`
(``/debug/registryz``), each proxy's per-type sync state from :func:`~meshfed.pilot.status.syncz`
(``/debug/syncz``, what ``meshfed proxy-status`` prints), Mixer's rules from its ``describe()``
(``/debug/mixerz``) with their hit counts from Mixer's own counters, and the service graph from
:class:`~meshfed.dashboard.graph.ServiceGraph`.

What is added here is what an operator wants at a glance and no debug endpoint says: which
services have conflicts, which registry's change was seen last and when (:class:`LastEvents`),
and a summary line. The catalog is cut at :data:`MAX_SERVICES` services (the count of those
left out is in the document) so that a page over a large mesh stays usable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from prometheus_client import Counter

from meshfed.dashboard.graph import ServiceGraph
from meshfed.registry.aggregate import AggregateRegistry
from meshfed.registry.events import ChangeEvent
from meshfed.registryview import registry_view

MAX_SERVICES = 1000


@attrs.define
class LastEvents:
    """When each registry last changed the merged view, and what changed."""

    clock: Callable[[], float] = time.time
    seen: dict[str, dict[str, Any]] = attrs.field(factory=dict)

    def record(self, event: ChangeEvent, aggregate: AggregateRegistry) -> None:
        by_registry: dict[str, set[str]] = {}
        services = aggregate.services()
        for host in (*event.services_added, *event.services_updated):
            service = services.get(host)
            for name in service.registries if service is not None else ():
                by_registry.setdefault(name, set()).add(host)
        for change in event.endpoints:
            for endpoint in (*change.added, *change.updated, *change.removed):
                by_registry.setdefault(endpoint.registry, set()).add(change.hostname)
        now = self.clock()
        for name, hosts in by_registry.items():
            self.seen[name] = {"at": now, "hosts": sorted(hosts)[:5], "count": len(hosts)}


def rule_hits(counter: Counter) -> dict[str, float]:
    """A Prometheus counter labelled by ``rule``, as {rule: total}."""
    hits: dict[str, float] = {}
    for metric in counter.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                rule = sample.labels.get("rule", "")
                hits[rule] = hits.get(rule, 0.0) + sample.value
    return hits


def mixer_state(
    mixer: Any, matches: Mapping[str, float], errors: Mapping[str, float]
) -> dict[str, Any] | None:
    """Mixer's rules with their hits, its handlers and problems; None without Mixer."""
    if mixer is None:
        return None
    described = mixer.describe()
    rules = [
        {
            "name": r["name"],
            "match": r["match"],
            "actions": [
                f"{variety} -> {a['handler']}"
                for variety in ("check", "report", "quota")
                for a in r.get(variety, ())
            ],
            "hits": matches.get(r["name"], 0.0),
            "errors": errors.get(r["name"], 0.0),
        }
        for r in described.get("rules", ())
    ]
    return {
        "version": described.get("version"),
        "rules": rules,
        "handlers": described.get("handlers", {}),
        "problems": described.get("problems", []),
    }


def build_state(
    aggregate: AggregateRegistry,
    *,
    member_details: Mapping[str, Mapping[str, Any]] | None = None,
    last_events: LastEvents | None = None,
    proxies: list[dict[str, Any]] | None = None,
    mixer: dict[str, Any] | None = None,
    graph: ServiceGraph | None = None,
    readiness: Mapping[str, Any] | None = None,
    version: str = "",
    max_services: int = MAX_SERVICES,
) -> dict[str, Any]:
    view = registry_view(aggregate, member_details)
    conflicted = {c["hostname"] for c in view["conflicts"]}
    services = view["services"]
    for service in services:
        service["conflict"] = service["hostname"] in conflicted
        service["healthy_endpoints"] = sum(1 for e in service["endpoints"] if e["healthy"])
    seen = last_events.seen if last_events is not None else {}
    for member in view["members"]:
        member["last_event"] = seen.get(member["name"])
    return {
        "version": version,
        "summary": {
            "services": len(services),
            "endpoints": sum(len(s["endpoints"]) for s in services),
            "conflicts": len(view["conflicts"]),
            "registries": len(view["members"]),
            "proxies": len(proxies or []),
        },
        "readiness": dict(readiness or {}),
        "synced": view["synced"],
        "members": view["members"],
        "services": services[:max_services],
        "services_left_out": max(0, len(services) - max_services),
        "conflicts": view["conflicts"],
        "proxies": proxies or [],
        "mixer": mixer,
        "graph": graph.describe() if graph is not None else None,
    }
