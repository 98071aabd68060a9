"""Traffic-management config: Istio 0.2's RouteRule, DestinationPolicy and EgressRule, typed.

These are the validated, immutable forms of the YAML kinds; Pilot's translation reads only these.
Field names follow Istio 0.2 (``config.istio.io/v1alpha2``) so its rules keep working; the same
kinds are served under meshfed's own group ``config.meshfed.io/v1alpha1``. Durations are seconds
as floats; percentages are 0-100 floats.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import attrs

from meshfed.registry.model import Labels, Protocol, Service


def _labels(value: object) -> Labels:
    return value if isinstance(value, Labels) else Labels(value)  # type: ignore[arg-type]


@attrs.frozen(slots=True)
class ServiceRef:
    """Istio 0.2's IstioService: a service by name (and namespace) or by FQDN, plus labels."""

    name: str = ""
    namespace: str = ""
    domain: str = ""
    service: str = ""  # an FQDN, or a wildcard like *.example.com for egress
    labels: Labels = attrs.field(factory=Labels, converter=_labels)

    def candidates(self, default_namespace: str) -> tuple[str, ...]:
        """Hostnames this reference may mean, most specific first."""
        if self.service:
            return (self.service.lower(),)
        namespace = self.namespace or default_namespace
        domain = self.domain or "cluster.local"
        return (f"{self.name}.{namespace}.svc.{domain}".lower(), self.name.lower())

    def resolve(self, services: Iterable[Service], default_namespace: str) -> str | None:
        """The hostname of the registry service this reference names, if any.

        A bare ``name`` also matches a service whose first DNS label is that name in the rule's
        namespace, so ``reviews`` finds ``reviews.service.consul`` as well as the Kubernetes form.
        """
        by_host = {s.hostname: s for s in services}
        for host in self.candidates(default_namespace):
            if host in by_host:
                return host
        if self.name and not self.service:
            namespace = self.namespace or default_namespace
            matches = sorted(
                h
                for h, s in by_host.items()
                if h.split(".", 1)[0] == self.name.lower() and s.namespace == namespace
            )
            if matches:
                return matches[0]
        return None

    def __str__(self) -> str:
        base = self.service or ".".join(p for p in (self.name, self.namespace) if p)
        return base + (f"{dict(self.labels)}" if self.labels else "")


class MatchKind(enum.Enum):
    EXACT = "exact"
    PREFIX = "prefix"
    REGEX = "regex"


@attrs.frozen(slots=True)
class StringMatch:
    kind: MatchKind
    value: str


@attrs.frozen(slots=True)
class Match:
    source: ServiceRef | None = None
    headers: tuple[tuple[str, StringMatch], ...] = ()  # "uri", "authority", "method", or a header
    source_subnets: tuple[str, ...] = ()
    destination_subnets: tuple[str, ...] = ()


@attrs.frozen(slots=True)
class WeightedDestination:
    labels: Labels = attrs.field(factory=Labels, converter=_labels)
    weight: int = 100
    destination: ServiceRef | None = None  # another service instead of a subset
    port: int = 0  # the destination's port (a gateway's VirtualService); 0: the request's


@attrs.frozen(slots=True)
class Retry:
    attempts: int
    per_try_timeout: float | None = None
    # A request header whose value, when the app sends it, replaces ``attempts`` for that
    # request (Istio 0.2's ``overrideHeaderName``).
    override_header: str = ""


@attrs.frozen(slots=True)
class L4Fault:
    """Istio 0.2's ``l4Fault`` for TCP ports, applied to every connection of the rule's match.

    Limits are in bits per second, as Istio 0.2 wrote them: ``downstream`` is what the proxy
    sends back to the app, ``upstream`` what it forwards from the app to the service.
    """

    downstream_limit_bps: int | None = None
    upstream_limit_bps: int | None = None
    terminate_after: float | None = None  # seconds from connect


@attrs.frozen(slots=True)
class Fault:
    delay_percent: float = 0.0
    fixed_delay: float | None = None
    abort_percent: float = 0.0
    abort_status: int | None = None


@attrs.frozen(slots=True)
class Rewrite:
    uri: str = ""
    authority: str = ""


@attrs.frozen(slots=True)
class Cors:
    allow_origin: tuple[str, ...] = ()
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: float | None = None
    allow_credentials: bool = False


@attrs.frozen(slots=True)
class RouteRule:
    name: str
    namespace: str
    file: str
    destination: ServiceRef
    precedence: int = 0
    match: Match = attrs.field(factory=Match)
    route: tuple[WeightedDestination, ...] = ()
    timeout: float | None = None
    retry: Retry | None = None
    fault: Fault | None = None
    redirect: Rewrite | None = None
    rewrite: Rewrite | None = None
    mirror: ServiceRef | None = None
    websocket_upgrade: bool = False
    append_headers: Labels = attrs.field(factory=Labels, converter=_labels)
    cors: Cors | None = None
    l4_fault: L4Fault | None = None
    # The document it came from when converted from today's Istio API (``VirtualService``);
    # only names and messages differ, never the translation.
    kind: str = "RouteRule"

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


class LoadBalancer(enum.Enum):
    ROUND_ROBIN = "ROUND_ROBIN"
    LEAST_CONN = "LEAST_CONN"
    RANDOM = "RANDOM"


@attrs.frozen(slots=True)
class CircuitBreaker:
    max_connections: int | None = None
    http_max_pending_requests: int | None = None
    http_max_requests: int | None = None
    http_max_requests_per_connection: int | None = None
    http_max_retries: int | None = None
    http_consecutive_errors: int | None = None
    http_detection_interval: float | None = None
    sleep_window: float | None = None
    http_max_ejection_percent: int | None = None


@attrs.frozen(slots=True)
class HealthCheck:
    """Active HTTP health checking (a meshfed extension; Istio 0.2 had only outlier ejection)."""

    path: str = "/healthz"
    interval: float = 5.0
    timeout: float = 1.0
    unhealthy_threshold: int = 2
    healthy_threshold: int = 1


@attrs.frozen(slots=True)
class DestinationPolicy:
    name: str
    namespace: str
    file: str
    destination: ServiceRef
    source: ServiceRef | None = None
    load_balancing: LoadBalancer | None = None
    circuit_breaker: CircuitBreaker | None = None
    connect_timeout: float | None = None
    health_check: HealthCheck | None = None
    kind: str = "DestinationPolicy"  # or DestinationRule, when converted from one

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@attrs.frozen(slots=True)
class EgressPort:
    port: int
    protocol: Protocol


@attrs.frozen(slots=True)
class EgressRule:
    name: str
    namespace: str
    file: str
    service: str  # exact or wildcard (*.example.com) domain
    ports: tuple[EgressPort, ...]

    @property
    def ref(self) -> str:
        return f"EgressRule {self.namespace}/{self.name}"

    def matches(self, host: str) -> bool:
        if self.service.startswith("*."):
            return host.endswith(self.service[1:])
        return host == self.service or self.service == "*"


class PathType(enum.Enum):
    """How an Ingress path matches (``networking.k8s.io/v1`` ``pathType``, case-sensitive)."""

    EXACT = "Exact"  # the whole path, nothing more
    PREFIX = "Prefix"  # by ``/``-separated segments: /foo matches /foo and /foo/bar, not /foobar
    IMPLEMENTATION_SPECIFIC = "ImplementationSpecific"  # meshfed: a plain string prefix


@attrs.frozen(slots=True)
class IngressPath:
    host: str  # "" or "*" for any host
    path: str  # matched as ``path_type`` says
    backend: ServiceRef
    port: int | str  # service port number or name
    grpc: bool = False
    default: bool = False  # the Ingress's defaultBackend: any host, after every other path
    path_type: PathType = PathType.IMPLEMENTATION_SPECIFIC


@attrs.frozen(slots=True)
class Gateway:
    """An ingress gateway's routes, from meshfed's Gateway kind or a Kubernetes Ingress."""

    name: str
    namespace: str
    file: str
    kind: str
    paths: tuple[IngressPath, ...]
    tls_hosts: tuple[tuple[str, str], ...] = ()  # (host, secret or certificate folder)
    port: int = 0  # 0: the gateway's default listener port

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"
