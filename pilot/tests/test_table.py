"""Shared tables: versions that depend only on content, a journal for derived tables."""

from __future__ import annotations

from google.protobuf import wrappers_pb2

from meshfed.pilot.resources import Resource, make_resource
from meshfed.pilot.table import JOURNAL, DerivedTable, Layered, SharedTable


def res(name: str, value: str) -> Resource:
    return make_resource(name, wrappers_pb2.StringValue(value=value))


def test_version_depends_only_on_content_not_on_the_order_of_changes() -> None:
    a, b = SharedTable(), SharedTable()
    a.replace_group("x", {"x1": res("x1", "1"), "x2": res("x2", "2")})
    a.replace_group("y", {"y1": res("y1", "1")})
    a.replace_group("x", {"x1": res("x1", "changed")})
    b.replace_group("y", {"y1": res("y1", "1")})
    b.replace_group("x", {"x1": res("x1", "changed")})
    assert a.version == b.version
    assert dict(a) == dict(b) and len(a) == 1 + 1
    before = a.version
    assert a.replace_group("y", {"y1": res("y1", "2")}) == {"y1"}
    assert a.version != before
    a.replace_group("y", {"y1": res("y1", "1")})
    assert a.version == before  # back to the same content, back to the same version


def test_replacing_a_group_reports_only_what_changed() -> None:
    t = SharedTable()
    assert t.replace_group("x", {"x1": res("x1", "1"), "x2": res("x2", "2")}) == {"x1", "x2"}
    serial = t.serial
    assert t.replace_group("x", {"x1": res("x1", "1"), "x2": res("x2", "2")}) == set()
    assert t.serial == serial  # nothing changed: no new serial, no journal entry
    assert t.replace_group("x", {"x1": res("x1", "1"), "x3": res("x3", "3")}) == {"x2", "x3"}
    assert t.replace_group("x", {}) == {"x1", "x3"}
    assert len(t) == 0 and t.groups() == []


def test_derived_table_rederives_only_changed_entries_and_rebuilds_when_far_behind() -> None:
    t = SharedTable()
    for i in range(5):
        t.replace_group(f"g{i}", {f"n{i}": res(f"n{i}", "a")})
    derived_names: list[str] = []

    def derive(r: Resource) -> Resource:
        derived_names.append(r.name)
        return res(r.name, "derived")

    d = DerivedTable(t, derive)
    assert sorted(d.refresh()) == [f"n{i}" for i in range(5)]
    derived_names.clear()
    t.replace_group("g1", {"n1": res("n1", "b")})
    t.replace_group("g2", {})
    d.refresh()
    assert derived_names == ["n1"] and "n2" not in d and len(d) == 4
    for k in range(JOURNAL + 1):
        t.replace_group("g3", {"n3": res("n3", str(k))})
    derived_names.clear()
    d.refresh()
    assert sorted(derived_names) == ["n0", "n1", "n3", "n4"]  # fell behind: rebuilt in full


def test_layered_prefers_the_top_table() -> None:
    base = {"a": res("a", "1"), "b": res("b", "1")}
    top = {"b": res("b", "2"), "c": res("c", "2")}
    view = Layered(top, base)
    assert view["b"] is top["b"] and view["a"] is base["a"]
    assert sorted(view) == ["a", "b", "c"] and len(view) == 3
    assert "c" in view and "d" not in view and view.get("d") is None


def test_a_name_two_groups_supply_goes_to_the_latest_and_survives_the_other_leaving() -> None:
    # The egress rules' group and a registry service may both name one cluster while a
    # service appears or goes; the table must hold exactly one and version it once.
    t, alone = SharedTable(), SharedTable()
    t.replace_group("svc", {"c": res("c", "service")})
    t.replace_group("egress", {"c": res("c", "egress")})
    assert t["c"].version == res("c", "egress").version and len(t) == 1
    assert t.replace_group("svc", {}) == {"c"}
    assert t["c"].version == res("c", "egress").version
    alone.replace_group("egress", {"c": res("c", "egress")})
    assert t.version == alone.version
