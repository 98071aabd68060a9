"""The merged registry as JSON: what ``/debug/registryz`` serves and ``meshfed registry`` prints.

One function builds the document so the HTTP endpoint and the CLI can never disagree about what
the hub holds. Every endpoint names its source registry; members show synced / degraded state and
their adapter's own details; conflicts are listed with who won.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshfed.registry.aggregate import AggregateRegistry
from meshfed.registry.model import Endpoint, Service


def service_json(service: Service) -> dict[str, Any]:
    return {
        "hostname": service.hostname,
        "namespace": service.namespace,
        "address": service.address,
        "resolution": service.resolution.value,
        "location": service.location.value,
        "ports": [
            {"name": p.name, "number": p.number, "protocol": p.protocol.value}
            for p in service.ports
        ],
        "labels": dict(service.labels),
        "registries": list(service.registries),
    }


def endpoint_json(endpoint: Endpoint) -> dict[str, Any]:
    return {
        "address": endpoint.address,
        "ports": dict(endpoint.ports),
        "labels": dict(endpoint.labels),
        "identity": endpoint.identity,
        "locality": str(endpoint.locality),
        "healthy": endpoint.healthy,
        "weight": endpoint.weight,
        "registry": endpoint.registry,
        "hostname": endpoint.hostname,
    }


def registry_view(
    aggregate: AggregateRegistry,
    member_details: Mapping[str, Mapping[str, Any]] | None = None,
    host: str | None = None,
) -> dict[str, Any]:
    services = aggregate.services()
    hosts = [host] if host else sorted(services)
    details = member_details or {}
    return {
        "synced": aggregate.synced,
        "members": [
            {
                "name": m.name,
                "kind": m.kind,
                "precedence": i,
                "synced": m.synced,
                "degraded": m.degraded,
                # Not synced, and the hub no longer waits for it (initialSyncTimeout passed).
                "late": not m.synced and not m.awaited,
                **dict(details.get(m.name, {})),
            }
            for i, m in enumerate(aggregate.members)
        ],
        "services": [
            {
                **service_json(services[h]),
                "endpoints": [endpoint_json(e) for e in aggregate.endpoints(h)],
            }
            for h in hosts
            if h in services
        ],
        "conflicts": [
            {
                "hostname": c.hostname,
                "field": c.field,
                "winner": c.winner,
                "winner_value": c.winner_value,
                "loser": c.loser,
                "loser_value": c.loser_value,
                "message": str(c),
            }
            for c in aggregate.conflicts()
        ],
    }
