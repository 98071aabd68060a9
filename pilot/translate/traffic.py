"""The routing config resolved against the registry: which rules, subsets and policies apply where.

Route rules, destination policies and mirrors name services the way their authors wrote them
(``reviews``, ``reviews.default``, an FQDN). Every translator needs the same answers: which
registry hostname a rule is for, which label subsets of a service some rule or policy refers to
(each becomes a subset cluster), which policy governs a cluster, and which source-matching rules
apply to a given proxy. :class:`TrafficIndex` computes those answers once per (config snapshot,
service set) so translators stay pure and cheap.

Promises:
- Equal inputs give equal indexes (plain sorted tuples), so an unchanged config never changes a
  version; :attr:`TrafficIndex.signature` changes exactly when a translation could.
- Rules for one destination keep the snapshot's application order (highest precedence first,
  conflicts broken by namespace/name, see ``pilot.config.conflicts``).
- Make before break: an index can carry ``extra_subsets`` / ``extra_egress`` (the previous
  config's), so clusters a proxy may still route to outlive the rules that referenced them by
  one config change (see :func:`pilot.traffic_hooks.stage_config`).
- A reference that resolves to no service is kept in :attr:`TrafficIndex.unresolved` (for
  ``/debug/configz``) and otherwise ignored: a rule for a service that does not exist yet
  simply starts to apply when the service appears.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import attrs

from meshfed.pilot.config.model import DestinationPolicy, EgressRule, RouteRule, ServiceRef
from meshfed.pilot.config.store import ConfigSnapshot
from meshfed.registry.model import Endpoint, Labels, Port, Service


@attrs.frozen(slots=True)
class TrafficOptions:
    """Operator settings for traffic translation (the mesh config's ``pilot:`` section).

    ``dns_resolvers``: ``ip:port`` addresses of the DNS servers sidecars use for external
    (egress) names; empty means the host's resolver. Split-horizon setups need it, and so do
    the tests, which name loopback "external" servers without touching ``/etc/hosts``.
    ``egress_ca_file``: the CA bundle sidecars verify external servers against when they
    originate TLS for Istio 0.2-style ``http://host:443`` requests (default: the system's).
    ``gateway_certs_dir``: where a gateway finds ``<secret>/tls.crt`` and ``tls.key`` for a
    TLS secret named by an Ingress or Gateway (Istio 0.2 mounted them at a fixed path too).
    """

    dns_resolvers: tuple[str, ...] = ()
    gateway_certs_dir: str = ""
    egress_ca_file: str = ""  # CA bundle for TLS the sidecar originates (default: system)

    @classmethod
    def from_pilot_config(cls, pilot: Mapping[str, object]) -> TrafficOptions:
        raw = pilot.get("egressDnsResolvers") or ()
        resolvers = tuple(str(r) for r in raw) if isinstance(raw, list | tuple) else ()
        return cls(
            resolvers,
            str(pilot.get("gatewayCertsDir") or ""),
            str(pilot.get("egressCaFile") or ""),
        )


def _sorted_subsets(subsets: Mapping[str, set[Labels]]) -> dict[str, tuple[Labels, ...]]:
    return {
        h: tuple(sorted(s, key=lambda labels: labels.items_tuple))
        for h, s in sorted(subsets.items())
    }


def subset_name(labels: Labels) -> str:
    """The subset part of a cluster name: canonical ``k=v`` pairs joined by commas."""
    return ",".join(f"{k}={v}" for k, v in labels.items())


@attrs.frozen(slots=True)
class TrafficIndex:
    snapshot: ConfigSnapshot = attrs.field(factory=ConfigSnapshot)
    options: TrafficOptions = attrs.field(factory=TrafficOptions)
    services: Mapping[str, Service] = attrs.field(factory=dict, eq=False)
    rules: Mapping[str, tuple[RouteRule, ...]] = attrs.field(factory=dict)  # by destination host
    subsets: Mapping[str, tuple[Labels, ...]] = attrs.field(factory=dict)
    policies: Mapping[str, tuple[DestinationPolicy, ...]] = attrs.field(factory=dict)
    resolved: Mapping[tuple[str, ServiceRef], str] = attrs.field(factory=dict)
    unresolved: tuple[str, ...] = ()
    referenced: Mapping[str, tuple[Labels, ...]] = attrs.field(factory=dict)  # this config's own
    extra_subsets: Mapping[str, tuple[Labels, ...]] = attrs.field(factory=dict)
    extra_egress: tuple[EgressRule, ...] = ()

    @classmethod
    def build(
        cls,
        snapshot: ConfigSnapshot,
        services: Iterable[Service],
        options: TrafficOptions | None = None,
        extra_subsets: Mapping[str, tuple[Labels, ...]] | None = None,
        extra_egress: tuple[EgressRule, ...] = (),
    ) -> TrafficIndex:
        """Resolve ``snapshot`` against ``services``; ``extra_*`` keep clusters of a previous
        config alive (subset clusters of hosts that still exist, egress clusters)."""
        services_by_host = {s.hostname: s for s in services}
        svc_list = list(services_by_host.values())
        resolved: dict[tuple[str, ServiceRef], str] = {}
        unresolved: list[str] = []

        def resolve(ref: ServiceRef, namespace: str, what: str) -> str | None:
            key = (namespace, attrs.evolve(ref, labels=Labels()))
            if key not in resolved:
                host = ref.resolve(svc_list, namespace)
                if host is None:
                    unresolved.append(f"{what}: no service {ref} in namespace {namespace}")
                    return None
                resolved[key] = host
            return resolved[key]

        rules: dict[str, list[RouteRule]] = {}
        subsets: dict[str, set[Labels]] = {}
        for rule in snapshot.route_rules:
            host = resolve(rule.destination, rule.namespace, rule.ref)
            if host is None:
                continue
            rules.setdefault(host, []).append(rule)
            for dest in rule.route:
                target = host
                if dest.destination is not None:
                    target = resolve(dest.destination, rule.namespace, rule.ref) or ""
                if target and dest.labels:
                    subsets.setdefault(target, set()).add(dest.labels)
            if rule.mirror is not None:
                target = resolve(rule.mirror, rule.namespace, rule.ref + " mirror")
                if target and rule.mirror.labels:
                    subsets.setdefault(target, set()).add(rule.mirror.labels)
            if rule.match.source is not None:
                resolve(rule.match.source, rule.namespace, rule.ref + " source")
        # What VirtualServices bound to gateways route to: resolved and given their subset
        # clusters like sidecar rules, but never part of a sidecar's rules.
        for bound in snapshot.gateway_routes:
            rule = bound.rule
            for dest in rule.route:
                assert dest.destination is not None
                target = resolve(dest.destination, rule.namespace, rule.ref) or ""
                if target and dest.labels:
                    subsets.setdefault(target, set()).add(dest.labels)
            if rule.mirror is not None:
                target = resolve(rule.mirror, rule.namespace, rule.ref + " mirror") or ""
                if target and rule.mirror.labels:
                    subsets.setdefault(target, set()).add(rule.mirror.labels)
        for l4 in snapshot.l4_routes:
            for d in l4.destinations:
                target = resolve(d.host, l4.namespace, l4.ref) or ""
                if target and d.host.labels:
                    subsets.setdefault(target, set()).add(d.host.labels)
        policies: dict[str, list[DestinationPolicy]] = {}
        for policy in snapshot.destination_policies:
            host = resolve(policy.destination, policy.namespace, policy.ref)
            if host is None:
                continue
            policies.setdefault(host, []).append(policy)
            if policy.source is not None:
                resolve(policy.source, policy.namespace, policy.ref + " source")
            if policy.destination.labels:
                subsets.setdefault(host, set()).add(policy.destination.labels)
        referenced = _sorted_subsets(subsets)
        for host, extra in (extra_subsets or {}).items():
            if host in services_by_host:
                subsets.setdefault(host, set()).update(extra)
        return cls(
            snapshot,
            options or TrafficOptions(),
            services_by_host,
            {h: tuple(r) for h, r in sorted(rules.items())},
            _sorted_subsets(subsets),
            {h: tuple(p) for h, p in sorted(policies.items())},
            dict(sorted(resolved.items(), key=lambda kv: (kv[0][0], str(kv[0][1])))),
            tuple(sorted(set(unresolved))),
            referenced,
            dict(extra_subsets or {}),
            extra_egress,
        )

    def rebuilt(self, services: Iterable[Service]) -> TrafficIndex:
        """The same config (and extras) resolved against a new service set."""
        return TrafficIndex.build(
            self.snapshot, services, self.options, self.extra_subsets, self.extra_egress
        )

    # -- lookups ----------------------------------------------------------------------------
    def host_of(self, ref: ServiceRef, namespace: str) -> str | None:
        return self.resolved.get((namespace, attrs.evolve(ref, labels=Labels())))

    def cluster_signature(self, host: str) -> tuple:
        """Everything about ``host``'s clusters that config decides (subsets, policies)."""
        return (self.subsets.get(host, ()), self.policies.get(host, ()))

    def policy_for(
        self, host: str, labels: Labels, sources: frozenset[str] = frozenset()
    ) -> DestinationPolicy | None:
        """The policy for ``host``'s cluster with subset ``labels`` (empty: the whole service).

        A policy naming exactly these labels wins; otherwise the service-wide policy applies
        to every subset too, so a circuit breaker set for ``reviews`` also guards
        ``reviews`` v2. Policies with a ``source`` apply only for proxies whose
        :meth:`source_key` (``sources``) names them, and then win over source-less ones.
        """
        policies = self.policies.get(host, ())
        for candidates in (
            [p for p in policies if p.source is not None and p.ref in sources],
            [p for p in policies if p.source is None],
        ):
            exact = [p for p in candidates if p.destination.labels == labels]
            if exact:
                return exact[0]
            general = [p for p in candidates if not p.destination.labels]
            if general:
                return general[0]
        return None

    def source_policy_hosts(self, sources: frozenset[str]) -> list[str]:
        """Destinations with a per-source policy that applies to a proxy with ``sources``."""
        return sorted(
            h
            for h, ps in self.policies.items()
            if any(p.source is not None and p.ref in sources for p in ps)
        )

    @property
    def has_source_rules(self) -> bool:
        return any(r.match.source is not None for rs in self.rules.values() for r in rs) or any(
            p.source is not None for ps in self.policies.values() for p in ps
        )

    def source_key(self, own: Sequence[tuple[Service, Endpoint]]) -> frozenset[str]:
        """Refs of the source-matching rules that apply to a proxy fronting ``own``.

        Istio 0.2 semantics: ``match.source`` names the calling service (and optionally its
        labels); the rule applies to requests leaving a proxy of that service whose workload
        carries those labels. The proxy's own endpoints in the registry say who it is.
        """
        out = set()
        with_source: list[tuple[str, ServiceRef, str]] = [
            (rule.ref, rule.match.source, rule.namespace)
            for rules in self.rules.values()
            for rule in rules
            if rule.match.source is not None
        ]
        with_source += [
            (p.ref, p.source, p.namespace)
            for ps in self.policies.values()
            for p in ps
            if p.source is not None
        ]
        for ref, source, namespace in with_source:
            host = self.host_of(source, namespace)
            if any(svc.hostname == host and ep.labels.matches(source.labels) for svc, ep in own):
                out.add(ref)
        return frozenset(out)

    def cluster_for(
        self, host: str, port: Port, labels: Labels | None = None, prefer_port: int | None = None
    ) -> str | None:
        """The cluster name for ``host`` (subset ``labels``): on ``prefer_port`` when given, None
        when the service lacks it as an HTTP port (a named port is never swapped for another);
        else on the same port number as ``port`` when the service has it, else its first HTTP
        port; None when the host is unknown."""
        from meshfed.pilot.translate import names

        service = self.services.get(host)
        if service is None:
            return None
        if prefer_port is not None:
            chosen = service.port_by_number(prefer_port)
            if chosen is not None and not chosen.protocol.is_http:
                chosen = None
        else:
            chosen = service.port_by_number(port.number) or next(
                (p for p in service.ports if p.protocol.is_http), None
            )
        if chosen is None:
            return None
        return names.outbound_cluster(host, chosen.number, subset_name(labels or Labels()))
