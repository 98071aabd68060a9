"""The shipped Mixer CRDs are what the generator makes, and cover every kind Mixer parses."""

from __future__ import annotations

from pathlib import Path

import yaml

from meshfed.mixer.config import crds
from meshfed.mixer.config.kube import plural
from meshfed.mixer.templates import TEMPLATES

SHIPPED = Path(__file__).parents[2] / "chart" / "meshfed" / "crds" / "mixer.config.istio.io.yaml"


def test_shipped_file_is_current():
    assert SHIPPED.read_text() == crds.render(), "run python -m meshfed.mixer.config.crds"


def test_every_kind_has_a_crd_named_as_istio_did():
    names = {d["metadata"]["name"] for d in yaml.safe_load_all(SHIPPED.read_text())}
    for kind in ["rule", "attributemanifest", *TEMPLATES, *crds.HANDLER_KINDS]:
        assert f"{plural(kind)}.config.istio.io" in names
    assert {"listentries.config.istio.io", "prometheuses.config.istio.io"} <= names
