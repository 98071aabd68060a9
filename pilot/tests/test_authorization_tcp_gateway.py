"""AuthorizationPolicy beyond sidecars' HTTP ports: network RBAC on inbound TCP ports (Istio's
meaning of HTTP-only fields there; CUSTOM through the network ext_authz, or failing closed
without a Mixer client) and HTTP RBAC on the gateways a policy selects by their labels."""

from __future__ import annotations

import textwrap
from pathlib import Path

import attrs
from envoy.config.listener.v3 import listener_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2 as http_authz
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter
from envoy.extensions.filters.network.ext_authz.v3 import ext_authz_pb2 as tcp_authz
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac
from hypothesis import event, given, settings
from hypothesis import strategies as st

from meshfed.pilot import xds_types as T
from meshfed.pilot.config.authorization import AuthorizationPolicy
from meshfed.pilot.config.store import ConfigSnapshot, parse_config_file
from meshfed.pilot.custom_authz import CUSTOM_AUTHZ, CUSTOM_TCP_AUTHZ
from meshfed.pilot.mixer_plugin import FAIL_OPEN_HEADER, QUOTAS_HEADER, MixerDataPath, MixerPlugin
from meshfed.pilot.rbac_plugin import AuthorizationPlugin
from meshfed.registry.model import Labels
from meshfed.security import rbac
from pilot.tests.test_mixer_plugin import DB_WITH_CLIENT, GW_WITH_CLIENT, manager_of
from pilot.tests.test_plugins import DB_SIDECAR, GATEWAY, cache_with, http_filters, listeners

DB_INBOUND = "inbound|10.0.0.7:5432"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
ROUTER = "envoy.filters.http.router"


def policies(tmp_path: Path, text: str) -> tuple[AuthorizationPolicy, ...]:
    path = tmp_path / "authz.yaml"
    path.write_text(textwrap.dedent(text))
    objects, errors = parse_config_file(path)
    assert errors == [] and objects is not None, errors
    return ConfigSnapshot.of(objects).authorization_policies


def tcp_chain(tmp_path: Path, text: str) -> tuple[list, list[str]]:
    view = cache_with(AuthorizationPlugin(policies(tmp_path, text))).view(DB_SIDECAR)
    return list(listeners(view)[DB_INBOUND].filter_chains[0].filters), list(view.problems)


def network_config(filt: object) -> network_rbac.RBAC:
    config = network_rbac.RBAC()
    filt.typed_config.Unpack(config)  # type: ignore[attr-defined]
    return config


# -- what a rule means on TCP ------------------------------------------------------------------
GET = rbac.Operation(methods=("GET",), ports=("5432",))
HEADER = rbac.Condition("request.headers[x-a]", ("1",))
PORT = rbac.Condition("destination.port", ("5432",))
SRC = (rbac.Source(principals=("cluster.local/ns/a/sa/b",)),)


def test_allow_rules_naming_http_only_fields_never_match_on_tcp() -> None:
    assert rbac.tcp_rule(rbac.Rule(SRC, (GET,)), rbac.Action.ALLOW) is None
    assert rbac.tcp_rule(rbac.Rule(SRC, (), (HEADER,)), rbac.Action.ALLOW) is None
    plain = rbac.Rule(SRC, (rbac.Operation(ports=("5432",)),), (PORT,))
    assert rbac.tcp_rule(plain, rbac.Action.ALLOW) == plain


def test_deny_audit_and_custom_rules_drop_only_the_http_only_parts() -> None:
    rule = rbac.Rule(SRC, (GET, rbac.Operation(paths=("/x",))), (HEADER, PORT))
    for action in (rbac.Action.DENY, rbac.Action.AUDIT, rbac.Action.CUSTOM):
        assert rbac.tcp_rule(rule, action) == rbac.Rule(
            SRC, (rbac.Operation(ports=("5432",)), rbac.Operation()), (PORT,)
        )


def test_tcp_port_gets_network_rbac_deny_then_allow_before_tcp_proxy(tmp_path: Path) -> None:
    filters, problems = tcp_chain(
        tmp_path,
        """
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: db-clients, namespace: default}
        spec:
          rules:
          - from: [{source: {principals: [cluster.local/ns/default/sa/app]}}]
          - from: [{source: {ipBlocks: [127.0.0.0/8]}}]
            to: [{operation: {methods: [GET]}}]
        ---
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: no-intruder, namespace: default}
        spec:
          action: DENY
          rules: [{from: [{source: {ipBlocks: [127.0.0.66/32]}}]}]
        """,
    )
    names = [f.name for f in filters]
    assert names == [
        "envoy.filters.network.rbac.deny",
        "envoy.filters.network.rbac.allow",
        TCP_PROXY,
    ]
    deny, allow = network_config(filters[0]), network_config(filters[1])
    assert deny.rules.action == rbac_pb2.RBAC.DENY
    assert allow.rules.action == rbac_pb2.RBAC.ALLOW and allow.stat_prefix
    # The second ALLOW rule names a method: it is gone, so the block is not let in on TCP.
    assert list(allow.rules.policies) == ["default/db-clients[0]"]
    assert any("default/db-clients" in p and "HTTP-only" in p for p in problems), problems


def test_a_deny_of_only_http_fields_refuses_every_connection(tmp_path: Path) -> None:
    filters, _ = tcp_chain(
        tmp_path,
        """
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: no-get, namespace: default}
        spec:
          action: DENY
          rules: [{to: [{operation: {methods: [GET]}}]}]
        """,
    )
    (policy,) = network_config(filters[0]).rules.policies.values()
    assert policy.permissions[0].any and policy.principals[0].any


CUSTOM_TCP = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: default}
spec:
  action: CUSTOM
  provider: {name: mixer}
  rules: [{from: [{source: {notPrincipals: [cluster.local/ns/default/sa/app]}}]}]
"""


def test_custom_on_a_tcp_port_without_a_client_is_refused_and_reported(tmp_path: Path) -> None:
    filters, problems = tcp_chain(tmp_path, CUSTOM_TCP)
    assert [f.name for f in filters] == ["envoy.filters.network.rbac.custom-refused", TCP_PROXY]
    assert network_config(filters[0]).rules.action == rbac_pb2.RBAC.DENY
    assert any("default/ext" in p and "CUSTOM" in p for p in problems), problems


def test_custom_on_a_tcp_port_asks_mixer_once_for_the_connections_it_matches(
    tmp_path: Path,
) -> None:
    data_path = MixerDataPath(enabled=True, quotas=("conns",))
    plugins = (
        AuthorizationPlugin(policies(tmp_path, CUSTOM_TCP), data_path),
        MixerPlugin(data_path),
    )
    view = cache_with(*plugins).view(DB_WITH_CLIENT)
    filters = list(listeners(view)[DB_INBOUND].filter_chains[0].filters)
    assert [f.name for f in filters] == [
        "envoy.filters.network.rbac.custom",
        CUSTOM_TCP_AUTHZ,
        "envoy.filters.network.ext_authz",
        TCP_PROXY,
    ]
    shadow = network_config(filters[0])
    assert not shadow.HasField("rules") and list(shadow.shadow_rules.policies) == [
        "meshfed-custom:default/ext[0]"
    ]
    custom, data = tcp_authz.ExtAuthz(), tcp_authz.ExtAuthz()
    filters[1].typed_config.Unpack(custom)
    filters[2].typed_config.Unpack(data)
    assert not custom.failure_mode_allow
    headers = {h.key: h.value for h in custom.grpc_service.initial_metadata}
    assert headers == {FAIL_OPEN_HEADER: "false", QUOTAS_HEADER: "conns"}
    gate = custom.filter_enabled_metadata
    assert gate.filter == rbac.NETWORK_RBAC_FILTER and not gate.invert
    assert data.filter_enabled_metadata.filter == rbac.NETWORK_RBAC_FILTER
    assert data.filter_enabled_metadata.invert
    assert not [p for p in view.problems if "CUSTOM" in p]


def test_policies_of_other_workloads_leave_the_tcp_port_alone(tmp_path: Path) -> None:
    filters, problems = tcp_chain(
        tmp_path,
        """
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: web-only, namespace: default}
        spec:
          selector: {matchLabels: {app: web}}
          rules: [{}]
        """,
    )
    assert [f.name for f in filters] == [TCP_PROXY]
    assert not [p for p in problems if p.startswith("authorization")]


_value = st.sampled_from(["GET", "/a*", "*", "x.example", "5432", "a"])
_values = st.lists(_value, max_size=2).map(tuple)
_ops = st.builds(
    rbac.Operation,
    hosts=_values,
    not_hosts=_values,
    methods=_values,
    not_methods=_values,
    paths=_values,
    not_paths=_values,
    ports=st.lists(st.sampled_from(["1", "5432", "65535"]), max_size=2).map(tuple),
)
# Values as the parser lets them through: an address for source.ip, a port for the port.
_conditions = st.sampled_from(
    [
        rbac.Condition("request.headers[x-a]", ("1",)),
        rbac.Condition("request.headers[x-b]", (), ("*",)),
        rbac.Condition("source.ip", ("127.0.0.1",)),
        rbac.Condition("destination.port", ("80", "5432")),
        rbac.Condition("source.principal", (), ("cluster.local/ns/a/sa/b",)),
    ]
)
_rules = st.builds(
    rbac.Rule,
    sources=st.lists(st.builds(rbac.Source, ip_blocks=st.just(("127.0.0.0/8",))), max_size=2).map(
        tuple
    ),
    operations=st.lists(_ops, max_size=3).map(tuple),
    conditions=st.lists(_conditions, max_size=3).map(tuple),
)


@settings(max_examples=200, deadline=None)
@given(rule=_rules, action=st.sampled_from(list(rbac.Action)))
def test_tcp_rules_never_keep_an_http_only_field(rule: rbac.Rule, action: rbac.Action) -> None:
    out = rbac.tcp_rule(rule, action)
    if out is None:
        assert action is rbac.Action.ALLOW
        return
    assert out.sources == rule.sources
    assert all(
        not (o.hosts or o.not_hosts or o.methods or o.not_methods or o.paths or o.not_paths)
        for o in out.operations
    )
    assert all(not c.key.startswith("request.") for c in out.conditions)
    # Never narrower outside ALLOW: every operation and TCP condition of the input stays.
    assert [o.ports for o in out.operations] == [o.ports for o in rule.operations]
    if action is rbac.Action.ALLOW:
        assert out == rule
    # What Envoy gets is a well-formed network RBAC config.
    for filt in rbac.network_filters([rbac.Policy("p", action, (rule,))], "x."):
        network_config(filt).SerializeToString()


# -- gateways ----------------------------------------------------------------------------------
GATEWAY_POLICIES = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: front-door, namespace: default}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  rules: [{from: [{source: {remoteIpBlocks: [127.0.0.0/24]}}, {source: {ipBlocks: [127.0.1.7]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: default}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-only, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules: [{}]
"""


def gateway_listener(tmp_path: Path, node: object, *plugins: object) -> listener_pb2.Listener:
    plugin = AuthorizationPlugin(policies(tmp_path, GATEWAY_POLICIES))
    view = cache_with(plugin, *plugins).view(node)  # type: ignore[arg-type]
    (listener,) = listeners(view).values()
    return listener


def test_a_gateway_without_labels_gets_the_policies_selecting_istio_ingressgateway(
    tmp_path: Path,
) -> None:
    listener = gateway_listener(tmp_path, GATEWAY)
    assert http_filters(listener) == [
        ["envoy.filters.http.rbac.deny", "envoy.filters.http.rbac.allow", ROUTER]
    ]
    allow = rbac_filter.RBAC()
    manager_of(listener).http_filters[1].typed_config.Unpack(allow)
    (policy,) = allow.rules.policies.values()
    remote, direct = policy.principals[0].or_ids.ids
    assert (
        remote.remote_ip.address_prefix == "127.0.0.0" and remote.remote_ip.prefix_len.value == 24
    )
    assert direct.direct_remote_ip.address_prefix == "127.0.1.7"


def test_a_gateway_with_other_labels_or_namespace_is_not_selected(tmp_path: Path) -> None:
    other = attrs.evolve(GATEWAY, labels=Labels({"istio": "egressgateway"}))
    assert http_filters(gateway_listener(tmp_path, other)) == [[ROUTER]]
    elsewhere = attrs.evolve(GATEWAY, namespace="edge")
    assert http_filters(gateway_listener(tmp_path, elsewhere)) == [[ROUTER]]
    own = attrs.evolve(GATEWAY, labels=Labels({"istio": "ingressgateway", "app": "web"}))
    assert http_filters(gateway_listener(tmp_path, own)) == [
        ["envoy.filters.http.rbac.deny", "envoy.filters.http.rbac.allow", ROUTER]
    ]


def test_custom_at_a_gateway_checks_with_mixer_naming_each_routes_destination(
    tmp_path: Path,
) -> None:
    text = """
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: ext, namespace: default}
    spec:
      selector: {matchLabels: {istio: ingressgateway}}
      action: CUSTOM
      provider: {name: mixer}
      rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
    """
    data_path = MixerDataPath(enabled=True)
    plugins = (AuthorizationPlugin(policies(tmp_path, text), data_path), MixerPlugin(data_path))
    view = cache_with(*plugins).view(GW_WITH_CLIENT)
    (listener,) = listeners(view).values()
    assert http_filters(listener) == [
        ["envoy.filters.http.rbac.custom", CUSTOM_AUTHZ, "envoy.filters.http.ext_authz", ROUTER]
    ]
    (table,) = view.get(T.ROUTE).values()
    routes = route_pb2.RouteConfiguration()
    table.body.Unpack(routes)
    per = http_authz.ExtAuthzPerRoute()
    routes.virtual_hosts[0].routes[0].typed_per_filter_config[CUSTOM_AUTHZ].Unpack(per)
    assert per.check_settings.context_extensions["destination.service"].startswith("web.")


# -- hostile policies through the parser, then every kind of chain -----------------------------
_text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["*", "GET", "/a*", "127.0.0.1", "::1/128", "80", "0", "70000", "a\nb"]),
)
_field_values = st.one_of(st.lists(_text, max_size=3), _text, st.integers(), st.none())
_source = st.dictionaries(
    st.sampled_from(["principals", "ipBlocks", "remoteIpBlocks", "notRemoteIpBlocks", "x"]),
    _field_values,
    max_size=3,
)
_operation = st.dictionaries(
    st.sampled_from(["hosts", "methods", "paths", "ports", "notPorts", "notPaths"]),
    _field_values,
    max_size=3,
)
_when = st.fixed_dictionaries(
    {
        "key": st.sampled_from(
            ["request.headers[a]", "source.ip", "destination.port", "remote.ip", ""]
        ),
        "values": _field_values,
    }
)
_rule = st.fixed_dictionaries(
    {},
    optional={
        "from": st.lists(st.fixed_dictionaries({"source": _source}), max_size=2),
        "to": st.lists(st.fixed_dictionaries({"operation": _operation}), max_size=2),
        "when": st.lists(_when, max_size=2),
    },
)
_spec = st.fixed_dictionaries(
    {"rules": st.lists(_rule, max_size=3)},
    optional={
        "action": st.sampled_from(["ALLOW", "DENY", "AUDIT", "CUSTOM", "deny"]),
        "selector": st.just({"matchLabels": {"istio": "ingressgateway"}}),
        "provider": st.just({"name": "mixer"}),
    },
)


@settings(max_examples=150, deadline=None)
@given(spec=_spec)
def test_hostile_policies_are_refused_or_build_tcp_and_gateway_chains(
    tmp_path_factory: object, spec: dict
) -> None:
    import yaml

    folder = tmp_path_factory.mktemp("h")  # type: ignore[attr-defined]
    path = folder / "authz.yaml"
    doc = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "h", "namespace": "default"},
        "spec": spec,
    }
    path.write_text(yaml.safe_dump(doc))
    objects, errors = parse_config_file(path)
    event("refused" if objects is None else "accepted")
    if objects is None:
        assert errors and all(
            str(e).startswith(f"{path}: AuthorizationPolicy default/h: spec") for e in errors
        )
        return
    plugin = AuthorizationPlugin(ConfigSnapshot.of(objects).authorization_policies)
    cache = cache_with(plugin)
    for node in (DB_SIDECAR, GATEWAY):
        view = cache.view(node)
        assert not [p for p in view.problems if "failed in" in p], view.problems
        for listener in listeners(view).values():
            listener.SerializeToString()
