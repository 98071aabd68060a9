"""The telemetry service graph: edges counted from reported bags, bounded, never raising."""

from hypothesis import given
from hypothesis import strategies as st

from meshfed.dashboard.graph import MAX_NAME, ServiceGraph


def bag(src: str, dst: str, code: int = 200) -> dict:
    return {"source.service": src, "destination.service": dst, "response.code": code}


def test_requests_and_5xx_errors_per_edge() -> None:
    graph = ServiceGraph(clock=lambda: 42.0)
    for code in (200, 200, 503, 404):
        graph.observe(bag("a.default", "b.default", code))
    graph.observe(bag("b.default", "c.default"))
    doc = graph.describe()
    assert doc["nodes"] == ["a.default", "b.default", "c.default"]
    ab, bc = doc["edges"]
    assert (ab["source"], ab["destination"], ab["requests"], ab["errors"]) == (
        "a.default", "b.default", 4, 1,
    )  # fmt: skip
    assert ab["error_rate"] == 0.25 and ab["last_seen"] == 42.0
    assert (bc["requests"], bc["errors"], bc["error_rate"]) == (1, 0, 0.0)


def test_a_caller_without_a_service_is_its_workload_name_or_unknown() -> None:
    graph = ServiceGraph()
    graph.observe({"source.name": "vm-7", "destination.service": "b"})
    graph.observe({"destination.service": "b"})
    assert [(e["source"], e["destination"]) for e in graph.describe()["edges"]] == [
        ("unknown", "b"),
        ("vm-7", "b"),
    ]


def test_new_edges_beyond_the_bound_are_counted_not_kept() -> None:
    graph = ServiceGraph(max_edges=2)
    for i in range(5):
        graph.observe(bag(f"s{i}", "d"))
    graph.observe(bag("s0", "d"))  # a known edge still counts
    doc = graph.describe()
    assert len(doc["edges"]) == 2 and doc["dropped"] == 3
    assert doc["edges"][0]["requests"] == 2


values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.binary(),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(), st.text(), max_size=3),
)  # fmt: skip
keys = st.sampled_from(
    ["source.service", "destination.service", "source.name", "destination.name", "response.code"]
)


@given(st.lists(st.dictionaries(keys, values), max_size=30))
def test_hostile_bags_never_raise_and_names_stay_bounded(bags: list[dict]) -> None:
    graph = ServiceGraph(max_edges=10)
    for b in bags:
        graph.observe(b)
    doc = graph.describe()
    assert sum(e["requests"] for e in doc["edges"]) + doc["dropped"] == len(bags)
    for edge in doc["edges"]:
        assert 0 <= edge["errors"] <= edge["requests"]
        for name in (edge["source"], edge["destination"]):
            assert isinstance(name, str) and 0 < len(name) <= MAX_NAME
