"""Turn parsed ServiceEntries and WorkloadEntries into model services and endpoints.

Pure and deterministic: the same specs, in any order, give equal services and endpoints. A host
declared by two ServiceEntries is kept from the first in (file, namespace, name) order and the
second is reported, so the outcome never depends on which file the watcher happened to read first.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from meshfed.adapters.static.kinds import ServiceEntrySpec, WorkloadSpec
from meshfed.core.resources import ConfigError
from meshfed.registry.model import Endpoint, Resolution, Service, spiffe_id


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def endpoint_for(
    workload: WorkloadSpec, entry: ServiceEntrySpec, trust_domain: str, registry: str
) -> Endpoint:
    ports = {}
    for port_spec in entry.ports:
        name = port_spec.port.name
        if name in workload.ports:
            ports[name] = int(workload.ports[name])
        else:
            ports[name] = port_spec.target_port or port_spec.port.number
    return Endpoint(
        address=workload.address,
        ports=ports,
        labels=workload.labels,
        identity=spiffe_id(trust_domain, workload.namespace, workload.service_account or "default"),
        locality=workload.locality,
        healthy=True,
        weight=workload.weight,
        registry=registry,
        workload=workload.name,
    )


def translate(
    entries: Iterable[ServiceEntrySpec],
    workloads: Iterable[WorkloadSpec],
    trust_domain: str,
    registry: str,
) -> tuple[list[Service], dict[str, list[Endpoint]], list[ConfigError]]:
    services: dict[str, Service] = {}
    owners: dict[str, ServiceEntrySpec] = {}
    endpoints: dict[str, list[Endpoint]] = {}
    errors: list[ConfigError] = []
    workloads = sorted(workloads, key=lambda w: (w.namespace, w.name))
    for entry in sorted(entries, key=lambda e: (e.file, e.namespace, e.name)):
        if entry.workload_selector is not None:
            members = [
                w
                for w in workloads
                if w.namespace == entry.namespace and w.labels.matches(entry.workload_selector)
            ]
        else:
            members = list(entry.endpoints)
        if entry.resolution is not Resolution.DNS:
            # A WorkloadEntry may name its host; a STATIC service's endpoints (Envoy's EDS)
            # must be IP addresses, so such a workload is left out and reported.
            for workload in [w for w in members if not _is_ip(w.address)]:
                members.remove(workload)
                errors.append(
                    ConfigError(
                        entry.file,
                        f"ServiceEntry {entry.namespace}/{entry.name}",
                        "spec.workloadSelector",
                        f"selects WorkloadEntry {workload.namespace}/{workload.name} whose "
                        f"address {workload.address!r} is not an IP address; resolution "
                        f"{entry.resolution.value} needs one (left out)",
                    )
                )
        entry_endpoints = [endpoint_for(w, entry, trust_domain, registry) for w in members]
        for host in entry.hosts:
            if host in owners:
                first = owners[host]
                errors.append(
                    ConfigError(
                        entry.file,
                        f"ServiceEntry {entry.namespace}/{entry.name}",
                        "spec.hosts",
                        f"host {host!r} is already declared by ServiceEntry "
                        f"{first.namespace}/{first.name} in {first.file}; this one is ignored",
                    )
                )
                continue
            owners[host] = entry
            services[host] = Service(
                hostname=host,
                namespace=entry.namespace,
                ports=[p.port for p in entry.ports],
                address=entry.addresses[0] if entry.addresses else None,
                resolution=entry.resolution,
                location=entry.location,
                labels=entry.labels,
                registries=(registry,),
            )
            if entry_endpoints:
                endpoints[host] = entry_endpoints
    return list(services.values()), endpoints, errors
