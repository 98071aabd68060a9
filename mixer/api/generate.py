"""Regenerate the Python code of Mixer's protos (``python -m meshfed.mixer.api.generate``).

Only messages are generated (``*_pb2.py``, and mypy-protobuf's type stubs ``*_pb2.pyi``, which
let the type checker see the message classes protoc builds at import time): the service binding
is written by hand in :mod:`meshfed.mixer.api.service`, so no generated code pins a grpcio
version. The generated modules are committed, so installing meshfed needs no code generator; a
unit test regenerates them into a temporary folder and fails when the committed ones differ.
"""

from __future__ import annotations

import sys
import tempfile
from importlib import resources
from pathlib import Path

PROTOS = ("attributes.proto", "check.proto", "report.proto", "service.proto")
PACKAGE_PATH = "meshfed/mixer/api/v1"


def _api_dir() -> Path:
    return Path(str(resources.files("meshfed.mixer.api")))


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (grpcio-tools) on the protos, writing ``meshfed/mixer/api/v1/*_pb2.py[i]``
    under ``out_dir``; return the files written."""
    from grpc_tools import protoc  # a development tool, not needed at run time

    api = _api_dir()
    with tempfile.TemporaryDirectory() as root:
        # protoc names files by their path below an include root: lay the protos out under
        # meshfed/mixer/api/v1 so the generated imports are meshfed.mixer.api.v1.<name>_pb2.
        tree = Path(root) / PACKAGE_PATH
        tree.mkdir(parents=True)
        for name in PROTOS:
            (tree / name).write_text((api / "v1" / name).read_text())
        well_known = Path(str(resources.files("grpc_tools"))) / "_proto"
        args = [
            "protoc",
            f"-I{root}",
            f"-I{api / 'include'}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            # mypy-protobuf's stubs, not protoc's own --pyi_out: those annotate a field named
            # like a builtin (``bytes``) with the field itself, which no checker accepts.
            f"--plugin=protoc-gen-mypy={Path(sys.executable).parent / 'protoc-gen-mypy'}",
            f"--mypy_out={out_dir}",
            *(f"{PACKAGE_PATH}/{name}" for name in PROTOS),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
    out = Path(out_dir) / PACKAGE_PATH
    return sorted(p for p in out.iterdir() if p.name.endswith(("_pb2.py", "_pb2.pyi")))


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        target = _api_dir() / "v1"
        for path in generate(Path(tmp)):
            (target / path.name).write_text(path.read_text())
            print(f"wrote {target / path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
