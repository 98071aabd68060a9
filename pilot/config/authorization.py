"""``security.istio.io`` ``AuthorizationPolicy``: who may call a workload, and what.

Parsed here into :class:`security.rbac.Rule` values; :mod:`security.rbac` turns them into
Envoy's RBAC filters and :mod:`pilot.rbac_plugin` puts them on the inbound HTTP and TCP ports
of the workloads each policy selects and on the gateways it selects (by the gateway proxy's
labels). A policy in the root namespace
(:data:`~pilot.config.peer_authentication.ROOT_NAMESPACE`) without a selector applies to the
whole mesh, one elsewhere without a selector to its namespace, one with a selector to the
matching workloads of its namespace.

Understood: ``action`` ``ALLOW`` (the default), ``DENY``, ``AUDIT`` and ``CUSTOM`` with
``provider.name: mixer`` (:data:`MIXER_PROVIDER`, meshfed's built-in external authorizer:
Mixer's Check through each proxy's node-local client, see :mod:`pilot.custom_authz`);
``from.source.principals/namespaces/ipBlocks/remoteIpBlocks`` and their ``not`` forms;
``to.operation.hosts/methods/paths/ports`` and their ``not`` forms; ``when`` on
``request.headers[NAME]``, ``source.ip``, ``source.namespace``, ``source.principal``,
``destination.ip``, ``destination.port``. Everything else (other providers,
``requestPrincipals``, JWT claims, ``targetRef``) is refused naming the
field: an accepted policy is an enforced one.
"""

from __future__ import annotations

import ipaddress
import re

import attrs

from meshfed.core.resources import ConfigError, Document, FieldReader
from meshfed.pilot.config.peer_authentication import ROOT_NAMESPACE
from meshfed.registry.model import Labels
from meshfed.security import rbac

API_VERSIONS = frozenset({"security.istio.io/v1beta1", "security.istio.io/v1"})
ACTIONS = {a.value: a for a in rbac.Action}
MIXER_PROVIDER = "mixer"
MAX_ITEMS = 1000
HEADER_KEY = re.compile(r"^request\.headers\[([!#$%&'*+.^_`|~0-9A-Za-z-]+)\]$")
WHEN_KEYS = {
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
}


@attrs.frozen(slots=True)
class AuthorizationPolicy:
    name: str
    namespace: str
    file: str
    selector: Labels | None
    action: rbac.Action
    rules: tuple[rbac.Rule, ...]
    provider: str = ""  # CUSTOM: the external authorizer (only MIXER_PROVIDER)

    @property
    def ref(self) -> str:
        return f"AuthorizationPolicy {self.namespace}/{self.name}"

    def applies_to(self, namespace: str, labels: Labels) -> bool:
        if self.selector is None:
            return self.namespace in (ROOT_NAMESPACE, namespace)
        if self.namespace != namespace:
            return False
        return all(labels.get(k) == v for k, v in self.selector.items())


def _refuse(r: FieldReader, names: list[str], why: str) -> None:
    for name in names:
        if name in r.data:
            r.error(name, f"not supported by meshfed ({why}); remove it")


def _strings(r: FieldReader, name: str, check: object = None) -> tuple[str, ...]:
    values: list[str] = [str(v) for v in r.str_list(name)]
    if len(values) > MAX_ITEMS:
        r.error(name, f"expected at most {MAX_ITEMS} values")
        return ()
    out = []
    for i, value in enumerate(values):
        if not value or len(value) > 1024 or any(c in value for c in "\r\n\0"):
            r.error(f"{name}[{i}]", "expected a non-empty string of at most 1024 characters")
            continue
        if check == "cidr":
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                r.error(f"{name}[{i}]", f"expected an IP address or CIDR block, got {value!r}")
                continue
        if check == "port" and not (value.isascii() and value.isdigit() and 0 < int(value) < 65536):
            r.error(f"{name}[{i}]", f"expected a port number 1-65535, got {value!r}")
            continue
        out.append(value)
    return tuple(out)


SOURCE_FIELDS = {
    "principals": ("principals", ""),
    "notPrincipals": ("not_principals", ""),
    "namespaces": ("namespaces", ""),
    "notNamespaces": ("not_namespaces", ""),
    "ipBlocks": ("ip_blocks", "cidr"),
    "notIpBlocks": ("not_ip_blocks", "cidr"),
    "remoteIpBlocks": ("remote_ip_blocks", "cidr"),
    "notRemoteIpBlocks": ("not_remote_ip_blocks", "cidr"),
}
OPERATION_FIELDS = {
    "hosts": ("hosts", ""),
    "notHosts": ("not_hosts", ""),
    "methods": ("methods", ""),
    "notMethods": ("not_methods", ""),
    "paths": ("paths", ""),
    "notPaths": ("not_paths", ""),
    "ports": ("ports", "port"),
    "notPorts": ("not_ports", "port"),
}


def _source(r: FieldReader) -> rbac.Source:
    refused = ["requestPrincipals", "notRequestPrincipals"]
    _refuse(r, refused, "request authentication is not implemented")
    r.unknown_fields(set(SOURCE_FIELDS) | set(refused))
    return rbac.Source(
        **{attr: _strings(r, key, check) for key, (attr, check) in SOURCE_FIELDS.items()}
    )


def _operation(r: FieldReader) -> rbac.Operation:
    r.unknown_fields(set(OPERATION_FIELDS))
    return rbac.Operation(
        **{attr: _strings(r, key, check) for key, (attr, check) in OPERATION_FIELDS.items()}
    )


def _condition(r: FieldReader) -> rbac.Condition | None:
    r.unknown_fields({"key", "values", "notValues"})
    key = r.str("key", required=True)
    check = "cidr" if key in ("source.ip", "destination.ip") else ""
    check = "port" if key == "destination.port" else check
    values, not_values = _strings(r, "values", check), _strings(r, "notValues", check)
    if not values and not not_values and "values" not in r.data and "notValues" not in r.data:
        r.error("values", "expected values or notValues")
    header = HEADER_KEY.match(key)
    if header is None and key not in WHEN_KEYS:
        if key:
            r.error(
                "key",
                f"not supported by meshfed: {key!r} (supported: request.headers[NAME], "
                f"{', '.join(sorted(WHEN_KEYS))})",
            )
        return None
    return rbac.Condition(key, values, not_values)


def parse_authorization_policy(
    doc: Document,
) -> tuple[AuthorizationPolicy | None, list[ConfigError]]:
    r = FieldReader(doc.file, doc.ref, doc.spec, "spec")
    if doc.api_version not in API_VERSIONS:
        r.errors.append(
            ConfigError(
                doc.file,
                doc.ref,
                "apiVersion",
                f"expected one of {', '.join(sorted(API_VERSIONS))}, got {doc.api_version!r}",
            )
        )
    refused = ["targetRef", "targetRefs"]
    _refuse(r, refused, "target references are not implemented")
    r.unknown_fields({"selector", "action", "rules", "provider"} | set(refused))
    selector = None
    sel = r.reader("selector")
    if sel is not None:
        sel.unknown_fields({"matchLabels"})
        selector = Labels(sel.labels("matchLabels"))
    action_name = r.str("action", default="ALLOW")
    action = ACTIONS.get(action_name, rbac.Action.ALLOW)
    if action_name not in ACTIONS:
        r.error("action", f"expected ALLOW, DENY, AUDIT or CUSTOM, got {action_name!r}")
    provider = _provider(r, action_name == "CUSTOM")
    rules: list[rbac.Rule] = []
    readers = list(r.readers("rules"))
    if len(readers) > MAX_ITEMS:
        r.error("rules", f"expected at most {MAX_ITEMS} rules")
        readers = []
    for rule in readers:
        rule.unknown_fields({"from", "to", "when"})
        sources = []
        for entry in rule.readers("from"):
            entry.unknown_fields({"source"})
            source = entry.reader("source", required=True)
            if source is not None:
                sources.append(_source(source))
        operations = []
        for entry in rule.readers("to"):
            entry.unknown_fields({"operation"})
            operation = entry.reader("operation", required=True)
            if operation is not None:
                operations.append(_operation(operation))
        conditions = [c for c in map(_condition, rule.readers("when")) if c is not None]
        rules.append(rbac.Rule(tuple(sources), tuple(operations), tuple(conditions)))
    if r.errors:
        return None, r.errors
    return AuthorizationPolicy(
        doc.name, doc.namespace, doc.file, selector, action, tuple(rules), provider
    ), []


def _provider(r: FieldReader, custom: bool) -> str:
    """``provider.name`` of a CUSTOM policy: only meshfed's built-in ``mixer``."""
    if "provider" not in r.data:
        if custom:
            r.error(
                "provider",
                f"expected provider.name for action CUSTOM (meshfed's provider: "
                f"{MIXER_PROVIDER!r})",
            )
        return ""
    if not custom:
        r.error("provider", "only allowed with action CUSTOM; remove it")
        return ""
    provider = r.reader("provider", required=True)
    if provider is None:
        return ""
    provider.unknown_fields({"name"})
    name = provider.str("name", required=True)
    if name and name != MIXER_PROVIDER:
        provider.error(
            "name",
            f"expected {MIXER_PROVIDER!r} (meshfed's built-in external authorizer: Mixer, "
            f"through each proxy's node-local client; mesh config extensionProviders are not "
            f"supported), got {name[:100]!r}",
        )
    return name
