"""The AuthorizationPolicy field table of docs/security.md is what the parser does: each row has
examples here (a row without them fails), a supported row's examples are accepted and a refused
row's are refused with an error naming the field; the rows about TCP ports are what a TCP
port's filters and problems are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml

from meshfed.config import load_mesh_config
from meshfed.core.resources import ConfigErrors
from meshfed.pilot.config.store import ConfigSnapshot, parse_config_file
from meshfed.pilot.rbac_plugin import AuthorizationPlugin
from pilot.tests.test_plugins import DB_SIDECAR, cache_with, listeners

DOC = Path(__file__).parents[3] / "docs" / "security.md"
SECTION = "## AuthorizationPolicy"

SRC = "spec.rules[0].from[0].source"
OP = "spec.rules[0].to[0].operation"


def _from(**source: Any) -> dict[str, Any]:
    return {"rules": [{"from": [{"source": source}]}]}


def _to(**operation: Any) -> dict[str, Any]:
    return {"rules": [{"to": [{"operation": operation}]}]}


def _when(key: str, values: list[str]) -> dict[str, Any]:
    return {"rules": [{"when": [{"key": key, "values": values}]}]}


MIXER = {"action": "CUSTOM", "provider": {"name": "mixer"}}
# row label (the first cell, as written) -> accepted specs, or (spec, field) refused
SUPPORTED: dict[str, list[dict[str, Any]]] = {
    "`action: ALLOW` (default), `DENY`, `AUDIT`": [
        {},
        {"action": "ALLOW"},
        {"action": "DENY", "rules": [{}]},
        {"action": "AUDIT", "rules": [{}]},
    ],
    "`action: CUSTOM` with `provider.name: mixer`": [{**MIXER, "rules": [{}]}],
    "`selector.matchLabels`": [{"selector": {"matchLabels": {"app": "web"}}}],
    "`from.source.principals`, `notPrincipals`": [
        _from(principals=["cluster.local/ns/a/sa/b"], notPrincipals=["*/sa/x"])
    ],
    "`from.source.namespaces`, `notNamespaces`": [_from(namespaces=["a"], notNamespaces=["b"])],
    "`from.source.ipBlocks`, `notIpBlocks`": [
        _from(ipBlocks=["127.0.0.0/8"], notIpBlocks=["127.0.0.9"])
    ],
    "`from.source.remoteIpBlocks`, `notRemoteIpBlocks`": [
        _from(remoteIpBlocks=["127.0.0.0/8"], notRemoteIpBlocks=["127.0.0.9"])
    ],
    "`to.operation.hosts`, `notHosts`": [_to(hosts=["web"], notHosts=["*.evil"])],
    "`to.operation.methods`, `paths`, `ports` (and `not` forms)": [
        _to(methods=["GET"], paths=["/a*"], ports=["80"], notMethods=["PUT"]),
        _to(notPaths=["/b"], notPorts=["81"]),
    ],
    "`when` keys `request.headers[NAME]`, `source.ip`, `source.namespace`, `source.principal`, "
    "`destination.ip`, `destination.port`": [
        _when("request.headers[x-a]", ["1"]),
        _when("source.ip", ["127.0.0.1"]),
        _when("source.namespace", ["a"]),
        _when("source.principal", ["cluster.local/ns/a/sa/b"]),
        _when("destination.ip", ["127.0.0.1/32"]),
        _when("destination.port", ["80"]),
    ],
}
REFUSED: dict[str, list[tuple[dict[str, Any], str]]] = {
    "`provider.name` other than `mixer`": [
        ({"action": "CUSTOM", "provider": {"name": "opa"}}, "spec.provider.name"),
        ({"action": "CUSTOM", "provider": {"name": "Mixer"}}, "spec.provider.name"),
    ],
    "`provider` without `action: CUSTOM`": [
        ({"provider": {"name": "mixer"}}, "spec.provider"),
        ({"action": "CUSTOM"}, "spec.provider"),
    ],
    "`targetRef`, `targetRefs`": [
        ({"targetRef": {"kind": "Gateway", "name": "g"}}, "spec.targetRef"),
        ({"targetRefs": [{"kind": "Gateway", "name": "g"}]}, "spec.targetRefs"),
    ],
    "`from.source.requestPrincipals`, `notRequestPrincipals`": [
        (_from(requestPrincipals=["*"]), f"{SRC}.requestPrincipals"),
        (_from(notRequestPrincipals=["*"]), f"{SRC}.notRequestPrincipals"),
    ],
    "other `when` keys (`request.auth.*`, `connection.sni`, ...)": [
        (_when("request.auth.claims[iss]", ["x"]), "spec.rules[0].when[0].key"),
        (_when("connection.sni", ["x"]), "spec.rules[0].when[0].key"),
    ],
}
MESH_REFUSED = {"mesh config `extensionProviders`": "spec.extensionProviders"}
# Rows about TCP ports, decided when a TCP chain is built rather than when parsing:
# row -> (status, spec, what the port's network filters are, whether a problem is reported),
# on a sidecar with a node-local Mixer client
NETWORK = "envoy.filters.network"
TCP_ROWS: dict[str, tuple[str, dict[str, Any], list[str], bool]] = {
    "on a TCP port, ALLOW rules naming `hosts`, `methods`, `paths` (or `not` forms) or "
    "`request.headers`": (
        "differs",
        {"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]},
        [f"{NETWORK}.rbac.allow"],
        True,
    ),
    "on a TCP port, DENY / AUDIT / CUSTOM rules naming them": (
        "differs",
        {"action": "DENY", "rules": [{"when": [{"key": "request.headers[a]", "values": ["1"]}]}]},
        [f"{NETWORK}.rbac.deny"],
        True,
    ),
    "`action: CUSTOM` on a TCP port": (
        "supported",
        {**MIXER, "rules": [{}]},
        [f"{NETWORK}.rbac.custom", f"{NETWORK}.ext_authz.custom"],
        False,
    ),
}


def rows() -> dict[str, str]:
    """Row label -> status, for the AuthorizationPolicy table."""
    section = DOC.read_text(encoding="utf-8").split(SECTION, 1)[1].split("\n## ", 1)[0]
    out = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[1] in ("supported", "refused", "differs"):
            out[cells[0]] = cells[1]
    return out


def test_every_row_has_examples_and_the_status_the_table_says() -> None:
    table = rows()
    listed = {
        **dict.fromkeys(SUPPORTED, "supported"),
        **dict.fromkeys(REFUSED, "refused"),
        **dict.fromkeys(MESH_REFUSED, "refused"),
        **{row: status for row, (status, *_) in TCP_ROWS.items()},
    }
    assert table == listed


@pytest.mark.parametrize("row", list(TCP_ROWS))
def test_tcp_rows_are_what_a_tcp_port_gets(tmp_path: Path, row: str) -> None:
    _, spec, filters, reported = TCP_ROWS[row]
    path = tmp_path / "authz.yaml"
    doc = {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy"}
    path.write_text(
        yaml.safe_dump({**doc, "metadata": {"name": "x", "namespace": "default"}, "spec": spec})
    )
    objects, errors = parse_config_file(path)
    assert errors == [] and objects is not None
    plugin = AuthorizationPlugin(ConfigSnapshot.of(objects).authorization_policies)
    view = cache_with(plugin).view(attrs.evolve(DB_SIDECAR, mixer_client=True))
    chain = listeners(view)["inbound|10.0.0.7:5432"].filter_chains[0]
    assert [f.name for f in chain.filters] == [*filters, f"{NETWORK}.tcp_proxy"]
    mine = [p for p in view.problems if "default/x" in p and "TCP port 5432" in p]
    assert bool(mine) is reported, view.problems


def _parse(tmp_path: Path, spec: dict[str, Any]) -> tuple[Path, list[str], bool]:
    doc = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "x", "namespace": "shop"},
        "spec": spec,
    }
    path = tmp_path / "authz.yaml"
    path.write_text(yaml.safe_dump(doc))
    objects, errors = parse_config_file(path)
    return path, [str(e) for e in errors], objects is not None


@pytest.mark.parametrize(
    "spec", [s for specs in SUPPORTED.values() for s in specs], ids=lambda s: str(s)[:60]
)
def test_supported_fields_are_accepted(tmp_path: Path, spec: dict[str, Any]) -> None:
    _, errors, ok = _parse(tmp_path, spec)
    assert ok and errors == []


@pytest.mark.parametrize(
    ("spec", "field"),
    [case for cases in REFUSED.values() for case in cases],
    ids=lambda v: str(v)[:60],
)
def test_refused_fields_are_refused_by_name(
    tmp_path: Path, spec: dict[str, Any], field: str
) -> None:
    path, errors, ok = _parse(tmp_path, spec)
    assert not ok
    assert any(e.startswith(f"{path}: AuthorizationPolicy shop/x: {field}") for e in errors), errors


@pytest.mark.parametrize("field", list(MESH_REFUSED.values()))
def test_mesh_config_fields_are_refused_by_name(tmp_path: Path, field: str) -> None:
    path = tmp_path / "mesh.yaml"
    leaf = field.rsplit(".", 1)[1]
    doc = {
        "apiVersion": "meshfed.io/v1alpha1",
        "kind": "MeshConfig",
        "metadata": {"name": "mesh"},
        "spec": {leaf: [{"name": "opa", "envoyExtAuthzGrpc": {"service": "opa", "port": 1}}]},
    }
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigErrors) as caught:
        load_mesh_config(path)
    assert any(e.field == field for e in caught.value.errors)
