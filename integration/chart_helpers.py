"""The chart under test, rendered and installed with the real ``helm`` the suite provisions.

Every helper runs the real binary (``integration.peers.artifacts.helm_path()``) and returns or
raises what it said; nothing here interprets templates itself.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from integration.peers.artifacts import helm_path, require_binary
from meshfed.tools.render_manifests import helm_template

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "chart" / "meshfed"
MANIFESTS = ROOT / "manifests"


def helm() -> str:
    return str(require_binary(helm_path(), "helm", "go", "helm"))


def run_helm(*args: str, kubeconfig: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run helm; the result is returned, never raised."""
    argv = [helm(), *args]
    if kubeconfig is not None:
        argv += ["--kubeconfig", str(kubeconfig)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)


def render(namespace: str = "meshfed-system", values: Sequence[str] = ()) -> str:
    """``helm template`` of the chart (CRDs included) with ``--set`` ``values``."""
    return helm_template(helm(), CHART, namespace, values)


def documents(rendered: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(rendered) if d]


def of_kind(docs: Sequence[Mapping[str, Any]], kind: str) -> Iterator[Mapping[str, Any]]:
    return (d for d in docs if d["kind"] == kind)


def one(docs: Sequence[Mapping[str, Any]], kind: str, name: str) -> Mapping[str, Any]:
    (found,) = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    return found


def mesh_yaml(docs: Sequence[Mapping[str, Any]]) -> str:
    """The hub's mesh config, as the chart writes it into ConfigMap ``meshfed-mesh``."""
    return str(one(docs, "ConfigMap", "meshfed-mesh")["data"]["mesh.yaml"])


def container(docs: Sequence[Mapping[str, Any]], deployment: str) -> Mapping[str, Any]:
    spec = one(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    (found,) = spec["containers"]
    return found
