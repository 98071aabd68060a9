"""Cross-resource checks of a routing config against a service catalog (``meshfed analyze``).

Validation (one parser per kind) proves each object well formed on its own; these checks find
what is only wrong in combination, each as a :class:`Finding` with a stable code, a severity
and the object it is about:

====== ======= ==================================================================================
code   level   finding
====== ======= ==================================================================================
MF0101 error   a rule or policy's destination names no service in the catalog
MF0102 error   a route names a subset no DestinationRule defines (its requests fail with 503)
MF0103 warning a subset (label set) a rule or policy selects is carried by no endpoint of its host
MF0104 warning one host is supplied by more than one registry (their values are merged)
MF0105 error   a gateway has no route, or none of its routes' backends exists
MF0106 error   another reference (route to another service, mirror, source, gateway backend)
               names no service, or a gateway route's destination port the service lacks
MF0107 warning two rules route one destination with the same precedence
MF0108 info    an object is not applied because a newer API generation covers its host
====== ======= ==================================================================================

Pure: the checks read a :class:`~meshfed.pilot.config.store.ConfigSnapshot` and a
:class:`Catalog`; the CLI builds them from files, the hub from its live state, so both report
the same findings for the same config.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import attrs

from meshfed.pilot.config.istio import UNDEFINED_SUBSET_LABEL
from meshfed.pilot.config.model import DestinationPolicy, RouteRule, ServiceRef
from meshfed.pilot.config.store import ConfigSnapshot
from meshfed.registry.aggregate import AggregateRegistry
from meshfed.registry.model import Endpoint, Labels, Service

SEVERITIES = ("error", "warning", "info")


@attrs.frozen(slots=True)
class Finding:
    code: str
    severity: str  # error, warning or info
    object: str  # "RouteRule default/reviews-v2", "Gateway default/web", "host reviews..."
    message: str
    file: str = ""

    def as_dict(self) -> dict[str, str]:
        return attrs.asdict(self)


@attrs.frozen(slots=True)
class Catalog:
    """What the rules are resolved against: services, their endpoints, which registries supply
    each host, and (optionally) how they disagree."""

    services: Mapping[str, Service] = attrs.field(factory=dict)
    endpoints: Mapping[str, Sequence[Endpoint]] = attrs.field(factory=dict)
    sources: Mapping[str, Sequence[str]] = attrs.field(factory=dict)  # host -> registries
    disagreements: Mapping[str, Sequence[str]] = attrs.field(factory=dict)  # host -> texts

    @classmethod
    def of(
        cls, services: Iterable[Service], endpoints: Mapping[str, Sequence[Endpoint]]
    ) -> Catalog:
        by_host = {s.hostname: s for s in services}
        sources: dict[str, list[str]] = {}
        for host, eps in endpoints.items():
            for registry in sorted({e.registry for e in eps if e.registry}):
                sources.setdefault(host, []).append(registry)
        return cls(by_host, dict(endpoints), sources)

    @classmethod
    def of_aggregate(cls, aggregate: AggregateRegistry) -> Catalog:
        """The live merged view, with each host's supplying registries and their conflicts."""
        services = aggregate.services()
        sources: dict[str, list[str]] = {}
        for member in aggregate.members:
            for host in sorted({*member.services, *member.endpoints}):
                if member.services.get(host) or member.endpoints.get(host):
                    sources.setdefault(host, []).append(member.name)
        disagreements: dict[str, list[str]] = {}
        for conflict in aggregate.conflicts():
            disagreements.setdefault(conflict.hostname, []).append(str(conflict))
        endpoints = {h: aggregate.endpoints(h) for h in services}
        return cls(dict(services), endpoints, sources, disagreements)


def analyze(snapshot: ConfigSnapshot, catalog: Catalog) -> list[Finding]:
    """Every finding, errors first, then by object and code."""
    found = [
        *_rules(snapshot.route_rules, catalog),
        *_policies(snapshot.destination_policies, catalog),
        *_gateways(snapshot, catalog),
        *_istio_gateways(snapshot, catalog),
        *_overlaps(catalog),
        *(Finding("MF0107", "warning", c.loser, str(c), "") for c in snapshot.conflicts),
        *(
            Finding("MF0108", "info", note.split(" is not applied")[0], note)
            for note in snapshot.notes
            if " is not applied" in note
        ),
    ]
    unique = list(dict.fromkeys(found))
    return sorted(unique, key=lambda f: (SEVERITIES.index(f.severity), f.object, f.code))


def has_errors(findings: Iterable[Finding]) -> bool:
    return any(f.severity == "error" for f in findings)


class _Resolver:
    """:meth:`ServiceRef.resolve`'s answers from indexes built once per run (``resolve``
    scans the whole catalog per call, quadratic over thousands of rules)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.by_host = dict(catalog.services)
        # A bare name's fallback: the first host, in order, whose first label is that name.
        self.by_label: dict[tuple[str, str], str] = {}
        for host in sorted(self.by_host):
            self.by_label.setdefault((host.split(".", 1)[0], self.by_host[host].namespace), host)

    def host(self, ref: ServiceRef, namespace: str) -> str | None:
        for host in ref.candidates(namespace):
            if host in self.by_host:
                return host
        if ref.name and not ref.service:
            return self.by_label.get((ref.name.lower(), ref.namespace or namespace))
        return None

    def carried(self, host: str, labels: Labels) -> bool:
        return any(e.labels.matches(labels) for e in self.catalog.endpoints.get(host, ()))


def _subset_findings(
    obj: RouteRule | DestinationPolicy, host: str, labels: Labels, resolver: _Resolver
) -> Iterator[Finding]:
    if UNDEFINED_SUBSET_LABEL in labels:
        return  # reported as MF0102 by the rule check
    if labels and not resolver.carried(host, labels):
        wanted = ",".join(f"{k}={v}" for k, v in labels.items())
        yield Finding(
            "MF0103", "warning", obj.ref,
            f"subset {wanted} of {host} matches no endpoint: traffic sent to it fails (503)",
            obj.file,
        )  # fmt: skip


def _rules(rules: Iterable[RouteRule], catalog: Catalog) -> Iterator[Finding]:
    resolver = _Resolver(catalog)
    for rule in rules:
        host = resolver.host(rule.destination, rule.namespace)
        if host is None:
            yield Finding(
                "MF0101", "error", rule.ref,
                f"destination {rule.destination} names no service in namespace {rule.namespace}",
                rule.file,
            )  # fmt: skip
        for dest in rule.route:
            target = host
            if dest.destination is not None:
                target = resolver.host(dest.destination, rule.namespace)
                if target is None:
                    yield Finding(
                        "MF0106", "error", rule.ref,
                        f"route destination {dest.destination} names no service",
                        rule.file,
                    )  # fmt: skip
            undefined = dest.labels.get(UNDEFINED_SUBSET_LABEL)
            if undefined is not None:
                yield Finding(
                    "MF0102", "error", rule.ref,
                    f"routes to subset {undefined!r} of {target or rule.destination}, which no "
                    "DestinationRule defines",
                    rule.file,
                )  # fmt: skip
            elif target is not None:
                yield from _subset_findings(rule, target, dest.labels, resolver)
        for what, ref in (("mirror", rule.mirror), ("source", rule.match.source)):
            if ref is None:
                continue
            target = resolver.host(ref, rule.namespace)
            if target is None:
                yield Finding(
                    "MF0106", "error", rule.ref, f"{what} {ref} names no service", rule.file
                )
            elif what == "mirror":
                yield from _subset_findings(rule, target, ref.labels, resolver)


def _policies(policies: Iterable[DestinationPolicy], catalog: Catalog) -> Iterator[Finding]:
    resolver = _Resolver(catalog)
    for policy in policies:
        host = resolver.host(policy.destination, policy.namespace)
        if host is None:
            yield Finding(
                "MF0101", "error", policy.ref,
                f"destination {policy.destination} names no service in namespace "
                f"{policy.namespace}",
                policy.file,
            )  # fmt: skip
        else:
            yield from _subset_findings(policy, host, policy.destination.labels, resolver)
        if policy.source is not None and resolver.host(policy.source, policy.namespace) is None:
            yield Finding(
                "MF0106", "error", policy.ref, f"source {policy.source} names no service",
                policy.file,
            )  # fmt: skip


def _gateways(snapshot: ConfigSnapshot, catalog: Catalog) -> Iterator[Finding]:
    resolver = _Resolver(catalog)
    for gateway in snapshot.gateways:
        if not gateway.paths:
            yield Finding(
                "MF0105", "error", gateway.ref, "the gateway has no route: it serves only 404s",
                gateway.file,
            )  # fmt: skip
            continue
        missing = []
        for path in gateway.paths:
            if resolver.host(path.backend, gateway.namespace) is None:
                missing.append(path)
                where = f"{path.host or '*'}{path.path}"
                yield Finding(
                    "MF0106", "error", gateway.ref,
                    f"backend {path.backend} of {where} names no service",
                    gateway.file,
                )  # fmt: skip
        if len(missing) == len(gateway.paths):
            yield Finding(
                "MF0105", "error", gateway.ref,
                "none of the gateway's routes has a backend that exists: it serves only errors",
                gateway.file,
            )  # fmt: skip


def _istio_gateways(snapshot: ConfigSnapshot, catalog: Catalog) -> Iterator[Finding]:
    """Today's Gateways: one no VirtualService is bound to serves nothing; a bound route's
    destination that names no service, or a port its service lacks, takes no traffic."""
    resolver = _Resolver(catalog)
    bound = {g for r in snapshot.gateway_routes for g in r.gateways}
    bound |= {g for r in snapshot.l4_routes for g in r.gateways}
    for gw in snapshot.istio_gateways:
        if gw.key not in bound:
            yield Finding(
                "MF0105", "error", gw.ref,
                "no VirtualService is bound to the gateway: it serves only 404s", gw.file,
            )  # fmt: skip
    for route in snapshot.gateway_routes:
        rule = route.rule
        for i, dest in enumerate(rule.route):
            if dest.destination is None:
                continue
            host = resolver.host(dest.destination, rule.namespace)
            if host is None:
                yield Finding(
                    "MF0106", "error", rule.ref,
                    f"gateway route to {dest.destination} names no service", rule.file,
                )  # fmt: skip
                continue
            port = catalog.services[host].port_by_number(dest.port) if dest.port else None
            if dest.port and (port is None or not port.protocol.is_http):
                have = ", ".join(
                    str(p.number) for p in catalog.services[host].ports if p.protocol.is_http
                )
                yield Finding(
                    "MF0106", "error", rule.ref,
                    f"route[{i}].destination.port {dest.port}: {host} has no such HTTP port "
                    f"(expected one of: {have or 'none'}); that destination takes no traffic",
                    rule.file,
                )  # fmt: skip
    for l4 in snapshot.l4_routes:
        for d in l4.destinations:
            if resolver.host(d.host, l4.namespace) is None:
                yield Finding(
                    "MF0106", "error", l4.ref,
                    f"{l4.kind} route to {d.host} names no service", l4.file,
                )  # fmt: skip


def _overlaps(catalog: Catalog) -> Iterator[Finding]:
    for host in sorted(catalog.sources):
        registries = list(dict.fromkeys(catalog.sources[host]))
        if len(registries) < 2:
            continue
        detail = "; ".join(catalog.disagreements.get(host, ()))
        yield Finding(
            "MF0104", "warning", f"host {host}",
            f"supplied by registries {', '.join(registries)}"
            + (f" that disagree: {detail}" if detail else " (endpoints merged)"),
        )  # fmt: skip
