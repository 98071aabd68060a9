"""Today's Istio routing API (``networking.istio.io``) converted to the one translation model.

A ``VirtualService`` or ``DestinationRule`` is parsed here and becomes the same
:class:`RouteRule` / :class:`DestinationPolicy` objects that Istio 0.2's kinds give, so there is
one translator and a rule means the same Envoy config whichever API generation wrote it.

- A VirtualService's ``http`` entries become one RouteRule per (entry, match block), with
  precedences that keep Istio's first-match order; subsets are names until the snapshot
  resolves them against the DestinationRules (:func:`resolve`).
- A DestinationRule becomes one DestinationPolicy for the host and one per subset that has a
  ``trafficPolicy`` of its own.
- Every field meshfed does not implement is refused with an error naming it: a rule accepted
  here is a rule that is enforced.

Precedence between generations: where a VirtualService routes a host, the VirtualService wins
and that host's RouteRules are not applied; where a DestinationRule covers a host, its
DestinationPolicies are not applied. :func:`resolve` reports each such override.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import attrs

from meshfed.core import validators as v
from meshfed.core.resources import ConfigError, Document, FieldReader, describe
from meshfed.pilot.config.model import (
    CircuitBreaker,
    Cors,
    DestinationPolicy,
    Fault,
    LoadBalancer,
    Match,
    MatchKind,
    Retry,
    Rewrite,
    RouteRule,
    ServiceRef,
    StringMatch,
    WeightedDestination,
)
from meshfed.registry.model import Labels

ISTIO_API_VERSIONS = frozenset(
    {
        "networking.istio.io/v1alpha3",
        "networking.istio.io/v1beta1",
        "networking.istio.io/v1",
    }
)
MAX_HTTP_ROUTES = 10_000
MAX_U32 = (1 << 31) - 1  # Envoy's thresholds and counters are 32-bit
UNDEFINED_SUBSET_LABEL = "subset.meshfed.io/undefined"


@attrs.frozen(slots=True)
class SubsetRefs:
    """Subset names one converted rule still needs resolved (``""``: none)."""

    route: tuple[str, ...] = ()
    mirror: str = ""


MESH = "mesh"


@attrs.frozen(slots=True)
class L4Destination:
    host: ServiceRef
    port: int
    weight: int = 100
    subset: str = ""


@attrs.frozen(slots=True)
class L4Route:
    """A VirtualService ``tls`` (by SNI) or ``tcp`` route entry, as bound to gateways."""

    name: str
    namespace: str
    file: str
    kind: str  # "tls" or "tcp"
    gateways: tuple[str, ...]  # "namespace/name"
    sni_hosts: tuple[str, ...]  # tls: the SNI names it matches (patterns)
    port: int  # the gateway port it is limited to, 0: any
    destinations: tuple[L4Destination, ...]

    @property
    def ref(self) -> str:
        return f"VirtualService {self.namespace}/{self.name}"


@attrs.frozen(slots=True)
class GatewayRoute:
    """One converted http rule of a VirtualService bound to gateways, for one of its hosts."""

    gateways: tuple[str, ...]  # "namespace/name"
    host: str  # the virtual host's domain pattern (a short name already made an FQDN)
    rule: RouteRule  # every route names its destination


@attrs.frozen(slots=True)
class VirtualService:
    name: str
    namespace: str
    file: str
    rules: tuple[tuple[RouteRule, SubsetRefs], ...]
    gateways: tuple[str, ...] = (MESH,)  # "mesh" and/or "namespace/name"
    hosts: tuple[str, ...] = ()
    l4_routes: tuple[L4Route, ...] = ()

    @property
    def on_mesh(self) -> bool:
        return MESH in self.gateways

    @property
    def bound_gateways(self) -> tuple[str, ...]:
        return tuple(g for g in self.gateways if g != MESH)

    @property
    def ref(self) -> str:
        return f"VirtualService {self.namespace}/{self.name}"


@attrs.frozen(slots=True)
class DestinationRule:
    name: str
    namespace: str
    file: str
    host: ServiceRef
    subsets: tuple[tuple[str, Labels], ...]
    policies: tuple[DestinationPolicy, ...]

    @property
    def ref(self) -> str:
        return f"DestinationRule {self.namespace}/{self.name}"


def host_ref(host: str, namespace: str) -> ServiceRef:
    """An Istio host: a short name (in the object's namespace), ``name.ns``, the Kubernetes
    FQDN, or any other FQDN (a Consul or external name)."""
    parts = host.lower().split(".")
    if len(parts) == 1:
        return ServiceRef(name=parts[0], namespace=namespace)
    if len(parts) == 2:
        return ServiceRef(name=parts[0], namespace=parts[1])
    if len(parts) >= 4 and parts[2] == "svc":
        return ServiceRef(name=parts[0], namespace=parts[1], domain=".".join(parts[3:]))
    return ServiceRef(service=host.lower())


def host_key(ref: ServiceRef, namespace: str) -> str:
    return ref.candidates(namespace)[0]


def check_api_version(doc: Document, r: FieldReader) -> None:
    """An error on ``apiVersion`` unless it is one of today's networking.istio.io versions."""
    if doc.api_version not in ISTIO_API_VERSIONS:
        r.errors.append(
            ConfigError(
                doc.file,
                doc.ref,
                "apiVersion",
                f"expected one of {', '.join(sorted(ISTIO_API_VERSIONS))}, got {doc.api_version!r}",
            )
        )


def _refuse(r: FieldReader, fields: Iterable[str], why: str) -> None:
    for name in fields:
        if name in r.data:
            r.error(name, f"not supported by meshfed ({why}); remove it")


def _host(r: FieldReader, name: str, required: bool = True) -> str:
    return r.checked(name, functools.partial(v.hostname, wildcard=False), required=required)


def _string_match(r: FieldReader) -> StringMatch | None:
    r.unknown_fields({"exact", "prefix", "regex"})
    given = [k for k in MatchKind if r.data.get(k.value) is not None]
    if len(given) != 1:
        r.error("", "expected exactly one of exact, prefix, regex")
        return None
    check = {
        MatchKind.REGEX: v.re2_regex,
        MatchKind.PREFIX: v.non_empty_header_value,
        MatchKind.EXACT: v.header_value,
    }[given[0]]
    value = r.checked(given[0].value, check, default=None)
    return None if value is None else StringMatch(given[0], value)


MATCH_FIELDS = {"name", "uri", "scheme", "method", "authority", "headers"}
MATCH_REFUSED = {
    "port",
    "sourceLabels",
    "gateways",
    "queryParams",
    "ignoreUriCase",
    "withoutHeaders",
    "sourceNamespace",
    "statPrefix",
}


def _match(r: FieldReader) -> Match:
    _refuse(r, sorted(MATCH_REFUSED), "a match on this attribute is not implemented")
    r.unknown_fields(MATCH_FIELDS | MATCH_REFUSED)
    headers: list[tuple[str, StringMatch]] = []
    for key in ("uri", "scheme", "method", "authority"):
        sub = r.reader(key)
        if sub is not None and (m := _string_match(sub)) is not None:
            headers.append((key, m))
    header_reader = r.reader("headers")
    if header_reader is not None:
        for key in sorted(map(str, header_reader.data)):
            sub = header_reader.reader(key, required=True)
            try:
                name = v.header_name(key)
            except v.Invalid as exc:
                header_reader.error(key, str(exc))
                continue
            if sub is not None and (m := _string_match(sub)) is not None:
                headers.append((name.lower(), m))
    return Match(headers=tuple(headers))


def _percentage(r: FieldReader) -> float:
    """``percentage: {value: 0..100}`` (or the older integer ``percent``); 100 when absent."""
    if "percentage" in r.data and "percent" in r.data:
        r.error("percent", "expected percentage or percent, not both")
    pct = r.reader("percentage")
    if pct is not None:
        pct.unknown_fields({"value"})
        return pct.number("value", default=0.0, maximum=100.0)
    if "percent" in r.data:
        return float(r.int("percent", minimum=0, maximum=100))
    return 100.0


def _fault(r: FieldReader) -> Fault:
    r.unknown_fields({"delay", "abort"})
    fault = Fault()
    delay = r.reader("delay")
    if delay is not None:
        _refuse(delay, ["exponentialDelay"], "only fixedDelay is implemented")
        delay.unknown_fields({"fixedDelay", "percentage", "percent", "exponentialDelay"})
        fixed = delay.checked("fixedDelay", v.positive_duration, required=True, default=None)
        fault = attrs.evolve(fault, delay_percent=_percentage(delay), fixed_delay=fixed)
    abort = r.reader("abort")
    if abort is not None:
        _refuse(abort, ["grpcStatus", "http2Error"], "only httpStatus is implemented")
        abort.unknown_fields({"httpStatus", "percentage", "percent", "grpcStatus", "http2Error"})
        status = abort.int("httpStatus", required=True, minimum=200, maximum=599)
        fault = attrs.evolve(fault, abort_percent=_percentage(abort), abort_status=status or None)
    if delay is None and abort is None:
        r.error("", "expected delay or abort")
    return fault


def _destination(
    r: FieldReader | None, namespace: str, allow_port: bool = False
) -> tuple[ServiceRef | None, str, int]:
    if r is None:
        return None, "", 0
    r.unknown_fields({"host", "subset", "port"})
    port = r.reader("port")
    number = 0
    if port is not None and not allow_port:
        port.error(
            "", "not supported by meshfed with `mesh` (routes go to the port the request used)"
        )
    elif port is not None:
        port.unknown_fields({"number"})
        number = port.port("number", required=True)
    host = _host(r, "host")
    subset = r.checked("subset", v.dns1123_label)
    return (host_ref(host, namespace) if host else None), subset, number


def _cors(r: FieldReader) -> Cors:
    r.unknown_fields(
        {
            "allowOrigin",
            "allowOrigins",
            "allowMethods",
            "allowHeaders",
            "exposeHeaders",
            "maxAge",
            "allowCredentials",
        }
    )
    origins = list(r.checked_list("allowOrigin", v.header_value))
    for o in r.readers("allowOrigins"):
        m = _string_match(o)
        if m is not None and m.kind is not MatchKind.EXACT:
            o.error(m.kind.value, "not supported by meshfed (only exact origins)")
        elif m is not None:
            origins.append(m.value)
    return Cors(
        tuple(origins),
        tuple(r.checked_list("allowMethods", v.http_token)),
        tuple(r.checked_list("allowHeaders", v.http_token)),
        tuple(r.checked_list("exposeHeaders", v.http_token)),
        r.checked("maxAge", v.duration, default=None),
        r.bool("allowCredentials"),
    )


def _request_headers(r: FieldReader) -> dict[str, str]:
    r.unknown_fields({"request", "response"})
    _refuse(r, ["response"], "response header edits are not implemented")
    request = r.reader("request")
    out: dict[str, str] = {}
    if request is None:
        return out
    request.unknown_fields({"add", "set", "remove"})
    _refuse(request, ["set", "remove"], "only request.add is implemented")
    for key, value in request.str_map("add").items():
        try:
            out[v.header_name(key)] = v.header_value(value)
        except v.Invalid as exc:
            request.error(f"add.{key}", str(exc))
    return out


HTTP_FIELDS = {
    "name",
    "match",
    "route",
    "redirect",
    "rewrite",
    "timeout",
    "retries",
    "fault",
    "mirror",
    "corsPolicy",
    "headers",
}
HTTP_REFUSED = {"delegate", "directResponse", "mirrorPercent", "mirrorPercentage", "mirrors"}


def _http_route(
    r: FieldReader, dest: ServiceRef, namespace: str, allow_port: bool = False
) -> tuple[list[Match], dict[str, object], SubsetRefs]:
    _refuse(r, sorted(HTTP_REFUSED), "not implemented")
    r.unknown_fields(HTTP_FIELDS | HTTP_REFUSED)
    matches = [_match(m) for m in r.readers("match")] or [Match()]
    fields: dict[str, object] = {}
    routes: list[WeightedDestination] = []
    subsets: list[str] = []
    route_list = list(r.readers("route"))
    for route in route_list:
        route.unknown_fields({"destination", "weight", "headers"})
        _refuse(route, ["headers"], "per-destination header edits are not implemented")
        target, subset, port = _destination(
            route.reader("destination", required=True), namespace, allow_port
        )
        weight = route.int(
            "weight", default=100 if len(route_list) == 1 else 0, minimum=0, maximum=100
        )
        if target is None:
            continue
        same = host_key(target, namespace) == host_key(dest, namespace)
        routes.append(
            WeightedDestination(weight=weight, destination=None if same else target, port=port)
        )
        subsets.append(subset)
    if not route_list and "redirect" not in r.data:
        r.error("route", "expected route or redirect")
    if routes and sum(w.weight for w in routes) != 100:
        r.error("route", f"expected weights summing to 100, got {sum(w.weight for w in routes)}")
    fields["route"] = tuple(routes)
    redirect = r.reader("redirect")
    if redirect is not None:
        redirect.unknown_fields({"uri", "authority", "redirectCode", "scheme", "port"})
        _refuse(redirect, ["scheme", "port"], "only uri and authority redirects")
        if redirect.int("redirectCode", default=301) != 301:
            redirect.error("redirectCode", "expected 301 (the only redirect code meshfed sends)")
        fields["redirect"] = Rewrite(
            redirect.checked("uri", v.header_value), redirect.checked("authority", v.authority)
        )
        if routes:
            r.error("redirect", "expected redirect alone, without route")
    rewrite = r.reader("rewrite")
    if rewrite is not None:
        rewrite.unknown_fields({"uri", "authority", "uriRegexRewrite"})
        _refuse(rewrite, ["uriRegexRewrite"], "only uri and authority rewrites")
        fields["rewrite"] = Rewrite(
            rewrite.checked("uri", v.header_value), rewrite.checked("authority", v.authority)
        )
    fields["timeout"] = r.checked("timeout", v.duration, default=None)
    retries = r.reader("retries")
    if retries is not None:
        retries.unknown_fields({"attempts", "perTryTimeout", "retryOn", "retryRemoteLocalities"})
        _refuse(
            retries, ["retryOn", "retryRemoteLocalities"], "retries use meshfed's fixed retryOn"
        )
        fields["retry"] = Retry(
            retries.int("attempts", required=True, minimum=0, maximum=100),
            retries.checked("perTryTimeout", v.duration, default=None),
        )
    fault = r.reader("fault")
    if fault is not None:
        fields["fault"] = _fault(fault)
    mirror_subset = ""
    mirror = r.reader("mirror")
    if mirror is not None:
        fields["mirror"], mirror_subset, _ = _destination(mirror, namespace)
    cors = r.reader("corsPolicy")
    if cors is not None:
        fields["cors"] = _cors(cors)
    headers = r.reader("headers")
    if headers is not None:
        fields["append_headers"] = Labels(_request_headers(headers))
    return matches, fields, SubsetRefs(tuple(subsets), mirror_subset)


def _gateway_names(r: FieldReader, namespace: str) -> tuple[str, ...]:
    """``gateways``: ``mesh`` (every sidecar; the default) and Gateways as ``[namespace/]name``."""
    out: list[str] = []
    for i, item in enumerate(r.str_list("gateways")):
        raw = f"{item}"
        if raw == MESH:
            out.append(MESH)
            continue
        ns, slash, name = raw.rpartition("/")
        try:
            v.dns1123_label(name, "a Gateway name")
            if slash:
                v.dns1123_label(ns, "a namespace")
        except v.Invalid as exc:
            r.error(f"gateways[{i}]", f"expected mesh or [namespace/]name: {exc}")
            continue
        out.append(f"{ns if slash else namespace}/{name}")
    return tuple(dict.fromkeys(out)) or (MESH,)


L4_MATCH_REFUSED = {"destinationSubnets", "sourceLabels", "sourceNamespace", "gateways"}


def _l4_routes(
    r: FieldReader, kind: str, doc: Document, gateways: tuple[str, ...]
) -> list[L4Route]:
    out = []
    for i, entry in enumerate(r.readers(kind)):
        entry.unknown_fields({"match", "route"})
        sni: list[str] = []
        port = 0
        matches = list(entry.readers("match", required=kind == "tls"))
        if len(matches) > 1:
            entry.error("match", "expected at most one match block (write one entry per match)")
        for m in matches[:1]:
            _refuse(m, sorted(L4_MATCH_REFUSED), "a match on this attribute is not implemented")
            m.unknown_fields({"sniHosts", "port"} | L4_MATCH_REFUSED)
            if kind == "tls":
                sni = m.checked_list(
                    "sniHosts",
                    functools.partial(v.hostname, wildcard=True, bare_wildcard=True),
                    required=True,
                )
            elif "sniHosts" in m.data:
                m.error("sniHosts", "expected only in tls routes")
            port = m.port("port")
        dests = []
        route_list = list(entry.readers("route", required=True))
        for route in route_list:
            route.unknown_fields({"destination", "weight"})
            dest = route.reader("destination", required=True)
            if dest is None:
                continue
            dest.unknown_fields({"host", "subset", "port"})
            host = _host(dest, "host")
            subset = dest.checked("subset", v.dns1123_label)
            port_reader = dest.reader("port", required=True)
            number = 0
            if port_reader is not None:
                port_reader.unknown_fields({"number"})
                number = port_reader.port("number", required=True)
            weight = route.int(
                "weight", default=100 if len(route_list) == 1 else 0, minimum=0, maximum=100
            )
            if host:
                dests.append(L4Destination(host_ref(host, doc.namespace), number, weight, subset))
        if dests and sum(d.weight for d in dests) != 100:
            entry.error(
                "route", f"expected weights summing to 100, got {sum(d.weight for d in dests)}"
            )
        out.append(
            L4Route(
                f"{doc.name}.{kind}[{i}]",
                doc.namespace,
                doc.file,
                kind,
                gateways,
                tuple(sni),
                port,
                tuple(dests),
            )
        )
    return out


def gateway_domain(host: str, namespace: str) -> str:
    """A VirtualService host as a gateway virtual host's domain (Istio makes a short name the
    Kubernetes FQDN in the VirtualService's namespace)."""
    if host.startswith("*"):
        return host
    return host_key(host_ref(host, namespace), namespace)


def parse_virtual_service(doc: Document) -> tuple[VirtualService | None, list[ConfigError]]:
    r = FieldReader(doc.file, doc.ref, doc.spec, "spec")
    check_api_version(doc, r)
    r.unknown_fields({"hosts", "gateways", "http", "tcp", "tls", "exportTo"})
    _refuse(r, ["exportTo"], "every rule is visible mesh-wide")
    gateways = _gateway_names(r, doc.namespace)
    on_mesh = MESH in gateways
    bound = tuple(g for g in gateways if g != MESH)
    if on_mesh:
        _refuse(
            r, ["tcp", "tls"], "TCP and TLS routes are implemented for gateways only, not `mesh`"
        )
    # Sidecars route by service name; a gateway's virtual hosts may be wildcards.
    check = functools.partial(v.hostname, wildcard=not on_mesh, bare_wildcard=not on_mesh)
    hosts = r.checked_list("hosts", check, required=True)
    https = list(r.readers("http"))
    if len(https) > MAX_HTTP_ROUTES:
        r.error("http", f"expected at most {MAX_HTTP_ROUTES} routes, got {len(https)}")
        https = []
    converted: list[tuple[list[Match], dict[str, object], SubsetRefs]] = []
    for http in https:
        # The first host is the routing target the routes are relative to.
        dest = host_ref(hosts[0], doc.namespace) if hosts else ServiceRef(name="invalid")
        converted.append(_http_route(http, dest, doc.namespace, allow_port=not on_mesh))
    l4: list[L4Route] = []
    if not on_mesh:
        l4 = _l4_routes(r, "tls", doc, bound) + _l4_routes(r, "tcp", doc, bound)
    if r.errors:
        return None, r.errors
    total = sum(len(m) for m, _, _ in converted)
    rules: list[tuple[RouteRule, SubsetRefs]] = []
    for host in hosts:
        dest = host_ref(host, doc.namespace)
        position = 0
        for i, (matches, fields, subsets) in enumerate(converted):
            for j, match in enumerate(matches):
                suffix = f"http[{i}]" + (f".match[{j}]" if len(matches) > 1 else "")
                name = f"{doc.name}.{host}.{suffix}" if len(hosts) > 1 else f"{doc.name}.{suffix}"
                rule = RouteRule(
                    name,
                    doc.namespace,
                    doc.file,
                    dest,
                    total - position,
                    match,
                    kind="VirtualService",
                    **fields,  # type: ignore[arg-type]
                )
                rules.append((rule, subsets))
                position += 1
    return VirtualService(
        doc.name, doc.namespace, doc.file, tuple(rules), gateways, tuple(hosts), tuple(l4)
    ), []


LB_NAMES = {
    "ROUND_ROBIN": LoadBalancer.ROUND_ROBIN,
    "LEAST_CONN": LoadBalancer.LEAST_CONN,
    "LEAST_REQUEST": LoadBalancer.LEAST_CONN,
    "RANDOM": LoadBalancer.RANDOM,
}


def _traffic_policy(
    r: FieldReader,
) -> tuple[LoadBalancer | None, CircuitBreaker | None, float | None]:
    r.unknown_fields(
        {"loadBalancer", "connectionPool", "outlierDetection", "tls", "portLevelSettings", "tunnel"}
    )
    _refuse(r, ["tls"], "mutual TLS is set by the mesh config, not per destination")
    _refuse(r, ["portLevelSettings", "tunnel"], "not implemented")
    lb = None
    lb_reader = r.reader("loadBalancer")
    if lb_reader is not None:
        lb_reader.unknown_fields(
            {"simple", "consistentHash", "localityLbSetting", "warmupDurationSecs"}
        )
        _refuse(
            lb_reader,
            ["consistentHash", "localityLbSetting", "warmupDurationSecs"],
            "only loadBalancer.simple is implemented; locality failover is automatic",
        )
        simple = lb_reader.str("simple")
        if simple and simple not in LB_NAMES:
            lb_reader.error(
                "simple", f"expected one of {', '.join(LB_NAMES)}, got {describe(simple)}"
            )
        lb = LB_NAMES.get(simple)
    values: dict[str, object] = {}
    timeout = None
    pool = r.reader("connectionPool")
    if pool is not None:
        pool.unknown_fields({"tcp", "http"})
        tcp = pool.reader("tcp")
        if tcp is not None:
            tcp.unknown_fields({"maxConnections", "connectTimeout", "tcpKeepalive"})
            _refuse(tcp, ["tcpKeepalive"], "not implemented")
            values["max_connections"] = (
                tcp.int("maxConnections", minimum=1, maximum=MAX_U32) or None
            )
            timeout = tcp.checked("connectTimeout", v.positive_duration, default=None)
        http = pool.reader("http")
        if http is not None:
            ints = {
                "http1MaxPendingRequests": "http_max_pending_requests",
                "http2MaxRequests": "http_max_requests",
                "maxRequestsPerConnection": "http_max_requests_per_connection",
                "maxRetries": "http_max_retries",
            }
            refused = {
                "idleTimeout",
                "h2UpgradePolicy",
                "useClientProtocol",
                "maxConcurrentStreams",
            }
            http.unknown_fields(set(ints) | refused)
            _refuse(http, sorted(refused), "not implemented")
            for key, attr in ints.items():
                values[attr] = http.int(key, minimum=1, maximum=MAX_U32) or None
    outlier = r.reader("outlierDetection")
    if outlier is not None:
        known = {
            "consecutiveErrors",
            "consecutive5xxErrors",
            "interval",
            "baseEjectionTime",
            "maxEjectionPercent",
        }
        refused = {
            "consecutiveGatewayErrors",
            "minHealthPercent",
            "splitExternalLocalOriginErrors",
            "consecutiveLocalOriginFailures",
        }
        outlier.unknown_fields(known | refused)
        _refuse(outlier, sorted(refused), "not implemented")
        errors = outlier.int("consecutive5xxErrors", minimum=0, maximum=MAX_U32) or outlier.int(
            "consecutiveErrors", minimum=0, maximum=MAX_U32
        )
        values["http_consecutive_errors"] = errors or None
        values["http_detection_interval"] = outlier.checked(
            "interval", v.positive_duration, default=None
        )
        values["sleep_window"] = outlier.checked(
            "baseEjectionTime", v.positive_duration, default=None
        )
        values["http_max_ejection_percent"] = (
            outlier.int("maxEjectionPercent", minimum=0, maximum=100) or None
        )
    cb = CircuitBreaker(**values) if any(x is not None for x in values.values()) else None  # type: ignore[arg-type]
    return lb, cb, timeout


def parse_destination_rule(doc: Document) -> tuple[DestinationRule | None, list[ConfigError]]:
    r = FieldReader(doc.file, doc.ref, doc.spec, "spec")
    check_api_version(doc, r)
    r.unknown_fields({"host", "trafficPolicy", "subsets", "exportTo", "workloadSelector"})
    _refuse(r, ["exportTo", "workloadSelector"], "every rule is visible mesh-wide")
    host = _host(r, "host")
    dest = host_ref(host, doc.namespace) if host else ServiceRef(name="invalid")
    policies: list[DestinationPolicy] = []
    top = r.reader("trafficPolicy")
    if top is not None:
        lb, cb, timeout = _traffic_policy(top)
        policies.append(
            DestinationPolicy(
                doc.name,
                doc.namespace,
                doc.file,
                dest,
                None,
                lb,
                cb,
                timeout,
                kind="DestinationRule",
            )
        )
    subsets: list[tuple[str, Labels]] = []
    for sub in r.readers("subsets"):
        sub.unknown_fields({"name", "labels", "trafficPolicy"})
        name = sub.checked("name", v.dns1123_label, required=True)
        labels = Labels(sub.labels("labels"))
        if any(name == n for n, _ in subsets):
            sub.error("name", f"expected a name used once, got {name!r} again")
        subsets.append((name, labels))
        policy = sub.reader("trafficPolicy")
        if policy is not None:
            lb, cb, timeout = _traffic_policy(policy)
            policies.append(
                DestinationPolicy(
                    f"{doc.name}.{name}",
                    doc.namespace,
                    doc.file,
                    attrs.evolve(dest, labels=labels),
                    None,
                    lb,
                    cb,
                    timeout,
                    kind="DestinationRule",
                )
            )
    if r.errors:
        return None, r.errors
    return DestinationRule(
        doc.name, doc.namespace, doc.file, dest, tuple(subsets), tuple(policies)
    ), []


@attrs.frozen(slots=True)
class Resolved:
    route_rules: tuple[RouteRule, ...]
    destination_policies: tuple[DestinationPolicy, ...]
    notes: tuple[str, ...]  # overrides between generations, undefined subsets
    gateway_routes: tuple[GatewayRoute, ...] = ()
    l4_routes: tuple[L4Route, ...] = ()


def resolve(
    rules: Sequence[RouteRule],
    policies: Sequence[DestinationPolicy],
    services: Sequence[VirtualService],
    destination_rules: Sequence[DestinationRule],
) -> Resolved:
    """The one model: 0.2 objects plus converted ones, with the precedence the module states."""
    subsets: dict[str, dict[str, Labels]] = {}
    for dr in sorted(destination_rules, key=lambda d: (d.namespace, d.name)):
        table = subsets.setdefault(host_key(dr.host, dr.namespace), {})
        for name, labels in dr.subsets:
            table.setdefault(name, labels)
    notes: list[str] = []

    def labels_of(host: str, subset: str, where: str) -> Labels:
        if not subset:
            return Labels()
        found = subsets.get(host, {}).get(subset)
        if found is None:
            notes.append(
                f"{where} routes to subset {subset!r} of {host}, which no DestinationRule "
                "defines; those requests fail (503), as in Istio"
            )
            return Labels({UNDEFINED_SUBSET_LABEL: subset})
        return found

    converted: list[RouteRule] = []
    gateway_routes: list[GatewayRoute] = []
    l4_routes: list[L4Route] = []
    for vs in sorted(services, key=lambda s: (s.namespace, s.name)):
        for rule, refs in vs.rules:
            routes = []
            for route, subset in zip(rule.route, refs.route, strict=True):
                target = route.destination or rule.destination
                host = host_key(target, rule.namespace)
                routes.append(attrs.evolve(route, labels=labels_of(host, subset, rule.ref)))
            mirror = rule.mirror
            if mirror is not None and refs.mirror:
                host = host_key(mirror, rule.namespace)
                mirror = attrs.evolve(mirror, labels=labels_of(host, refs.mirror, rule.ref))
            done = attrs.evolve(rule, route=tuple(routes), mirror=mirror)
            if vs.on_mesh:
                converted.append(done)
            if vs.bound_gateways:
                # At a gateway the host is a name clients send, not a service: every route
                # names the service it goes to (the first host, when the author left it out).
                first = host_ref(vs.hosts[0], vs.namespace) if vs.hosts else rule.destination
                explicit = tuple(
                    attrs.evolve(w, destination=w.destination or first) for w in routes
                )
                gateway_routes.append(
                    GatewayRoute(
                        vs.bound_gateways,
                        gateway_domain(_written_host(rule, vs), vs.namespace),
                        attrs.evolve(done, route=explicit),
                    )
                )
        for l4 in vs.l4_routes:
            dests = []
            for d in l4.destinations:
                labels = labels_of(host_key(d.host, l4.namespace), d.subset, l4.ref)
                dests.append(attrs.evolve(d, host=attrs.evolve(d.host, labels=labels)))
            l4_routes.append(attrs.evolve(l4, destinations=tuple(dests)))
    vs_hosts = {host_key(r.destination, r.namespace): r.ref for r in converted}
    kept_rules = []
    for rule in rules:
        key = host_key(rule.destination, rule.namespace)
        if key in vs_hosts:
            notes.append(f"{rule.ref} is not applied: a VirtualService routes {key}")
        else:
            kept_rules.append(rule)
    dr_hosts = {host_key(d.host, d.namespace) for d in destination_rules}
    kept_policies = []
    for policy in policies:
        key = host_key(policy.destination, policy.namespace)
        if key in dr_hosts:
            notes.append(f"{policy.ref} is not applied: a DestinationRule covers {key}")
        else:
            kept_policies.append(policy)
    for dr in destination_rules:
        kept_policies.extend(dr.policies)
    return Resolved(
        tuple(kept_rules + converted),
        tuple(kept_policies),
        tuple(sorted(set(notes))),
        tuple(gateway_routes),
        tuple(l4_routes),
    )


def _written_host(rule: RouteRule, vs: VirtualService) -> str:
    """The host, as written in ``hosts``, that ``rule`` (one per host) was made for."""
    for host in vs.hosts:
        if host_ref(host, vs.namespace) == rule.destination:
            return host
    return vs.hosts[0] if vs.hosts else ""
