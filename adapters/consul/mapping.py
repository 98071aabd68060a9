"""Pure translation of Consul health entries into the unified model.

Consul describes a service as a set of *instances* (one per node registration, each with its own
address, port, tags, meta and checks); the mesh wants one :class:`~registry.model.Service` per
hostname with a list of :class:`~registry.model.Endpoint`. This module does that translation and
nothing else: no I/O, no clock, so it is unit-tested without a server.

Promises:
- Equal inputs give equal outputs. Tags are sorted (and de-duplicated) before anything is derived
  from them, instances are sorted by (datacenter, node, service id), so the order in which Consul
  lists tags, instances or checks never produces a different model object (and so no push).
- Labels come from tags in both conventions users have in the field, ``key=value`` and Istio's
  older ``key|value`` (the separator that appears first wins), plus the instance's service meta,
  which overrides a tag with the same key. Tags of neither form (``primary``) are not labels: Istio
  ignored them too, because a bare word has no value to match a selector against.
- Protocol from a ``protocol`` service meta entry, else a ``protocol`` tag, else the node's
  ``protocol`` meta entry (where Istio 0.2's Consul platform read it, so catalogs set up for it
  keep working); the more specific declaration wins. Absent or unknown means TCP -- never an
  error, since a Consul catalog is not ours to validate.
- Locality: region is the datacenter, zone and subzone come from node meta (``zone`` /
  ``subzone``, with ``availability-zone`` / ``rack`` as aliases).
- Health: an instance is healthy only when every check that applies to it (its node's checks and
  its own) is ``passing``; ``warning`` and ``critical`` take it out of rotation, and so does
  maintenance mode (which Consul expresses as a critical ``_node_maintenance`` or
  ``_service_maintenance:<id>`` check) -- reported separately so operators see why.
"""

from __future__ import annotations

import logging
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from meshfed.registry.model import Endpoint, Labels, Locality, Port, Protocol, Resolution, Service

log = logging.getLogger("meshfed.adapters.consul")

DEFAULT_HOSTNAME_TEMPLATE = "{service}.service.consul"
HOSTNAME_FIELDS = frozenset({"service", "datacenter", "namespace"})
PROTOCOL_KEY = "protocol"
NODE_MAINTENANCE_CHECK = "_node_maintenance"
SERVICE_MAINTENANCE_PREFIX = "_service_maintenance:"
ZONE_KEYS = ("zone", "availability-zone", "availability_zone")
SUBZONE_KEYS = ("subzone", "rack")
# Consul's own servers register as "consul"; they are not a mesh workload.
IGNORED_SERVICES = frozenset({"consul"})


@attrs.frozen(slots=True)
class Instance:
    """One Consul service instance, normalised (sorted tags, resolved address and health)."""

    datacenter: str
    service: str
    node: str
    service_id: str
    address: str
    port: int
    tags: tuple[str, ...]
    labels: Labels
    protocol: Protocol | None
    locality: Locality
    healthy: bool
    maintenance: bool
    weight: int = 1

    @property
    def in_rotation(self) -> bool:
        return self.healthy and not self.maintenance


def canonical_tags(tags: Iterable[str] | None) -> tuple[str, ...]:
    """Tags sorted and de-duplicated: the only form anything else is derived from."""
    return tuple(sorted({str(t) for t in tags or ()}))


def split_tag(tag: str) -> tuple[str, str] | None:
    """``key=value`` or ``key|value`` (whichever separator comes first) -> (key, value)."""
    positions = [i for i in (tag.find("="), tag.find("|")) if i > 0]
    if not positions:
        return None
    i = min(positions)
    return tag[:i], tag[i + 1 :]


def tag_labels(tags: Iterable[str]) -> dict[str, str]:
    """Labels from tags; for a key given twice, the first tag in sorted order wins."""
    out: dict[str, str] = {}
    for tag in canonical_tags(tags):
        pair = split_tag(tag)
        if pair is not None and pair[0] not in out:
            out[pair[0]] = pair[1]
    return out


def instance_labels(tags: Iterable[str], meta: Mapping[str, Any] | None) -> Labels:
    """Tag labels overlaid with service meta (meta is structured, so it wins)."""
    labels = tag_labels(tags)
    labels.update({str(k): str(v) for k, v in (meta or {}).items()})
    return Labels(labels)


def parse_protocol(value: str | None) -> Protocol | None:
    """A protocol name as Consul users write it, or None when absent or unknown."""
    if not value:
        return None
    try:
        return Protocol.parse(value)
    except ValueError:
        return None


def instance_protocol(
    tags: Iterable[str],
    meta: Mapping[str, Any] | None,
    node_meta: Mapping[str, Any] | None = None,
) -> Protocol | None:
    """Protocol declared by service meta, else by a ``protocol`` tag, else by node meta (Istio
    0.2's convention); None when undeclared or unknown."""
    for declared in (
        (meta or {}).get(PROTOCOL_KEY),
        tag_labels(tags).get(PROTOCOL_KEY),
        (node_meta or {}).get(PROTOCOL_KEY),
    ):
        if declared is not None:
            return parse_protocol(str(declared))
    return None


def node_locality(datacenter: str, node_meta: Mapping[str, Any] | None) -> Locality:
    """Region = datacenter; zone / subzone from node meta."""
    meta = node_meta or {}

    def first(keys: Sequence[str]) -> str:
        return next((str(meta[k]) for k in keys if meta.get(k)), "")

    return Locality(region=datacenter, zone=first(ZONE_KEYS), subzone=first(SUBZONE_KEYS))


def check_health(checks: Iterable[Mapping[str, Any]], service_id: str) -> tuple[bool, bool]:
    """(healthy, in maintenance) from the checks of one health entry.

    The health endpoint returns the node's checks (ServiceID "") and the instance's own; we
    still filter, so an entry assembled elsewhere cannot borrow another instance's checks.
    """
    healthy, maintenance = True, False
    for check in checks or ():
        if check.get("ServiceID", "") not in ("", service_id):
            continue
        check_id = str(check.get("CheckID", ""))
        if check_id == NODE_MAINTENANCE_CHECK or check_id.startswith(SERVICE_MAINTENANCE_PREFIX):
            maintenance = True
        if check.get("Status") != "passing":
            healthy = False
    return healthy, maintenance


def instance_from_entry(entry: Mapping[str, Any], datacenter: str) -> Instance | None:
    """One ``/v1/health/service/<name>`` entry -> Instance (None for proxies and gateways)."""
    node = entry.get("Node") or {}
    svc = entry.get("Service") or {}
    # Connect sidecars and gateways ("Kind" set) front a service; they are not instances of it.
    if svc.get("Kind"):
        return None
    address = svc.get("Address") or node.get("Address") or ""
    port = int(svc.get("Port") or 0)
    if not address or port <= 0:
        return None
    tags = canonical_tags(svc.get("Tags"))
    meta = svc.get("Meta") or {}
    service_id = str(svc.get("ID") or svc.get("Service") or "")
    healthy, maintenance = check_health(entry.get("Checks") or (), service_id)
    weights = svc.get("Weights") or {}
    return Instance(
        datacenter=datacenter,
        service=str(svc.get("Service", "")),
        node=str(node.get("Node", "")),
        service_id=service_id,
        address=str(address),
        port=port,
        tags=tags,
        labels=instance_labels(tags, meta),
        protocol=instance_protocol(tags, meta, node.get("Meta")),
        locality=node_locality(datacenter, node.get("Meta")),
        healthy=healthy,
        maintenance=maintenance,
        weight=max(1, int(weights.get("Passing") or 1)),
    )


def instances_from_entries(
    entries: Iterable[Mapping[str, Any]], datacenter: str
) -> tuple[Instance, ...]:
    """Every usable instance of a health response, in canonical order."""
    found = (instance_from_entry(e, datacenter) for e in entries or ())
    return tuple(
        sorted(
            (i for i in found if i is not None),
            key=lambda i: (i.datacenter, i.node, i.service_id, i.address, i.port),
        )
    )


def template_fields(template: str) -> set[str]:
    """The placeholder names used by a hostname template."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def hostname_for(template: str, service: str, datacenter: str, namespace: str) -> str:
    """The mesh hostname of a Consul service (lower-cased: DNS names are case-insensitive)."""
    return template.format(service=service, datacenter=datacenter, namespace=namespace).lower()


def _most_common(values: Iterable[Any], key: Any = None) -> Any:
    counts = Counter(values)
    if not counts:
        return None
    # Highest count first; ties broken by the smallest value, so the answer is deterministic.
    return min(counts, key=lambda v: (-counts[v], key(v) if key else v))


def build_service(
    hostname: str,
    namespace: str,
    instances: Iterable[Instance],
    registry: str = "",
) -> tuple[Service, tuple[Endpoint, ...]] | None:
    """The mesh service and endpoints for every instance that maps to ``hostname``.

    Consul has no service-level port: each instance registers its own. The service port is the
    port most instances use (ties: the lowest), named after the protocol (``http``, ``tcp``...),
    and every endpoint maps that name to its own instance port, so instances on other ports are
    still reached correctly. The protocol is the one most instances declare (TCP when none do).
    Returns None when no instance is left (the service is gone from the mesh).
    """
    ordered = sorted(
        instances, key=lambda i: (i.datacenter, i.node, i.service_id, i.address, i.port)
    )
    if not ordered:
        return None
    declared = [i.protocol for i in ordered if i.protocol is not None]
    protocol = _most_common(declared, key=lambda p: p.value) or Protocol.TCP
    number = _most_common(i.port for i in ordered)
    port = Port(number=number, name=protocol.value.lower(), protocol=protocol)
    service = Service(
        hostname=hostname,
        namespace=namespace,
        ports=(port,),
        address=None,
        resolution=Resolution.STATIC,
        registries=(registry,) if registry else (),
    )
    # Two registrations of one address:port (the same workload registered on two agents) are
    # one endpoint; the healthy one wins, so a stale duplicate cannot hide a live instance.
    chosen: dict[tuple[str, int], Instance] = {}
    for inst in ordered:
        key = (inst.address, inst.port)
        if key not in chosen or (inst.in_rotation and not chosen[key].in_rotation):
            chosen[key] = inst
    endpoints = tuple(
        Endpoint(
            address=inst.address,
            ports={port.name: inst.port},
            labels=inst.labels,
            locality=inst.locality,
            healthy=inst.in_rotation,
            weight=inst.weight,
            registry=registry,
            workload=inst.node,  # the machine the service runs on
        )
        for inst in chosen.values()
    )
    return service, endpoints
