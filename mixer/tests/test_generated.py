"""The committed generated code is what protoc makes of the committed protos."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshfed.mixer.api import generate


def test_generated_code_is_current(tmp_path):
    pytest.importorskip("grpc_tools")
    committed = Path(generate.__file__).parent / "v1"
    for path in generate.generate(tmp_path):
        assert (committed / path.name).read_text() == path.read_text(), (
            f"{path.name} is stale: run python -m meshfed.mixer.api.generate"
        )
