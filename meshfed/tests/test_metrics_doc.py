"""docs/metrics.md maps every metric the code defines to its Istio counterpart."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "core",
    "registry",
    "adapters",
    "pilot",
    "mixer",
    "security",
    "nodeagent",
    "injection",
    "meshfed",
)
DEFINED = re.compile(
    r"(?:Counter|Gauge|Histogram|Summary|MetricFamily|BareCounter)\(\s*\"((?:meshfed|pilot|istio)_[a-z_]+)\""
)


def defined_metrics() -> set[str]:
    names = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "tests" in path.parts:
                continue
            names.update(DEFINED.findall(path.read_text()))
    return names


def test_every_metric_is_in_the_mapping_table() -> None:
    doc = (ROOT / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"`((?:meshfed|pilot|istio)_[a-z_]+)(?:\{[^}]*\})?`", doc))
    wildcards = re.findall(r"`((?:meshfed|pilot)_[a-z_]+_)\*", doc)
    names = defined_metrics()
    assert len(names) > 60, names  # the scan found the definitions
    missing = sorted(
        n for n in names if n not in documented and not any(n.startswith(w) for w in wildcards)
    )
    assert missing == [], f"add these to docs/metrics.md: {missing}"
