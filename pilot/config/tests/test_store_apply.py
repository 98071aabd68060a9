"""Pilot's rule store applies files per object: one refused rule does not take the file's other
rules with it, and a rule that breaks keeps its last good version."""

from __future__ import annotations

from pathlib import Path

from meshfed.pilot.config.store import FileConfigStore

# Istio 0.2's samples/bookinfo/kube/route-rule-all-v1.yaml, plus one rule a typo breaks.
DEFAULTS = [
    (
        name,
        f"""apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {{name: {name}-default}}
spec:
  destination: {{name: {name}}}
  precedence: 1
  route:
  - labels: {{version: v1}}
""",
    )
    for name in ("productpage", "reviews", "ratings", "details")
]
REFUSED = """apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {name: reviews-test-v2}
spec:
  destination: {name: reviews}
  precedence: two
  route:
  - labels: {version: v2}
"""


def refs(store: FileConfigStore) -> list[str]:
    return [r.ref for r in store.snapshot.route_rules]


def test_one_refused_rule_keeps_the_four_default_routes(tmp_path: Path) -> None:
    path = tmp_path / "route-rule-all-v1.yaml"
    path.write_text("---\n".join([*(text for _, text in DEFAULTS), REFUSED]))
    store = FileConfigStore([tmp_path])
    store.load()
    assert sorted(refs(store)) == sorted(f"RouteRule default/{n}-default" for n, _ in DEFAULTS)
    assert [str(e) for e in store.errors] == [
        f"{path}: RouteRule default/reviews-test-v2: spec.precedence: "
        "expected an integer, got 'two'"
    ]


def test_a_rule_that_breaks_keeps_its_last_good_version(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("---\n".join(text for _, text in DEFAULTS))
    store = FileConfigStore([path])
    store.load()
    before = {r.ref: r for r in store.snapshot.route_rules}
    texts = [text for _, text in DEFAULTS]
    texts[1] = texts[1].replace("precedence: 1", "precedence: [1]")  # reviews-default breaks
    texts[0] = texts[0].replace("version: v1", "version: v2")  # productpage-default changes
    path.write_text("---\n".join(texts))
    store.load()
    after = {r.ref: r for r in store.snapshot.route_rules}
    assert after.keys() == before.keys()
    assert after["RouteRule default/reviews-default"] == before["RouteRule default/reviews-default"]
    assert dict(after["RouteRule default/productpage-default"].route[0].labels) == {"version": "v2"}
    assert len(store.errors) == 1 and "reviews-default: spec.precedence" in str(store.errors[0])
