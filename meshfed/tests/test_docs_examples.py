"""Every complete YAML example in the README and docs/ passes ``meshfed validate``.

Documentation drifts when the parsers change; this keeps the examples a user copies honest.
A block counts as complete when it has both ``apiVersion:`` and ``kind:`` (fragments that show
one field are left alone).
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from meshfed.validate import validate_files

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^( *)```yaml\n(.*?)^\1```", re.S | re.M)


def examples() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for i, match in enumerate(BLOCK.finditer(doc.read_text())):
            body = textwrap.dedent(match.group(2))
            if re.search(r"^apiVersion:", body, re.M) and re.search(r"^kind:", body, re.M):
                out.append((f"{doc.relative_to(ROOT)}#{i}", body))
    return out


def test_the_docs_have_examples_to_check() -> None:
    assert len(examples()) >= 8  # README, traffic, eureka, pilot, ... (a broken regex finds none)


@pytest.mark.parametrize(("where", "body"), examples(), ids=[w for w, _ in examples()])
def test_example_validates(tmp_path: Path, where: str, body: str) -> None:
    path = tmp_path / "example.yaml"
    path.write_text(body)
    count, errors, _warnings = validate_files([path])
    assert count >= 1
    assert errors == [], f"{where}: " + "; ".join(str(e) for e in errors)
