"""Parsers for the traffic-management kinds, with errors that say exactly what is wrong.

Istio 0.2's documents (``config.istio.io/v1alpha2``) are accepted as written, next to meshfed's
``config.meshfed.io/v1alpha1``; Kubernetes ``Ingress`` (``networking.k8s.io/v1`` and the 0.2-era
``extensions/v1beta1``) feeds the ingress gateway. Each parser returns (object or None, errors)
and never raises on bad input.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from meshfed.core import validators as v
from meshfed.core.resources import ConfigError, Document, FieldReader, describe
from meshfed.pilot.config.authorization import (
    AuthorizationPolicy,
    parse_authorization_policy,
)
from meshfed.pilot.config.istio import (
    DestinationRule,
    VirtualService,
    parse_destination_rule,
    parse_virtual_service,
)
from meshfed.pilot.config.istio_gateway import IstioGateway, is_istio_api, parse_istio_gateway
from meshfed.pilot.config.model import (
    CircuitBreaker,
    Cors,
    DestinationPolicy,
    EgressPort,
    EgressRule,
    Fault,
    Gateway,
    HealthCheck,
    IngressPath,
    L4Fault,
    LoadBalancer,
    Match,
    MatchKind,
    PathType,
    Retry,
    Rewrite,
    RouteRule,
    ServiceRef,
    StringMatch,
    WeightedDestination,
)
from meshfed.pilot.config.peer_authentication import (
    PeerAuthentication,
    parse_peer_authentication,
)
from meshfed.pilot.config.sidecar import Sidecar, parse_sidecar
from meshfed.registry.model import Labels, Protocol

CONFIG_API_VERSIONS = frozenset({"config.istio.io/v1alpha2", "config.meshfed.io/v1alpha1"})
INGRESS_API_VERSIONS = frozenset({"networking.k8s.io/v1", "extensions/v1beta1"})
INGRESS_CLASS_ANNOTATION = "kubernetes.io/ingress.class"
INGRESS_MODES = ("OFF", "DEFAULT", "STRICT")  # Istio's ingressControllerMode values


@attrs.frozen(slots=True)
class IngressSelection:
    """Which Kubernetes Ingresses the meshfed gateway serves, as Istio's mesh config said it.

    ``ingressClass`` (default: ``meshfed`` and ``istio``, Istio 0.2's class) is compared with
    ``spec.ingressClassName`` or the legacy ``kubernetes.io/ingress.class`` annotation;
    ``ingressControllerMode`` ``DEFAULT`` also serves Ingresses that name no class, ``STRICT``
    only those of the class (right when the cluster's default IngressClass is another
    controller's), ``OFF`` none. An Ingress not served is never parsed further: another
    controller's object gets no error and no Event from meshfed.
    """

    classes: frozenset[str] = frozenset({"meshfed", "istio"})
    unset: bool = True

    def serves(self, ingress_class: str) -> bool:
        return ingress_class in self.classes if ingress_class else self.unset

    @classmethod
    def from_pilot_config(cls, pilot: Mapping[str, Any]) -> IngressSelection:
        """From the mesh config's ``pilot:`` section (validated by ``meshfed.config``)."""
        mode = str(pilot.get("ingressControllerMode") or "DEFAULT").upper()
        if mode == "OFF":
            return cls(frozenset(), False)
        name = str(pilot.get("ingressClass") or "")
        classes = frozenset({name}) if name else cls().classes
        return cls(classes, mode != "STRICT")


DEFAULT_INGRESS = IngressSelection()


def parse_duration(reader: FieldReader, name: str, positive: bool = False) -> float | None:
    """A protobuf-style duration such as ``250ms``, ``1.5s``, ``2m``; None when absent.
    ``positive``: at least 1ms, for the settings Envoy refuses at zero (connect timeouts,
    intervals, delays)."""
    check = v.positive_duration if positive else v.duration
    return reader.checked(name, check, default=None)


def _percent(reader: FieldReader, name: str) -> float:
    value = reader.data.get(name)
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        reader.error(name, f"expected a percentage 0..100, got {describe(value)}")
        return 0.0
    return float(value)


def _check_api_version(doc: Document, reader: FieldReader, allowed: frozenset[str]) -> None:
    if doc.api_version not in allowed:
        reader.errors.append(
            ConfigError(
                doc.file,
                doc.ref,
                "apiVersion",
                f"expected one of {', '.join(sorted(allowed))}, got {doc.api_version!r}",
            )
        )


def service_ref(reader: FieldReader | None, required_name: bool = True) -> ServiceRef | None:
    if reader is None:
        return None
    reader.unknown_fields({"name", "namespace", "domain", "service", "labels"})
    ref = ServiceRef(
        name=reader.checked("name", v.hostname),
        namespace=reader.checked("namespace", v.dns1123_label),
        domain=reader.checked("domain", v.hostname),
        service=reader.checked("service", functools.partial(v.hostname, wildcard=True)),
        labels=reader.labels("labels"),
    )
    if required_name and not ref.name and not ref.service:
        reader.error("name", "expected a service name (or `service` with a FQDN)")
    return ref


def _string_match(reader: FieldReader) -> StringMatch | None:
    reader.unknown_fields({"exact", "prefix", "regex"})
    given = [(k, reader.str(k.value)) for k in MatchKind if reader.data.get(k.value) is not None]
    if len(given) != 1:
        reader.error("", "expected exactly one of exact, prefix, regex")
        return None
    kind = given[0][0]
    # Envoy matches with RE2: a regex it cannot compile would be NACKed by every proxy.
    check = {
        MatchKind.REGEX: v.re2_regex,
        MatchKind.PREFIX: v.non_empty_header_value,
        MatchKind.EXACT: v.header_value,
    }[kind]
    checked = reader.checked(kind.value, check, default=None)
    return None if checked is None else StringMatch(kind, checked)


def _subnets(reader: FieldReader, name: str) -> tuple[str, ...]:
    return tuple(reader.checked_list(name, v.cidr))


def _match(reader: FieldReader | None) -> Match:
    if reader is None:
        return Match()
    reader.unknown_fields({"source", "request", "tcp", "udp"})
    source = service_ref(reader.reader("source"))
    headers = []
    request = reader.reader("request")
    if request is not None:
        request.unknown_fields({"headers"})
        header_reader = request.reader("headers")
        if header_reader is not None:
            for key in sorted(header_reader.data):
                sub = header_reader.reader(str(key), required=True)
                if sub is not None:
                    matched = _string_match(sub)
                    if matched is not None:
                        headers.append((str(key).lower(), matched))
    tcp = reader.reader("tcp")
    src: tuple[str, ...] = ()
    dst: tuple[str, ...] = ()
    if tcp is not None:
        tcp.unknown_fields({"sourceSubnet", "destinationSubnet"})
        src, dst = _subnets(tcp, "sourceSubnet"), _subnets(tcp, "destinationSubnet")
    return Match(source, tuple(headers), src, dst)


def _rewrite(reader: FieldReader | None) -> Rewrite | None:
    if reader is None:
        return None
    reader.unknown_fields({"uri", "authority"})
    rewrite = Rewrite(
        reader.checked("uri", v.header_value), reader.checked("authority", v.authority)
    )
    if not rewrite.uri and not rewrite.authority:
        reader.error("", "expected uri or authority")
    return rewrite


def _whole_share(reader: FieldReader) -> None:
    """Envoy applies a TCP fault to every connection of a filter chain: it has no per-connection
    sampling for network filters, so a share below 100 would silently mean "all"."""
    value = reader.data.get("percent", 100)
    if value != 100 or isinstance(value, bool):
        reader.error(
            "percent",
            f"expected 100 (or no percent): a TCP fault applies to every connection the rule "
            f"matches, got {describe(value)}; narrow the rule with match.tcp subnets instead",
        )


def _bits_per_second(reader: FieldReader, name: str) -> int | None:
    # Envoy limits in whole bytes per second at least, and in a 64-bit count of KiB/s
    value = reader.int(name, minimum=8, maximum=(1 << 63) - 1)
    return value or None


def _l4_fault(reader: FieldReader | None) -> L4Fault | None:
    if reader is None:
        return None
    reader.unknown_fields({"throttle", "terminate"})
    down = up = after = None
    throttle = reader.reader("throttle")
    if throttle is not None:
        throttle.unknown_fields(
            {
                "percent",
                "downstreamLimitBps",
                "upstreamLimitBps",
                "throttleAfterPeriod",
                "throttleAfterBytes",
            }
        )
        _whole_share(throttle)
        down = _bits_per_second(throttle, "downstreamLimitBps")
        up = _bits_per_second(throttle, "upstreamLimitBps")
        if down is None and up is None:
            throttle.error("", "expected downstreamLimitBps or upstreamLimitBps")
        for late in ("throttleAfterPeriod", "throttleAfterBytes"):
            if late in throttle.data:
                throttle.error(
                    late, "expected none: Envoy's TCP bandwidth limit applies from the first byte"
                )
    terminate = reader.reader("terminate")
    if terminate is not None:
        terminate.unknown_fields({"percent", "terminateAfterPeriod"})
        _whole_share(terminate)
        after = parse_duration(terminate, "terminateAfterPeriod", positive=True)
        if after is None:
            terminate.error("terminateAfterPeriod", "is required")
    if throttle is None and terminate is None:
        reader.error("", "expected throttle or terminate")
    return L4Fault(down, up, after)


def parse_route_rule(doc: Document) -> tuple[RouteRule | None, list[ConfigError]]:
    r = FieldReader(doc.file, doc.ref, doc.spec, "spec")
    _check_api_version(doc, r, CONFIG_API_VERSIONS)
    r.unknown_fields(
        {
            "destination",
            "precedence",
            "match",
            "route",
            "redirect",
            "rewrite",
            "websocketUpgrade",
            "httpReqTimeout",
            "httpReqRetries",
            "httpFault",
            "l4Fault",
            "mirror",
            "corsPolicy",
            "appendHeaders",
        }
    )
    destination = service_ref(r.reader("destination", required=True))
    precedence = r.int("precedence", minimum=-(1 << 31), maximum=(1 << 31) - 1)
    match = _match(r.reader("match"))
    routes = []
    for route in r.readers("route"):
        route.unknown_fields({"labels", "weight", "destination"})
        routes.append(
            WeightedDestination(
                labels=route.labels("labels"),
                weight=route.int(
                    "weight",
                    default=100 if len(r.data["route"]) == 1 else 0,
                    minimum=0,
                    maximum=100,
                ),
                destination=service_ref(route.reader("destination")),
            )
        )
    if routes and sum(w.weight for w in routes) != 100:
        r.error("route", f"expected weights summing to 100, got {sum(w.weight for w in routes)}")
    timeout = None
    timeout_reader = r.reader("httpReqTimeout")
    if timeout_reader is not None:
        simple = timeout_reader.reader("simpleTimeout", required=True)
        timeout = parse_duration(simple, "timeout") if simple else None
    retry = None
    retries_reader = r.reader("httpReqRetries")
    if retries_reader is not None:
        simple = retries_reader.reader("simpleRetry", required=True)
        if simple is not None:
            simple.unknown_fields({"attempts", "perTryTimeout", "overrideHeaderName"})
            override = simple.checked("overrideHeaderName", v.header_name)
            retry = Retry(
                simple.int("attempts", required=True, minimum=0, maximum=100),
                parse_duration(simple, "perTryTimeout"),
                override,
            )
    fault = None
    fault_reader = r.reader("httpFault")
    if fault_reader is not None:
        fault_reader.unknown_fields({"delay", "abort"})
        delay = fault_reader.reader("delay")
        abort = fault_reader.reader("abort")
        fault = Fault(
            delay_percent=_percent(delay, "percent") if delay else 0.0,
            fixed_delay=parse_duration(delay, "fixedDelay", positive=True) if delay else None,
            abort_percent=_percent(abort, "percent") if abort else 0.0,
            abort_status=abort.int("httpStatus", minimum=200, maximum=599) or None
            if abort
            else None,
        )
        if delay is not None and fault.fixed_delay is None:
            delay.error("fixedDelay", "is required")
        if abort is not None and fault.abort_status is None:
            abort.error("httpStatus", "expected an HTTP status 200..599")
    cors = None
    cors_reader = r.reader("corsPolicy")
    if cors_reader is not None:
        cors_reader.unknown_fields(
            {
                "allowOrigin",
                "allowMethods",
                "allowHeaders",
                "exposeHeaders",
                "maxAge",
                "allowCredentials",
            }
        )
        cors = Cors(
            tuple(cors_reader.checked_list("allowOrigin", v.header_value)),
            tuple(cors_reader.checked_list("allowMethods", v.http_token)),
            tuple(cors_reader.checked_list("allowHeaders", v.http_token)),
            tuple(cors_reader.checked_list("exposeHeaders", v.http_token)),
            parse_duration(cors_reader, "maxAge"),
            cors_reader.bool("allowCredentials"),
        )
    l4_fault = _l4_fault(r.reader("l4Fault"))
    redirect = _rewrite(r.reader("redirect"))
    rewrite = _rewrite(r.reader("rewrite"))
    if redirect is not None and (routes or rewrite is not None):
        r.error("redirect", "expected redirect alone, without route or rewrite")
    if r.errors or destination is None:
        return None, r.errors
    return (
        RouteRule(
            doc.name,
            doc.namespace,
            doc.file,
            destination,
            precedence,
            match,
            tuple(routes),
            timeout,
            retry,
            fault,
            redirect,
            rewrite,
            service_ref(r.reader("mirror")),
            r.bool("websocketUpgrade"),
            Labels(_headers(r, "appendHeaders")),
            cors,
            l4_fault,
        ),
        r.errors,
    )


def _headers(reader: FieldReader, name: str) -> dict[str, str]:
    """Header names to values (as Envoy adds them to requests)."""
    out = {}
    for key, value in reader.str_map(name).items():
        try:
            out[v.header_name(key)] = v.header_value(value)
        except v.Invalid as exc:
            reader.error(f"{name}.{key}", str(exc))
    return out


def parse_destination_policy(doc: Document) -> tuple[DestinationPolicy | None, list[ConfigError]]:
    r = FieldReader(doc.file, doc.ref, doc.spec, "spec")
    _check_api_version(doc, r, CONFIG_API_VERSIONS)
    r.unknown_fields(
        {
            "destination",
            "source",
            "loadBalancing",
            "circuitBreaker",
            "connectTimeout",
            "custom",
            "healthCheck",
        }
    )
    destination = service_ref(r.reader("destination", required=True))
    source = service_ref(r.reader("source"))
    if "custom" in r.data:
        # Istio 0.2 reserved it for plug-in policies and shipped none; accepting it silently
        # would let a user believe something is enforced.
        r.error("custom", "expected none: meshfed implements no custom destination policies")
    lb = None
    lb_reader = r.reader("loadBalancing")
    if lb_reader is not None:
        lb_reader.unknown_fields({"name"})
        lb = lb_reader.enum("name", LoadBalancer, LoadBalancer.ROUND_ROBIN)
    cb = None
    cb_reader = r.reader("circuitBreaker")
    if cb_reader is not None:
        simple = cb_reader.reader("simpleCb", required=True)
        if simple is not None:
            ints = {
                "maxConnections": "max_connections",
                "httpMaxPendingRequests": "http_max_pending_requests",
                "httpMaxRequests": "http_max_requests",
                "httpMaxRequestsPerConnection": "http_max_requests_per_connection",
                "httpMaxRetries": "http_max_retries",
                "httpConsecutiveErrors": "http_consecutive_errors",
            }
            simple.unknown_fields(
                {*ints, "sleepWindow", "httpDetectionInterval", "httpMaxEjectionPercent"}
            )
            values: dict[str, object] = {
                attr: simple.int(key, minimum=0, maximum=(1 << 31) - 1) or None
                for key, attr in ints.items()
            }
            values["sleep_window"] = parse_duration(simple, "sleepWindow", positive=True)
            values["http_detection_interval"] = parse_duration(
                simple, "httpDetectionInterval", positive=True
            )
            values["http_max_ejection_percent"] = (
                simple.int("httpMaxEjectionPercent", minimum=0, maximum=100) or None
            )
            cb = CircuitBreaker(**values)  # type: ignore[arg-type]
    connect_timeout = parse_duration(r, "connectTimeout", positive=True)
    health = None
    health_reader = r.reader("healthCheck")  # meshfed extension: active HTTP health checks
    if health_reader is not None:
        health_reader.unknown_fields(
            {"path", "interval", "timeout", "unhealthyThreshold", "healthyThreshold"}
        )
        defaults = HealthCheck()
        path = health_reader.checked("path", v.url_path, default=defaults.path)
        health = HealthCheck(
            path,
            parse_duration(health_reader, "interval", positive=True) or defaults.interval,
            parse_duration(health_reader, "timeout", positive=True) or defaults.timeout,
            health_reader.int("unhealthyThreshold", minimum=1, maximum=100)
            or defaults.unhealthy_threshold,
            health_reader.int("healthyThreshold", minimum=1, maximum=100)
            or defaults.healthy_threshold,
        )
    if r.errors or destination is None:
        return None, r.errors
    return (
        DestinationPolicy(
            doc.name, doc.namespace, doc.file, destination, source, lb, cb, connect_timeout, health
        ),
        [],
    )


EGRESS_PROTOCOLS = {
    "HTTP": Protocol.HTTP,
    "HTTP2": Protocol.HTTP2,
    "GRPC": Protocol.GRPC,
    "HTTPS": Protocol.TLS,
    "TLS": Protocol.TLS,
    "TCP": Protocol.TCP,
}


def parse_egress_rule(doc: Document) -> tuple[EgressRule | None, list[ConfigError]]:
    r = FieldReader(doc.file, doc.ref, doc.spec, "spec")
    _check_api_version(doc, r, CONFIG_API_VERSIONS)
    r.unknown_fields({"destination", "ports", "useEgressProxy"})
    dest = r.reader("destination", required=True)
    service = ""
    if dest is not None:
        dest.unknown_fields({"service"})
        # Not "*" alone: a rule for every domain would open egress to the whole internet.
        service = dest.checked(
            "service", functools.partial(v.hostname, wildcard=True), required=True
        )
    ports = []
    for port in r.readers("ports", required=True):
        port.unknown_fields({"port", "protocol"})
        number = port.port("port", required=True)
        raw = port.str("protocol", default="http").upper()
        if raw not in EGRESS_PROTOCOLS:
            port.error(
                "protocol",
                f"expected one of {', '.join(p.lower() for p in EGRESS_PROTOCOLS)}, "
                f"got {describe(raw)}",
            )
        elif number:
            ports.append(EgressPort(number, EGRESS_PROTOCOLS[raw]))
    if service.startswith("*"):
        for i, egress_port in enumerate(ports):
            if egress_port.protocol is Protocol.TCP:
                r.error(
                    f"ports[{i}].protocol",
                    f"expected http, http2, grpc, https or tls for the wildcard {service!r}: a "
                    "TCP connection carries no name to pick a subdomain by (use tls, whose SNI "
                    "does, or one rule per exact domain)",
                )
    if r.bool("useEgressProxy"):
        r.error("useEgressProxy", "expected false: egress goes directly from the sidecar")
    if r.errors:
        return None, r.errors
    return EgressRule(doc.name, doc.namespace, doc.file, service, tuple(ports)), []


def _ingress_backend(reader: FieldReader | None, namespace: str) -> tuple[ServiceRef, int | str]:
    if reader is None:
        return ServiceRef(), 0
    service = reader.reader("service")
    if service is not None:  # networking.k8s.io/v1
        name = service.checked("name", v.dns1123_label, required=True)
        port_reader = service.reader("port", required=True)
        port: int | str = 0
        if port_reader is not None:
            port_reader.unknown_fields({"number", "name"})
            port = port_reader.port("number") or port_reader.checked("name", v.port_name)
            if not port and not port_reader.errors:
                port_reader.error("", "expected number or name")
        return ServiceRef(name=name, namespace=namespace), port
    # extensions/v1beta1 and meshfed's Gateway
    name = reader.checked("serviceName", v.dns1123_label, required=True)
    raw = reader.data.get("servicePort")
    try:
        return ServiceRef(name=name, namespace=namespace), v.port_or_name(raw)
    except v.Invalid as exc:
        reader.error("servicePort", str(exc))
    return ServiceRef(name=name, namespace=namespace), 0


def ingress_class(doc: Document, r: FieldReader, selection: IngressSelection) -> str:
    """An Ingress's class: ``spec.ingressClassName``, else the legacy annotation (Istio 0.2
    served ``kubernetes.io/ingress.class: istio``); "" when neither is set.

    Kubernetes refuses an Ingress that sets both; here both may be set when they agree, and
    disagreeing values are an error when either names a class ``selection`` serves.
    """
    spec_class = r.str("ingressClassName")
    notes = FieldReader(doc.file, doc.ref, doc.annotations, "metadata.annotations", r.errors)
    legacy = notes.str(INGRESS_CLASS_ANNOTATION)
    if spec_class and legacy and spec_class != legacy:
        if selection.serves(spec_class) or selection.serves(legacy):
            notes.error(
                INGRESS_CLASS_ANNOTATION,
                f"expected the same class as spec.ingressClassName ({spec_class!r}) or no "
                f"annotation, got {legacy!r}",
            )
            return spec_class if selection.serves(spec_class) else legacy  # ours: report it
        return spec_class
    return spec_class or legacy


def _path_type(reader: FieldReader) -> PathType:
    raw = reader.data.get("pathType")
    if raw is None:
        return PathType.IMPLEMENTATION_SPECIFIC
    for path_type in PathType:
        if raw == path_type.value:
            return path_type
    allowed = ", ".join(t.value for t in PathType)
    reader.error("pathType", f"expected one of {allowed} (case-sensitive), got {describe(raw)}")
    return PathType.IMPLEMENTATION_SPECIFIC


def parse_ingress(
    doc: Document, selection: IngressSelection = DEFAULT_INGRESS
) -> tuple[Gateway | None, list[ConfigError]]:
    """A Kubernetes Ingress (when ``selection`` serves its class), or meshfed's Gateway kind
    (same shape, plus ``port``; always served)."""
    r = FieldReader(doc.file, doc.ref, doc.spec, "spec")
    allowed = INGRESS_API_VERSIONS if doc.kind == "Ingress" else CONFIG_API_VERSIONS
    _check_api_version(doc, r, allowed)
    r.unknown_fields({"rules", "tls", "ingressClassName", "defaultBackend", "backend", "port"})
    if doc.kind == "Ingress":
        before = len(r.errors)
        served = selection.serves(ingress_class(doc, r, selection))
        if not served:
            # Another controller's Ingress: not ours to serve, and not an error -- unless its
            # class itself cannot be read, when nobody can tell whose it is.
            return None, r.errors[before:]
    paths = []
    default_reader = r.reader("defaultBackend") or r.reader("backend")  # v1 / v1beta1
    for rule in r.readers("rules", required=default_reader is None):
        host = rule.checked("host", functools.partial(v.hostname, wildcard=True)) or "*"
        http = rule.reader("http", required=True)
        if http is None:
            continue
        for path_reader in http.readers("paths", required=True):
            path = path_reader.checked("path", v.url_path, default="/")
            backend, port = _ingress_backend(
                path_reader.reader("backend", required=True), doc.namespace
            )
            grpc = path_reader.bool("grpc")
            path_type = _path_type(path_reader)
            if path_type is not PathType.IMPLEMENTATION_SPECIFIC and ("?" in path or "#" in path):
                path_reader.error(
                    "path", f"expected a path without ? or # for pathType {path_type.value}"
                )
            paths.append(IngressPath(host, path, backend, port, grpc, path_type=path_type))
    if default_reader is not None:
        backend, port = _ingress_backend(default_reader, doc.namespace)
        paths.append(IngressPath("*", "/", backend, port, default=True))
    tls = []
    for tls_reader in r.readers("tls"):
        secret = tls_reader.checked("secretName", v.resource_name, required=True)
        wildcard = functools.partial(v.hostname, wildcard=True)
        for host in tls_reader.checked_list("hosts", wildcard) or ["*"]:
            tls.append((host, secret))
    port = r.port("port") if doc.kind == "Gateway" else 0
    if r.errors:
        return None, r.errors
    return Gateway(doc.name, doc.namespace, doc.file, doc.kind, tuple(paths), tuple(tls), port), []


def parse_gateway(
    doc: Document, selection: IngressSelection = DEFAULT_INGRESS
) -> tuple[Gateway | IstioGateway | None, list[ConfigError]]:
    """``Gateway``: today's Istio kind under ``networking.istio.io``, else meshfed's own."""
    if is_istio_api(doc):
        return parse_istio_gateway(doc)
    return parse_ingress(doc, selection)


# Every kind the routing stores hold: Istio 0.2's and today's Istio API's.
ConfigObject = (
    RouteRule
    | DestinationPolicy
    | EgressRule
    | Gateway
    | IstioGateway
    | VirtualService
    | DestinationRule
    | PeerAuthentication
    | AuthorizationPolicy
    | Sidecar
)
Parser = Callable[[Document], tuple[ConfigObject | None, list[ConfigError]]]

PARSERS: dict[str, Parser] = {
    "RouteRule": parse_route_rule,
    "VirtualService": parse_virtual_service,
    "DestinationRule": parse_destination_rule,
    "DestinationPolicy": parse_destination_policy,
    "EgressRule": parse_egress_rule,
    "PeerAuthentication": parse_peer_authentication,
    "AuthorizationPolicy": parse_authorization_policy,
    "Sidecar": parse_sidecar,
    "Gateway": parse_gateway,
    "Ingress": parse_ingress,
}


def routing_parsers(selection: IngressSelection = DEFAULT_INGRESS) -> dict[str, Parser]:
    """:data:`PARSERS` with the mesh's Ingress selection (what every config store uses)."""
    if selection == DEFAULT_INGRESS:
        return PARSERS
    return {**PARSERS, "Ingress": functools.partial(parse_ingress, selection=selection)}
