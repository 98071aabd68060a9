"""Authorization as Envoy's RBAC filters, HTTP and network: the pure functions Pilot calls.

Why here: which callers may do what is security policy; Pilot only decides on which inbound
ports it applies (:mod:`pilot.rbac_plugin`). No I/O; messages in, messages out.

Promises (Istio's AuthorizationPolicy semantics):
- A request is denied (403) when any ``DENY`` rule matches it; otherwise, when ``ALLOW``
  policies apply to the workload, it is allowed only when one of their rules matches (an
  ``ALLOW`` policy without rules allows nothing); ``AUDIT`` rules never block, they mark the
  request in Envoy's RBAC log metadata. So ``DENY`` beats ``ALLOW``: the DENY filter runs first.
- A rule matches when one of its ``from`` sources, one of its ``to`` operations and all of its
  ``when`` conditions match (an absent list matches anything); within a source or an
  operation every field given must match (one of its values; none of its ``not`` values).
- Principals are SPIFFE IDs without the scheme (``cluster.local/ns/default/sa/sleep``) and come
  from the verified client certificate; a plain-text client has none. ``*`` in a value is a
  prefix or suffix wildcard (``*`` alone: present).
- ``CUSTOM`` rules never decide here: :func:`custom_shadow_filter` runs them as *shadow* rules
  (nothing is enforced), which marks a request they match in Envoy's dynamic metadata
  (:func:`custom_matched`); the external authorizer's filter is gated on that mark, so only
  those requests are sent to it. :func:`custom_deny_filter` is the fail-closed form, for a
  proxy that cannot reach the authorizer: the requests the rules match are refused.
- TCP (:func:`network_filters`, Envoy's network RBAC filter ahead of ``tcp_proxy``): a
  connection has no method, path, host or header, so :func:`tcp_rule` decides what a rule
  naming them means, as Istio does: in an ``ALLOW`` policy such a rule never matches (it is
  dropped, so the policy may allow nothing); in ``DENY``, ``AUDIT`` and ``CUSTOM`` policies
  only the HTTP-only parts are dropped, so the rule matches more connections, never fewer.
  A refused connection is closed before a byte reaches the workload.
- ``remoteIpBlocks`` is Envoy's ``remote_ip``: the client address after the connection
  manager's X-Forwarded-For handling (at a gateway, which trusts no forwarding hops, the peer).
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable, Sequence

import attrs
from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac
from envoy.type.matcher.v3 import metadata_pb2, path_pb2, regex_pb2, string_pb2, value_pb2

from meshfed.core.xds import pack

RBAC_FILTER = "envoy.filters.http.rbac"
NETWORK_RBAC_FILTER = "envoy.filters.network.rbac"
SPIFFE = "spiffe://"
# Envoy writes a shadow match under "<stat prefix>shadow_effective_policy_id" in the RBAC
# filter's dynamic metadata; the policy names carry a prefix so the gate cannot be confused
# with any other shadow rules.
CUSTOM_STAT_PREFIX = "meshfed_custom_"
CUSTOM_POLICY_PREFIX = "meshfed-custom:"
CUSTOM_MATCHED_KEY = CUSTOM_STAT_PREFIX + "shadow_effective_policy_id"


class Action(enum.Enum):
    ALLOW = "ALLOW"
    DENY = "DENY"
    AUDIT = "AUDIT"
    CUSTOM = "CUSTOM"


@attrs.frozen(slots=True)
class Source:
    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()
    not_ip_blocks: tuple[str, ...] = ()
    remote_ip_blocks: tuple[str, ...] = ()
    not_remote_ip_blocks: tuple[str, ...] = ()


@attrs.frozen(slots=True)
class Operation:
    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    not_ports: tuple[str, ...] = ()


@attrs.frozen(slots=True)
class Condition:
    key: str  # request.headers[NAME], source.ip/namespace/principal, destination.ip/port
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()


@attrs.frozen(slots=True)
class Rule:
    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()
    conditions: tuple[Condition, ...] = ()


@attrs.frozen(slots=True)
class Policy:
    name: str  # shown in Envoy's RBAC stats and logs
    action: Action
    rules: tuple[Rule, ...]


# -- matchers --------------------------------------------------------------------------------
def _string(value: str, ignore_case: bool = False, prefix: str = "") -> string_pb2.StringMatcher:
    if value == "*":
        return string_pb2.StringMatcher(
            safe_regex=regex_pb2.RegexMatcher(regex=f"^{re.escape(prefix)}.*$")
        )
    if value.startswith("*"):
        return string_pb2.StringMatcher(suffix=value[1:], ignore_case=ignore_case)
    if value.endswith("*"):
        return string_pb2.StringMatcher(prefix=prefix + value[:-1], ignore_case=ignore_case)
    return string_pb2.StringMatcher(exact=prefix + value, ignore_case=ignore_case)


def _cidr(value: str) -> address_pb2.CidrRange:
    net = ipaddress.ip_network(value, strict=False)
    out = address_pb2.CidrRange(address_prefix=str(net.network_address))
    out.prefix_len.value = net.prefixlen
    return out


def _principal_name(value: str) -> rbac_pb2.Principal:
    return rbac_pb2.Principal(
        authenticated=rbac_pb2.Principal.Authenticated(principal_name=_string(value, prefix=SPIFFE))
    )


def _namespace(value: str) -> rbac_pb2.Principal:
    if value == "*":
        pattern = "[^/]+"
    else:
        pattern = re.escape(value.strip("*"))
        pattern = ("[^/]*" if value.startswith("*") else "") + pattern
        pattern += "[^/]*" if value.endswith("*") and value != "*" else ""
    regex = f"^spiffe://[^/]+/ns/{pattern}/sa/[^/]+$"
    matcher = string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=regex))
    return rbac_pb2.Principal(
        authenticated=rbac_pb2.Principal.Authenticated(principal_name=matcher)
    )


def _header(name: str, value: str, ignore_case: bool = False) -> rc.HeaderMatcher:
    return rc.HeaderMatcher(name=name, string_match=_string(value, ignore_case))


def _any_id(ids: Sequence[rbac_pb2.Principal]) -> rbac_pb2.Principal:
    if len(ids) == 1:
        return ids[0]
    return rbac_pb2.Principal(or_ids=rbac_pb2.Principal.Set(ids=ids))


def _all_ids(ids: Sequence[rbac_pb2.Principal]) -> rbac_pb2.Principal:
    if not ids:
        return rbac_pb2.Principal(any=True)
    if len(ids) == 1:
        return ids[0]
    return rbac_pb2.Principal(and_ids=rbac_pb2.Principal.Set(ids=ids))


def _any_rule(rules: Sequence[rbac_pb2.Permission]) -> rbac_pb2.Permission:
    if len(rules) == 1:
        return rules[0]
    return rbac_pb2.Permission(or_rules=rbac_pb2.Permission.Set(rules=rules))


def _all_rules(rules: Sequence[rbac_pb2.Permission]) -> rbac_pb2.Permission:
    if not rules:
        return rbac_pb2.Permission(any=True)
    if len(rules) == 1:
        return rules[0]
    return rbac_pb2.Permission(and_rules=rbac_pb2.Permission.Set(rules=rules))


def _ids(values: Iterable[str], make: object, negate: bool) -> list[rbac_pb2.Principal]:
    built = [make(v) for v in values]  # type: ignore[operator]
    if not built:
        return []
    one = _any_id(built)
    return [rbac_pb2.Principal(not_id=one)] if negate else [one]


def _perms(values: Iterable[str], make: object, negate: bool) -> list[rbac_pb2.Permission]:
    built = [make(v) for v in values]  # type: ignore[operator]
    if not built:
        return []
    one = _any_rule(built)
    return [rbac_pb2.Permission(not_rule=one)] if negate else [one]


def _source_ip(v: str) -> rbac_pb2.Principal:
    return rbac_pb2.Principal(direct_remote_ip=_cidr(v))


def _remote_ip(v: str) -> rbac_pb2.Principal:
    return rbac_pb2.Principal(remote_ip=_cidr(v))


def _source(source: Source) -> rbac_pb2.Principal:
    ids = [
        *_ids(source.principals, _principal_name, False),
        *_ids(source.not_principals, _principal_name, True),
        *_ids(source.namespaces, _namespace, False),
        *_ids(source.not_namespaces, _namespace, True),
        *_ids(source.ip_blocks, _source_ip, False),
        *_ids(source.not_ip_blocks, _source_ip, True),
        *_ids(source.remote_ip_blocks, _remote_ip, False),
        *_ids(source.not_remote_ip_blocks, _remote_ip, True),
    ]
    return _all_ids(ids)


def _host(v: str) -> rbac_pb2.Permission:
    # A request's authority may carry the port; the host matches either way.
    exact = rbac_pb2.Permission(header=_header(":authority", v, ignore_case=True))
    if "*" in v:
        return exact
    with_port = rbac_pb2.Permission(
        header=rc.HeaderMatcher(
            name=":authority",
            string_match=string_pb2.StringMatcher(prefix=v + ":", ignore_case=True),
        )
    )
    return _any_rule([exact, with_port])


def _method(v: str) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(header=_header(":method", v))


def _path(v: str) -> rbac_pb2.Permission:
    if v == "*":
        return rbac_pb2.Permission(any=True)
    return rbac_pb2.Permission(url_path=path_pb2.PathMatcher(path=_string(v)))


def _port(v: str) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(destination_port=int(v))


def _destination_ip(v: str) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(destination_ip=_cidr(v))


def _operation(op: Operation) -> rbac_pb2.Permission:
    rules = [
        *_perms(op.hosts, _host, False),
        *_perms(op.not_hosts, _host, True),
        *_perms(op.methods, _method, False),
        *_perms(op.not_methods, _method, True),
        *_perms(op.paths, _path, False),
        *_perms(op.not_paths, _path, True),
        *_perms(op.ports, _port, False),
        *_perms(op.not_ports, _port, True),
    ]
    return _all_rules(rules)


PRINCIPAL_KEYS = {
    "source.ip": _source_ip,
    "source.namespace": _namespace,
    "source.principal": _principal_name,
}
PERMISSION_KEYS = {"destination.ip": _destination_ip, "destination.port": _port}


def _rule(rule: Rule) -> rbac_pb2.Policy:
    principals = [_any_id([_source(s) for s in rule.sources])] if rule.sources else []
    permissions = [_any_rule([_operation(o) for o in rule.operations])] if rule.operations else []
    for c in rule.conditions:
        if c.key in PERMISSION_KEYS:
            make = PERMISSION_KEYS[c.key]
            permissions += _perms(c.values, make, False) + _perms(c.not_values, make, True)
            continue
        if c.key in PRINCIPAL_KEYS:
            id_make: object = PRINCIPAL_KEYS[c.key]
        else:
            name = c.key[len("request.headers[") : -1]

            def id_make(v: str, name: str = name) -> rbac_pb2.Principal:
                return rbac_pb2.Principal(header=_header(name, v))

        principals += _ids(c.values, id_make, False) + _ids(c.not_values, id_make, True)
    return rbac_pb2.Policy(permissions=[_all_rules(permissions)], principals=[_all_ids(principals)])


ENVOY_ACTION = {
    Action.ALLOW: rbac_pb2.RBAC.ALLOW,
    Action.DENY: rbac_pb2.RBAC.DENY,
    Action.AUDIT: rbac_pb2.RBAC.LOG,
}


def _envoy_rules(action: int, policies: Sequence[Policy], prefix: str = "") -> rbac_pb2.RBAC:
    """One Envoy RBAC rule set with Envoy ``action`` for ``policies``: one named policy per
    rule, ``<prefix><policy>[<index>]``, in policy-name order so the output is stable."""
    rules = rbac_pb2.RBAC(action=action)  # type: ignore[arg-type]
    for policy in sorted(policies, key=lambda p: p.name):
        for i, rule in enumerate(policy.rules):
            rules.policies[f"{prefix}{policy.name}[{i}]"].CopyFrom(_rule(rule))
    return rules


def http_filters(policies: Sequence[Policy]) -> list[hcm.HttpFilter]:
    """The RBAC filters for the policies that apply to one inbound port, in the order they
    must run: AUDIT (never blocks), DENY, ALLOW. Empty when no policy applies. ``CUSTOM``
    policies are not among them (see :func:`custom_shadow_filter`)."""
    out = []
    for action in (Action.AUDIT, Action.DENY, Action.ALLOW):
        mine = [p for p in policies if p.action is action]
        if not mine:
            continue
        rules = _envoy_rules(ENVOY_ACTION[action], mine)
        config = rbac_filter.RBAC(rules=rules)
        out.append(
            hcm.HttpFilter(name=f"{RBAC_FILTER}.{action.value.lower()}", typed_config=pack(config))
        )
    return out


def custom_shadow_filter(policies: Sequence[Policy]) -> hcm.HttpFilter | None:
    """An RBAC filter that enforces nothing and marks the requests a ``CUSTOM`` rule matches
    (:func:`custom_matched`); None when there are no ``CUSTOM`` policies."""
    mine = [p for p in policies if p.action is Action.CUSTOM]
    if not mine:
        return None
    config = rbac_filter.RBAC(
        shadow_rules=_envoy_rules(rbac_pb2.RBAC.ALLOW, mine, CUSTOM_POLICY_PREFIX),
        shadow_rules_stat_prefix=CUSTOM_STAT_PREFIX,
    )
    return hcm.HttpFilter(name=f"{RBAC_FILTER}.custom", typed_config=pack(config))


def custom_deny_filter(policies: Sequence[Policy]) -> hcm.HttpFilter | None:
    """The requests ``CUSTOM`` rules match, refused (403): what a proxy that cannot reach
    the external authorizer enforces instead of asking it. None without ``CUSTOM`` policies."""
    mine = [p for p in policies if p.action is Action.CUSTOM]
    if not mine:
        return None
    config = rbac_filter.RBAC(rules=_envoy_rules(rbac_pb2.RBAC.DENY, mine))
    return hcm.HttpFilter(name=f"{RBAC_FILTER}.custom-unreachable", typed_config=pack(config))


def custom_matched(invert: bool = False) -> metadata_pb2.MetadataMatcher:
    """Matches a request :func:`custom_shadow_filter` marked (``invert``: one it did not)."""
    return metadata_pb2.MetadataMatcher(
        filter=RBAC_FILTER,
        path=[metadata_pb2.MetadataMatcher.PathSegment(key=CUSTOM_MATCHED_KEY)],
        value=value_pb2.ValueMatcher(
            string_match=string_pb2.StringMatcher(prefix=CUSTOM_POLICY_PREFIX)
        ),
        invert=invert,
    )


# -- TCP ---------------------------------------------------------------------------------------
def _http_only(op: Operation) -> bool:
    return bool(
        op.hosts or op.not_hosts or op.methods or op.not_methods or op.paths or op.not_paths
    )


def _tcp_condition(c: Condition) -> bool:
    return c.key in PRINCIPAL_KEYS or c.key in PERMISSION_KEYS


def tcp_rule(rule: Rule, action: Action) -> Rule | None:
    """``rule`` as it applies to a TCP connection (Istio's semantics for HTTP-only fields:
    ``hosts``, ``methods``, ``paths`` and their ``not`` forms, ``request.headers`` conditions).

    ``ALLOW``: None when the rule names any of them, since it could never be satisfied by a
    connection. Other actions: the rule without them, so it matches at least every connection
    it would have matched with them (a DENY of ``GET`` on TCP refuses every connection)."""
    http_ops = any(_http_only(op) for op in rule.operations)
    http_conditions = any(not _tcp_condition(c) for c in rule.conditions)
    if not (http_ops or http_conditions):
        return rule
    if action is Action.ALLOW:
        return None
    operations = tuple(Operation(ports=op.ports, not_ports=op.not_ports) for op in rule.operations)
    conditions = tuple(c for c in rule.conditions if _tcp_condition(c))
    return Rule(rule.sources, operations, conditions)


def tcp_policy(policy: Policy) -> Policy:
    """``policy`` with :func:`tcp_rule` applied to each rule (dropped ones left out)."""
    rules = (tcp_rule(r, policy.action) for r in policy.rules)
    return Policy(policy.name, policy.action, tuple(r for r in rules if r is not None))


def dropped_http_fields(policy: Policy) -> bool:
    """Whether :func:`tcp_policy` changes ``policy``: worth telling the operator."""
    return tcp_policy(policy) != policy


def network_filters(policies: Sequence[Policy], stat_prefix: str) -> list[lc.Filter]:
    """Network RBAC filters for the policies that apply to one inbound TCP port, in the order
    AUDIT, DENY, ALLOW (as :func:`http_filters`), with :func:`tcp_policy` applied. ``CUSTOM``
    policies are not among them (see :func:`custom_network_shadow_filter`)."""
    out = []
    for action in (Action.AUDIT, Action.DENY, Action.ALLOW):
        mine = [tcp_policy(p) for p in policies if p.action is action]
        if not mine:
            continue
        rules = _envoy_rules(ENVOY_ACTION[action], mine)
        name = action.value.lower()
        config = network_rbac.RBAC(rules=rules, stat_prefix=f"{stat_prefix}{name}.")
        out.append(lc.Filter(name=f"{NETWORK_RBAC_FILTER}.{name}", typed_config=pack(config)))
    return out


def custom_network_deny_filter(policies: Sequence[Policy], stat_prefix: str) -> lc.Filter | None:
    """The connections ``CUSTOM`` rules match (HTTP-only parts dropped), refused: what a proxy
    that cannot reach the external authorizer enforces instead. None without ``CUSTOM``
    policies."""
    mine = [tcp_policy(p) for p in policies if p.action is Action.CUSTOM]
    if not mine:
        return None
    config = network_rbac.RBAC(
        rules=_envoy_rules(rbac_pb2.RBAC.DENY, mine), stat_prefix=f"{stat_prefix}custom."
    )
    return lc.Filter(name=f"{NETWORK_RBAC_FILTER}.custom-refused", typed_config=pack(config))


def custom_network_shadow_filter(policies: Sequence[Policy], stat_prefix: str) -> lc.Filter | None:
    """The network form of :func:`custom_shadow_filter`: enforces nothing, marks a connection
    a ``CUSTOM`` rule matches (HTTP-only parts dropped, :func:`tcp_policy`) for
    :func:`custom_network_matched`. None without ``CUSTOM`` policies."""
    mine = [tcp_policy(p) for p in policies if p.action is Action.CUSTOM]
    if not mine:
        return None
    config = network_rbac.RBAC(
        shadow_rules=_envoy_rules(rbac_pb2.RBAC.ALLOW, mine, CUSTOM_POLICY_PREFIX),
        shadow_rules_stat_prefix=CUSTOM_STAT_PREFIX,
        stat_prefix=f"{stat_prefix}custom.",
    )
    return lc.Filter(name=f"{NETWORK_RBAC_FILTER}.custom", typed_config=pack(config))


def custom_network_matched(invert: bool = False) -> metadata_pb2.MetadataMatcher:
    """Matches a connection :func:`custom_network_shadow_filter` marked (``invert``: one it
    did not)."""
    matcher = custom_matched(invert)
    matcher.filter = NETWORK_RBAC_FILTER
    return matcher
