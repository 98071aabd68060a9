"""The unified service model every registry is translated into.

Kubernetes, Consul, Eureka and plain files all describe "a named service reachable at some
addresses"; adapters translate each of them into the types below, and everything downstream
(Pilot, Mixer, the CA) reads only these types.

Promises:
- Every type is an ``attrs`` frozen, slotted class: hashable, comparable by value, immutable.
- Equal inputs give equal objects. Collections are canonicalised on construction (labels sorted,
  ports sorted by number, endpoint port maps sorted), so the order in which a platform happened to
  list tags or ports never makes two objects differ. That is what lets the aggregate registry and
  Pilot skip pushes when nothing really changed.
- No validation of user input happens here; that lives at the edges (YAML, CRDs, APIs). The
  constructors only canonicalise.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import attrs


class Protocol(enum.Enum):
    """Application protocol of a service port (the protocols Istio 0.2 knew, plus TLS)."""

    HTTP = "HTTP"
    HTTP2 = "HTTP2"
    GRPC = "GRPC"
    TCP = "TCP"
    TLS = "TLS"
    MONGO = "MONGO"
    REDIS = "REDIS"

    @property
    def is_http(self) -> bool:
        return self in (Protocol.HTTP, Protocol.HTTP2, Protocol.GRPC)

    @classmethod
    def parse(cls, value: str) -> Protocol:
        """Parse a protocol name case-insensitively (``https`` means TLS passthrough)."""
        key = value.strip().upper()
        if key == "HTTPS":
            return cls.TLS
        return cls(key)


class Resolution(enum.Enum):
    """How a proxy finds a service's endpoints."""

    STATIC = "STATIC"  # endpoints are listed by a registry
    DNS = "DNS"  # the proxy resolves the hostname (or endpoint hostnames) itself
    PASSTHROUGH = "PASSTHROUGH"  # the proxy forwards to the original destination address


class Location(enum.Enum):
    MESH_INTERNAL = "MESH_INTERNAL"
    MESH_EXTERNAL = "MESH_EXTERNAL"


def _sorted_pairs(value: Any, coerce: Any) -> tuple[tuple[str, Any], ...]:
    """Canonical (sorted, coerced) pairs from a mapping, pairs, another frozen map, or None."""
    if value is None:
        return ()
    if isinstance(value, _FrozenMap):
        value = value.items_tuple
    items = value.items() if isinstance(value, Mapping) else value
    return tuple(sorted((str(k), coerce(v)) for k, v in items))


def _str_pairs(value: Any) -> tuple[tuple[str, str], ...]:
    return _sorted_pairs(value, str)


def _int_pairs(value: Any) -> tuple[tuple[str, int], ...]:
    return _sorted_pairs(value, int)


class _FrozenMap(Mapping[str, Any]):
    """Read-only Mapping behaviour over a sorted ``items_tuple`` (the attrs field of subclasses)."""

    __slots__ = ()
    items_tuple: tuple[tuple[str, Any], ...]

    def __getitem__(self, key: str) -> Any:
        for k, v in self.items_tuple:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self.items_tuple)

    def __len__(self) -> int:
        return len(self.items_tuple)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self.items_tuple)!r})"


@attrs.frozen(slots=True, repr=False)
class Labels(_FrozenMap):
    """An immutable, canonically ordered string-to-string mapping."""

    items_tuple: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_str_pairs)

    def matches(self, selector: Mapping[str, str]) -> bool:
        """True when every key of ``selector`` is present here with the same value."""
        own = dict(self.items_tuple)
        return all(own.get(k) == v for k, v in selector.items())

    def merged(self, other: Mapping[str, str]) -> Labels:
        """These labels with ``other``'s entries added where a key is not already set."""
        combined = dict(other)
        combined.update(dict(self.items_tuple))
        return Labels(combined)


def _labels(value: Any) -> Labels:
    return value if isinstance(value, Labels) else Labels(value)


@attrs.frozen(slots=True, repr=False)
class PortMap(_FrozenMap):
    """Port name to port number, canonically ordered; used for an endpoint's target ports."""

    items_tuple: tuple[tuple[str, int], ...] = attrs.field(default=(), converter=_int_pairs)


def _port_map(value: Any) -> PortMap:
    return value if isinstance(value, PortMap) else PortMap(value)


@attrs.frozen(slots=True, order=True)
class Port:
    """A service port: clients address ``number``; ``name`` links it to endpoint target ports."""

    number: int
    name: str
    protocol: Protocol = Protocol.TCP


def _ports(value: Iterable[Port]) -> tuple[Port, ...]:
    return tuple(sorted(value, key=lambda p: (p.number, p.name, p.protocol.value)))


@attrs.frozen(slots=True, order=True)
class Locality:
    """Where a workload runs: region / zone / subzone (datacenter, zone, k8s topology)."""

    region: str = ""
    zone: str = ""
    subzone: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.region, self.zone, self.subzone) if p) or "-"


@attrs.frozen(slots=True)
class Service:
    """A mesh service, named by its fully qualified hostname.

    ``address`` is the virtual IP clients dial, or None for a headless service (clients dial
    endpoints directly). ``registries`` lists every registry that contributed, highest precedence
    first; a single adapter sets just its own name.
    """

    hostname: str
    namespace: str = "default"
    ports: tuple[Port, ...] = attrs.field(default=(), converter=_ports)
    address: str | None = None
    resolution: Resolution = Resolution.STATIC
    location: Location = Location.MESH_INTERNAL
    labels: Labels = attrs.field(factory=Labels, converter=_labels)
    registries: tuple[str, ...] = ()

    @property
    def registry(self) -> str:
        """The registry this service came from (the highest-precedence one when merged)."""
        return self.registries[0] if self.registries else ""

    @property
    def headless(self) -> bool:
        return self.address is None and self.resolution is not Resolution.DNS

    def port(self, name: str) -> Port | None:
        return next((p for p in self.ports if p.name == name), None)

    def port_by_number(self, number: int) -> Port | None:
        return next((p for p in self.ports if p.number == number), None)


@attrs.frozen(slots=True)
class Endpoint:
    """One network endpoint of a service.

    ``ports`` maps a service port *name* to the port the workload listens on (its target port);
    a service port without an entry here is reached on the service port's own number.
    ``identity`` is the workload's SPIFFE ID, or "" when the registry does not know it.
    ``workload`` is the name of the workload instance behind it (a Kubernetes pod, a
    WorkloadEntry), or "" when the registry does not name one.
    """

    address: str
    ports: PortMap = attrs.field(factory=PortMap, converter=_port_map)
    labels: Labels = attrs.field(factory=Labels, converter=_labels)
    identity: str = ""
    locality: Locality = attrs.field(factory=Locality)
    healthy: bool = True
    weight: int = 1
    registry: str = ""
    hostname: str = ""  # a per-endpoint DNS name (StatefulSet pods, DNS-resolved entries)
    workload: str = ""  # not part of ``key``: a renamed pod at the same socket is one endpoint

    @property
    def key(self) -> tuple[str, str, tuple[tuple[str, int], ...]]:
        """What makes this endpoint the same endpoint across updates."""
        return (self.registry, self.address, self.ports.items_tuple)

    def target_port(self, port: Port) -> int:
        return int(self.ports.get(port.name, port.number))


@attrs.frozen(slots=True)
class Workload:
    """A running instance of software (a VM process, a pod) that may back several services."""

    name: str
    namespace: str
    address: str
    ports: PortMap = attrs.field(factory=PortMap, converter=_port_map)
    labels: Labels = attrs.field(factory=Labels, converter=_labels)
    service_account: str = "default"
    locality: Locality = attrs.field(factory=Locality)
    weight: int = 1
    registry: str = ""

    def identity(self, trust_domain: str) -> str:
        return spiffe_id(trust_domain, self.namespace, self.service_account)

    def as_endpoint(self, trust_domain: str, healthy: bool = True) -> Endpoint:
        return Endpoint(
            address=self.address,
            ports=self.ports,
            labels=self.labels,
            identity=self.identity(trust_domain),
            locality=self.locality,
            healthy=healthy,
            weight=self.weight,
            registry=self.registry,
            workload=self.name,
        )


SPIFFE_PREFIX = "spiffe://"


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    """The SPIFFE ID of a workload: ``spiffe://<trust-domain>/ns/<ns>/sa/<sa>``."""
    return f"{SPIFFE_PREFIX}{trust_domain}/ns/{namespace}/sa/{service_account}"


def parse_spiffe_id(value: str) -> tuple[str, str, str]:
    """Split a workload SPIFFE ID into (trust domain, namespace, service account).

    Raises ValueError when ``value`` is not of the workload form.
    """
    if not value.startswith(SPIFFE_PREFIX):
        raise ValueError(f"not a SPIFFE ID (expected {SPIFFE_PREFIX}...): {value!r}")
    domain, _, path = value[len(SPIFFE_PREFIX) :].partition("/")
    parts = path.split("/")
    if not domain or len(parts) != 4 or parts[0] != "ns" or parts[2] != "sa" or "" in parts:
        raise ValueError(f"expected spiffe://<trust-domain>/ns/<namespace>/sa/<account>: {value!r}")
    return domain, parts[1], parts[3]


def workload_name(endpoint: Endpoint) -> str:
    """The name the mesh knows the workload behind ``endpoint`` by: its workload's name, else
    the first label of its own hostname, else its address."""
    if endpoint.workload:
        return endpoint.workload
    return endpoint.hostname.split(".")[0] if endpoint.hostname else endpoint.address


def workload_namespace(service: Service, endpoint: Endpoint) -> str:
    """The namespace of the workload behind ``endpoint``: its identity's, else the service's."""
    if endpoint.identity:
        try:
            return parse_spiffe_id(endpoint.identity)[1]
        except ValueError:  # not a workload identity: the service's namespace stands
            pass
    return service.namespace
