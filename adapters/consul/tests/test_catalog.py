"""Catalog-wide mode: its parameters, and which services a change of the check list or the node
list touches."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshfed.adapters.consul.catalog import (
    changed_checks,
    changed_nodes,
    changed_summaries,
    check_states,
    dump_changes,
    node_indexes,
    service_summaries,
)
from meshfed.adapters.consul.client import bexpr_string
from meshfed.adapters.consul.params import ConsulParamsError, parse_params


def test_budget_parameters_defaults_and_errors():
    p = parse_params({})
    assert (p.max_watches, p.reconcile_s, p.fetch_rate) == (128, 60.0, 500.0)
    p = parse_params({"maxWatches": 0, "reconcile": "5m", "fetchRate": 50})
    assert (p.max_watches, p.reconcile_s, p.fetch_rate) == (0, 300.0, 50.0)
    with pytest.raises(ConsulParamsError) as raised:
        parse_params({"maxWatches": -1, "reconcile": "soon", "fetchRate": 0})
    fields = " ".join(raised.value.errors)
    assert "maxWatches" in fields and "reconcile" in fields and "fetchRate" in fields


def check(node, check_id, status="passing", sid="", service="", output="", modify=1):
    return {
        "Node": node,
        "CheckID": check_id,
        "Status": status,
        "ServiceID": sid,
        "ServiceName": service,
        "Output": output,
        "ModifyIndex": modify,
    }


def test_check_changes_name_services_and_nodes():
    base = [
        check("n1", "serfHealth"),
        check("n1", "c-web-1", sid="web-1", service="web"),
        check("n2", "c-api-1", sid="api-1", service="api"),
    ]
    old = check_states(base)
    # Output-only updates (a new ModifyIndex, same status) touch nothing the mesh uses.
    same = [dict(c, Output="fresh", ModifyIndex=9) for c in base]
    assert changed_checks(old, check_states(same)) == (set(), set())
    # A status flip, a new check, a removed node check.
    new = [
        check("n1", "c-web-1", status="critical", sid="web-1", service="web"),
        check("n2", "c-api-1", sid="api-1", service="api"),
        check("n3", "c-db-1", sid="db-1", service="db"),
    ]
    assert changed_checks(old, check_states(new)) == ({"web", "db"}, {"n1"})


def test_node_list_differences_name_written_and_gone_nodes():
    old = node_indexes(
        [
            {"Node": "n1", "ModifyIndex": 5, "Address": "127.0.0.1"},
            {"Node": "n2", "ModifyIndex": 7},
            {"Node": "n3", "ModifyIndex": 9},
        ]
    )
    assert old == {"n1": 5, "n2": 7, "n3": 9}
    assert changed_nodes(old, dict(old)) == ([], [])
    # n2 rewritten (address or meta), n4 created, n3 deregistered.
    new = node_indexes([{"Node": "n1", "ModifyIndex": 5}, {"Node": "n2", "ModifyIndex": 12}])
    new.update(node_indexes([{"Node": "n4", "ModifyIndex": 13, "CreateIndex": 13}]))
    assert changed_nodes(old, new) == (["n2", "n4"], ["n3"])
    assert node_indexes(None) == {}


@given(st.text(max_size=40))
def test_node_names_are_quoted_for_the_filter_or_refused(name):
    literal = bexpr_string(name)
    if literal is None:
        assert "`" in name and ('"' in name or "\\" in name)
    elif literal.startswith("`"):
        assert literal == f"`{name}`" and "`" not in name
    else:
        assert literal == f'"{name}"' and '"' not in name and "\\" not in name


def node(name, *services):
    return {
        "Node": name,
        "Services": [{"Service": s, "ID": i, "ModifyIndex": m} for s, i, m in services],
    }


def test_dump_names_services_with_newer_or_missing_instances():
    known = {
        "web": {("n1", "web-1"), ("n2", "web-2")},
        "api": {("n1", "api-1")},
        "db": {("n3", "db-1")},
        "idle": {("n3", "idle-1")},
    }
    applied = {"web": 10, "api": 10, "db": 10, "idle": 10}
    dump = [
        # web: a new instance on n1 (written at 12, after web was read at 10).
        node("n1", ("web", "web-1", 5), ("web", "web-3", 12), ("api", "api-1", 9)),
        node("n2", ("web", "web-2", 10)),
        # db-1 is gone; an instance the adapter filters out ("extra") is no change by itself.
        node("n3", ("db", "extra", 3), ("idle", "idle-1", 8), ("unwatched", "u", 99)),
    ]
    assert dump_changes(dump, applied, known) == {"web", "db"}
    assert dump_changes(dump, {**applied, "web": 12}, known) == {"db"}
    assert dump_changes([], applied, {}) == set()


def summary(name, count, nodes, tags=("protocol=http",), passing=0, critical=0, kind=""):
    return {
        "Kind": kind,
        "Name": name,
        "Datacenter": "dc1",
        "Tags": list(tags),
        "Nodes": list(nodes),
        "InstanceCount": count,
        "ChecksPassing": passing,
        "ChecksWarning": 0,
        "ChecksCritical": critical,
        "GatewayConfig": {},
    }


def test_summaries_name_services_whose_instances_were_added_removed_or_moved():
    old = service_summaries(
        [
            summary("web", 2, ["n1", "n2"]),
            summary("api", 1, ["n1"]),
            summary("db", 1, ["n3"], passing=1),
            summary("gone", 1, ["n4"]),
        ]
    )
    # The same services listed in another order, nodes and tags reordered: no change.
    same = service_summaries(
        [
            summary("gone", 1, ["n4"]),
            summary("db", 1, ["n3"], passing=1),
            summary("api", 1, ["n1"]),
            summary("web", 2, ["n2", "n1"]),
        ]
    )
    assert changed_summaries(old, same) == set()
    new = service_summaries(
        [
            summary("web", 3, ["n1", "n2"]),  # a third instance on a node that was there
            summary("api", 1, ["n5"]),  # moved to another node
            summary("db", 1, ["n3"], critical=1),  # its check turned critical
            summary("new", 1, ["n1"]),
        ]
    )
    assert changed_summaries(old, new) == {"web", "api", "db", "gone", "new"}
    assert service_summaries(None) == {}


def test_summaries_of_one_name_in_two_kinds_are_kept_apart():
    one = service_summaries([summary("web", 1, ["n1"]), summary("web", 1, ["n1"], kind="k")])
    two = service_summaries([summary("web", 2, ["n1"]), summary("web", 1, ["n1"], kind="k")])
    assert changed_summaries(one, two) == {"web"}


@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["Name", "InstanceCount", "Nodes", "Tags", "ChecksPassing", "Kind"]),
            st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.text())),
        ),
        max_size=5,
    )
)
def test_hostile_summaries_parse_or_raise_what_the_follower_catches(entries):
    try:
        parsed = service_summaries(entries)
    except (TypeError, ValueError):
        return
    assert changed_summaries(parsed, parsed) == set()
