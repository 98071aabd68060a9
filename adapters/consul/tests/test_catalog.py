"""Catalog-wide mode: its parameters, and which services a change of the check list touches."""

from __future__ import annotations

import pytest

from meshfed.adapters.consul.catalog import changed_checks, check_states
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
