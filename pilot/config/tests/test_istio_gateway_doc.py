"""docs/traffic.md's Gateway field table is what the parser does: every field it lists as
refused is refused, with an error naming that field, when added to an otherwise good document."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshfed.pilot.config.store import parse_config_file

DOC = Path(__file__).parents[3] / "docs" / "traffic.md"
GATEWAY = {
    "selector": {"istio": "ingressgateway"},
    "servers": [
        {
            "port": {"number": 443, "name": "https", "protocol": "HTTPS"},
            "hosts": ["a.example.com"],
            "tls": {"mode": "SIMPLE", "credentialName": "a-cert"},
        }
    ],
}
VS = {
    "hosts": ["a.example.com"],
    "gateways": ["front"],
    "tls": [
        {
            "match": [{"sniHosts": ["a.example.com"]}],
            "route": [{"destination": {"host": "a", "port": {"number": 443}}}],
        }
    ],
    "tcp": [{"route": [{"destination": {"host": "a", "port": {"number": 5432}}}]}],
}


def refused_fields() -> list[tuple[str, str]]:
    """(kind, dotted path under spec, lists marked ``[0]``) of every refused row."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Today's Istio API: Gateway", 1)[1].split("\n## ", 1)[0]
    out: list[tuple[str, str]] = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[1] != "refused":
            continue
        names = re.findall(r"`([^`]+)`", cells[0])
        if names and names[0] == "VirtualService":
            kinds = [k for n in names if n in ("tls/tcp", "tls", "tcp") for k in n.split("/")]
            kinds = kinds or ["tls", "tcp"]
            fields = [n for n in names[1:] if n not in ("tls/tcp", "tls", "tcp")]
            parent = fields[0].rsplit(".", 1)[0]
            for kind in kinds:
                for field in fields:
                    leaf = field.rsplit(".", 1)[-1]
                    out.append(("VirtualService", f"{kind}[0].{parent}[0].{leaf}"))
            continue
        parent = ""
        for name in names:
            if name.startswith("servers."):
                parent, _, leaf = name.rpartition(".")
            else:
                leaf = name
            out.append(("Gateway", f"{parent.replace('servers', 'servers[0]', 1)}.{leaf}"))
    return out


def _place(spec: dict[str, Any], path: str) -> None:
    node: Any = spec
    for part in path.split(".")[:-1]:
        name, _, index = part.partition("[")
        node = node.setdefault(name, [{}])[0] if index else node.setdefault(name, {})
    node[path.split(".")[-1]] = ["x"]


def test_the_table_lists_refused_fields() -> None:
    fields = refused_fields()
    assert len(fields) >= 15, fields
    assert ("Gateway", "servers[0].tls.caCrl") in fields
    assert ("VirtualService", "tcp[0].match[0].sourceLabels") in fields


@pytest.mark.parametrize(("kind", "path"), refused_fields())
def test_every_field_the_gateway_table_refuses_is_refused_by_name(
    tmp_path: Path, kind: str, path: str
) -> None:
    spec = copy.deepcopy(GATEWAY if kind == "Gateway" else VS)
    _place(spec, path)
    doc = {
        "apiVersion": "networking.istio.io/v1",
        "kind": kind,
        "metadata": {"name": "front", "namespace": "shop"},
        "spec": spec,
    }
    file = tmp_path / "doc.yaml"
    file.write_text(yaml.safe_dump(doc))
    objects, errors = parse_config_file(file)
    assert objects is None
    lines = [str(e) for e in errors]
    assert any(line.startswith(f"{file}: {kind} shop/front: spec.{path}") for line in lines), lines
