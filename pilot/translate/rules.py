"""RouteRule as Envoy routes inside a service's virtual host.

Each rule for a destination becomes one ``Route`` in that service's virtual host (for every
HTTP port of the service), in the snapshot's application order, followed by the service's
default route; Envoy takes the first route that matches, which is Istio 0.2's "highest
precedence rule whose match applies" semantics.

What each rule field becomes:

- ``match.request.headers``: ``uri`` -> the route's path match (exact ``path``, ``prefix``,
  RE2 ``safe_regex``); ``authority``/``method``/``scheme`` -> the ``:authority``/``:method``/
  ``:scheme`` pseudo-headers; any other name (``cookie``, ``x-user``...) -> a header matcher.
  Regexes must match the whole value (RE2 full match), as in Istio 0.2's Envoy.
- ``match.source``: decided per proxy before translation (the caller passes ``applies``), so a
  rule whose source does not match this proxy is simply absent from its route table.
- ``route``: one destination -> ``cluster``; several -> ``weighted_clusters`` (weights are
  percentages summing to 100); labels pick the subset cluster (:mod:`pilot.translate.subsets`).
- ``httpReqTimeout`` -> route ``timeout``; ``httpReqRetries`` -> a retry policy on
  ``5xx,gateway-error,connect-failure,refused-stream,reset`` with ``attempts`` retries and the
  per-try timeout; without one, the default route's connection-level retries stay.
  ``overrideHeaderName`` lets the app choose the attempts per request: the route copies that
  header's value into Envoy's ``x-envoy-max-retries`` (only when the app sent it).
- ``httpFault`` -> per-route config of ``envoy.filters.http.fault`` (delay and abort, each
  with its percentage, in millionths so fractional percentages survive).
- ``rewrite`` -> ``prefix_rewrite`` (when the URI match is a prefix) or a whole-path
  ``regex_rewrite``, and ``host_rewrite_literal``; ``redirect`` -> a redirect route (301).
- ``mirror`` -> ``request_mirror_policies`` at 100% (fire and forget; Envoy adds ``-shadow`` to
  the Host of the copy).
- ``websocketUpgrade`` -> the route enables the ``websocket`` upgrade that the listener's
  connection manager keeps disabled by default.
- ``appendHeaders`` -> ``request_headers_to_add`` (append if present, else add).
- ``corsPolicy`` -> per-route config of ``envoy.filters.http.cors``.

The HTTP filters these need (:func:`http_filters`) are always present in the outbound
listener, configured to do nothing by default, so adding or removing a rule changes only RDS
(and CDS for new subsets), never the listener: no listener drain, no dropped connection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.common.fault.v3 import fault_pb2 as common_fault
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import wrappers_pb2

from meshfed.pilot.config.model import Cors, Fault, Match, MatchKind, RouteRule, StringMatch
from meshfed.pilot.translate import names
from meshfed.pilot.translate.protos import pack, seconds
from meshfed.pilot.translate.traffic import TrafficIndex, subset_name
from meshfed.registry.model import Port, Service

FAULT_FILTER = "envoy.filters.http.fault"
CORS_FILTER = "envoy.filters.http.cors"
MAX_RETRIES_HEADER = "x-envoy-max-retries"
RULE_RETRY_ON = "5xx,gateway-error,connect-failure,refused-stream,reset"
PSEUDO_HEADERS = {"authority": ":authority", "method": ":method", "scheme": ":scheme"}


def http_filters() -> list[hcm.HttpFilter]:
    """The filters rules configure per route; they go before the router, in this order.

    CORS first, so a preflight is answered even on a route that injects faults.
    """
    return [
        hcm.HttpFilter(name=CORS_FILTER, typed_config=pack(cors_pb2.Cors())),
        hcm.HttpFilter(name=FAULT_FILTER, typed_config=pack(fault_pb2.HTTPFault())),
    ]


def websocket_disabled_by_default() -> list[hcm.HttpConnectionManager.UpgradeConfig]:
    """Listener-level upgrade config: WebSocket is known but off unless a route enables it."""
    return [
        hcm.HttpConnectionManager.UpgradeConfig(
            upgrade_type="websocket", enabled=wrappers_pb2.BoolValue(value=False)
        )
    ]


def _string_matcher(m: StringMatch) -> string_pb2.StringMatcher:
    if m.kind is MatchKind.EXACT:
        return string_pb2.StringMatcher(exact=m.value)
    if m.kind is MatchKind.PREFIX:
        return string_pb2.StringMatcher(prefix=m.value)
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=m.value))


def route_match(match: Match) -> rc.RouteMatch:
    out = rc.RouteMatch()
    uri = next((m for name, m in match.headers if name == "uri"), None)
    if uri is None or uri.kind is MatchKind.PREFIX:
        out.prefix = uri.value if uri is not None else "/"
    elif uri.kind is MatchKind.EXACT:
        out.path = uri.value
    else:
        out.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=uri.value))
    for name, m in match.headers:
        if name == "uri":
            continue
        out.headers.append(
            rc.HeaderMatcher(name=PSEUDO_HEADERS.get(name, name), string_match=_string_matcher(m))
        )
    return out


def _percent(value: float) -> percent_pb2.FractionalPercent:
    return percent_pb2.FractionalPercent(
        numerator=round(value * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
    )


def fault_config(fault: Fault) -> fault_pb2.HTTPFault:
    out = fault_pb2.HTTPFault()
    if fault.fixed_delay is not None and fault.delay_percent > 0:
        out.delay.CopyFrom(
            common_fault.FaultDelay(
                fixed_delay=seconds(fault.fixed_delay), percentage=_percent(fault.delay_percent)
            )
        )
    if fault.abort_status is not None and fault.abort_percent > 0:
        out.abort.CopyFrom(
            fault_pb2.FaultAbort(
                http_status=fault.abort_status, percentage=_percent(fault.abort_percent)
            )
        )
    return out


def cors_policy(cors: Cors) -> cors_pb2.CorsPolicy:
    out = cors_pb2.CorsPolicy(
        allow_origin_string_match=[
            string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=".*"))
            if origin == "*"
            else string_pb2.StringMatcher(exact=origin)
            for origin in cors.allow_origin
        ],
        allow_methods=",".join(cors.allow_methods),
        allow_headers=",".join(cors.allow_headers),
        expose_headers=",".join(cors.expose_headers),
        allow_credentials=wrappers_pb2.BoolValue(value=cors.allow_credentials),
    )
    if cors.max_age is not None:
        out.max_age = str(int(cors.max_age))
    return out


def _rule_retry(rule: RouteRule, default: rc.RetryPolicy) -> rc.RetryPolicy:
    assert rule.retry is not None
    retry = rc.RetryPolicy()
    retry.CopyFrom(default)
    retry.retry_on = RULE_RETRY_ON
    retry.num_retries.value = rule.retry.attempts
    if rule.retry.per_try_timeout is not None:
        retry.per_try_timeout.CopyFrom(seconds(rule.retry.per_try_timeout))
    return retry


def rule_route(
    rule: RouteRule, service: Service, port: Port, default: rc.Route, index: TrafficIndex
) -> rc.Route:
    """One rule as one route of ``service``'s virtual host for ``port``."""
    if rule.redirect is not None:
        return redirect_route(rule)
    route = rc.Route(name=rule.ref, match=route_match(rule.match))
    action = rc.RouteAction()
    action.CopyFrom(default.route)
    action.ClearField("cluster")
    clusters = _destinations(rule, service, port, index)
    if len(clusters) == 1:
        action.cluster = clusters[0][0]
    else:
        action.weighted_clusters.CopyFrom(
            rc.WeightedCluster(
                clusters=[
                    rc.WeightedCluster.ClusterWeight(
                        name=name, weight=wrappers_pb2.UInt32Value(value=weight)
                    )
                    for name, weight in clusters
                ]
            )
        )
    if rule.timeout is not None:
        action.timeout.CopyFrom(seconds(rule.timeout))
    if rule.retry is not None:
        action.retry_policy.CopyFrom(_rule_retry(rule, default.route.retry_policy))
    if rule.rewrite is not None:
        uri_match = rule.match.headers and dict(rule.match.headers).get("uri")
        if rule.rewrite.uri:
            if uri_match and uri_match.kind is MatchKind.PREFIX:
                action.prefix_rewrite = rule.rewrite.uri
            else:
                action.regex_rewrite.pattern.regex = "^.*$"
                action.regex_rewrite.substitution = rule.rewrite.uri
        if rule.rewrite.authority:
            action.host_rewrite_literal = rule.rewrite.authority
    if rule.mirror is not None:
        mirror_host = index.host_of(rule.mirror, rule.namespace)
        mirror = index.cluster_for(mirror_host, port, rule.mirror.labels) if mirror_host else None
        if mirror is not None:
            action.request_mirror_policies.append(
                rc.RouteAction.RequestMirrorPolicy(
                    cluster=mirror,
                    runtime_fraction=base_pb2.RuntimeFractionalPercent(
                        default_value=_percent(100.0)
                    ),
                )
            )
    if rule.websocket_upgrade:
        action.upgrade_configs.append(
            rc.RouteAction.UpgradeConfig(
                upgrade_type="websocket", enabled=wrappers_pb2.BoolValue(value=True)
            )
        )
    route.route.CopyFrom(action)
    if rule.retry is not None and rule.retry.override_header:
        # Envoy's router reads x-envoy-max-retries after the route's headers are added; an
        # absent app header formats to empty and is then not added at all.
        route.request_headers_to_add.append(
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(
                    key=MAX_RETRIES_HEADER, value=f"%REQ({rule.retry.override_header})%"
                ),
                append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                keep_empty_value=False,
            )
        )
    for key, value in rule.append_headers.items():
        route.request_headers_to_add.append(
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=key, value=value),
                append_action=base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD,
            )
        )
    if rule.fault is not None:
        route.typed_per_filter_config[FAULT_FILTER].CopyFrom(pack(fault_config(rule.fault)))
    if rule.cors is not None:
        route.typed_per_filter_config[CORS_FILTER].CopyFrom(pack(cors_policy(rule.cors)))
    return route


def redirect_route(rule: RouteRule) -> rc.Route:
    """A rule with ``redirect``: a 301, no backend."""
    assert rule.redirect is not None
    route = rc.Route(name=rule.ref, match=route_match(rule.match))
    redirect = rc.RedirectAction()
    if rule.redirect.uri:
        redirect.path_redirect = rule.redirect.uri
    if rule.redirect.authority:
        redirect.host_redirect = rule.redirect.authority
    route.redirect.CopyFrom(redirect)
    return route


def _destinations(
    rule: RouteRule, service: Service, port: Port, index: TrafficIndex
) -> list[tuple[str, int]]:
    """(cluster, weight) pairs; the whole service when the rule names no route."""
    if not rule.route:
        return [(names.outbound_cluster(service.hostname, port.number), 100)]
    out: dict[str, int] = {}
    for dest in rule.route:
        if dest.weight == 0:
            continue
        if dest.destination is not None:
            host = index.host_of(dest.destination, rule.namespace)
            prefer = dest.port or None
            cluster = index.cluster_for(host, port, dest.labels, prefer) if host else None
        else:
            subset = subset_name(dest.labels)
            cluster = names.outbound_cluster(service.hostname, port.number, subset)
        if cluster is None:
            # An unresolvable destination cannot take traffic; its share goes to the others
            # (Envoy's weighted_clusters normalise by the total weight).
            continue
        out[cluster] = out.get(cluster, 0) + dest.weight
    if not out:
        return [(names.outbound_cluster(service.hostname, port.number), 100)]
    return list(out.items())


def service_routes(
    service: Service,
    port: Port,
    default: rc.Route,
    index: TrafficIndex,
    applies: Callable[[RouteRule], bool] = lambda _rule: True,
) -> list[rc.Route]:
    """The routes of ``service``'s virtual host on ``port``: applicable rules, then default."""
    rules: Sequence[RouteRule] = index.rules.get(service.hostname, ())
    # Subnet matches are TCP-only (pilot.translate.tcp_rules): such rules never route HTTP.
    out = [
        rule_route(r, service, port, default, index)
        for r in rules
        if applies(r) and not (r.match.source_subnets or r.match.destination_subnets)
    ]
    out.append(default)
    return out


def source_filter(key: frozenset[str]) -> Callable[[RouteRule], bool]:
    """``applies`` for a proxy whose applicable source-matching rules are ``key``."""
    return lambda rule: rule.match.source is None or rule.ref in key
