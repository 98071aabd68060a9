"""The import-linter contracts in pyproject.toml stay true to the tree they describe."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[2]


def _contracts() -> dict[str, dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {c["type"]: c for c in config["tool"]["importlinter"]["contracts"]}


def test_the_composition_root_contract_names_every_root_module() -> None:
    root_modules = {
        f"meshfed.{p.stem}" for p in (ROOT / "meshfed").glob("*.py") if p.stem != "__init__"
    }
    assert set(_contracts()["forbidden"]["forbidden_modules"]) == root_modules  # type: ignore[arg-type]


def test_the_layers_contract_covers_every_product_package() -> None:
    layers = _contracts()["layers"]["layers"]
    named = {m.strip() for layer in layers for m in str(layer).split("|")}  # type: ignore[union-attr]
    packages = {
        f"meshfed.{p.name}"
        for p in (ROOT / "meshfed").iterdir()
        if p.is_symlink() and (p / "__init__.py").exists()
    }
    assert named == packages
