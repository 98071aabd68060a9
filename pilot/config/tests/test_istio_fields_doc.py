"""The field table of docs/traffic.md is what the parser does: every field it lists as refused is
refused, with an error naming that field, when added to an otherwise good document."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshfed.pilot.config.store import parse_config_file

DOC = Path(__file__).parents[3] / "docs" / "traffic.md"
LISTS = {"match", "route", "subsets"}  # and a VirtualService's top-level http
ROOTS = ("VirtualService.", "DestinationRule.", "http.", "trafficPolicy.")


def refused_fields() -> list[tuple[str, str]]:
    """(kind, dotted path under spec) of every field the table says is refused."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Today's Istio API: VirtualService and DestinationRule", 1)[1]
    section = section.split("\n## ", 1)[0]
    out: list[tuple[str, str]] = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[1] != "refused":
            continue
        parent = ""
        for name in re.findall(r"`([^`]+)`", cells[0]):
            if name.startswith(ROOTS):
                parent, _, leaf = name.rpartition(".")
            else:
                leaf = name
            full = f"{parent}.{leaf}"
            kind = (
                "DestinationRule"
                if full.startswith(("DestinationRule", "trafficPolicy"))
                else ("VirtualService")
            )
            out.append((kind, full.split(".", 1)[1] if full.startswith(kind) else full))
    return out


VS = {
    "hosts": ["reviews"],
    "http": [
        {"match": [{"uri": {"prefix": "/"}}], "route": [{"destination": {"host": "reviews"}}]}
    ],
}
DR = {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}


def _place(spec: dict[str, Any], path: str) -> str:
    """Put a value at ``path`` in ``spec``; the field path an error about it carries."""
    node: Any = spec
    shown = "spec"
    parts = path.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in LISTS or (i == 0 and part == "http"):
            node = node.setdefault(part, [{}])[0]
            shown += f".{part}[0]"
        else:
            node = node.setdefault(part, {})
            shown += f".{part}"
    node[parts[-1]] = {"number": 80}
    return f"{shown}.{parts[-1]}"


def test_the_table_lists_refused_fields() -> None:
    assert len(refused_fields()) >= 40


@pytest.mark.parametrize(("kind", "path"), refused_fields())
def test_every_field_the_table_refuses_is_refused_by_name(
    tmp_path: Path, kind: str, path: str
) -> None:
    spec = yaml.safe_load(yaml.safe_dump(VS if kind == "VirtualService" else DR))
    field = _place(spec, path)
    doc = {
        "apiVersion": "networking.istio.io/v1",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "shop"},
        "spec": spec,
    }
    file = tmp_path / "doc.yaml"
    file.write_text(textwrap.dedent(yaml.safe_dump(doc)))
    objects, errors = parse_config_file(file)
    assert objects is None
    lines = [str(e) for e in errors]
    assert any(line.startswith(f"{file}: {kind} shop/x: {field}") for line in lines), lines
