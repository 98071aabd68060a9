"""Deltas apply like Eureka's client applies them, and the hash code is Eureka's."""

from pathlib import Path

import attrs

from meshfed.adapters.eureka.reconcile import apply_delta, changed_apps, from_instances, hash_code
from meshfed.adapters.eureka.wire import (
    ADDED,
    DELETED,
    DOWN,
    MODIFIED,
    UP,
    Applications,
    Instance,
    parse_json,
)

DATA = Path(__file__).parent / "data"


def inst(iid: str, app: str = "A", status: str = UP, action: str = "") -> Instance:
    return Instance(
        instance_id=iid, app=app, ip_addr="127.0.0.9", status=status, action_type=action
    )


def test_hash_code_format_matches_eureka():
    apps = from_instances(
        [inst("a1"), inst("a2"), inst("b1", "B"), inst("b2", "B", DOWN), inst("c", "C")]
    )
    # TreeMap order of status names, "STATUS_count_" each (Applications.getReconcileHashCode).
    assert hash_code(apps) == "DOWN_1_UP_4_"
    assert hash_code({}) == ""


def test_hash_code_counts_the_served_status_not_the_override():
    oos = attrs.evolve(inst("a"), status="OUT_OF_SERVICE", overridden_status="OUT_OF_SERVICE")
    assert hash_code(from_instances([oos, inst("b")])) == "OUT_OF_SERVICE_1_UP_1_"


def test_full_fetch_then_documented_delta_reconciles():
    full = parse_json((DATA / "full.json").read_bytes())
    local = from_instances(full.instances)
    assert hash_code(local) == full.apps_hashcode
    delta = parse_json((DATA / "delta.json").read_bytes())
    outcome = apply_delta(local, delta)
    assert outcome.matches, (outcome.local_hash, outcome.remote_hash)
    assert sorted(outcome.apps) == ["ORDERS"]  # PAYMENTS lost its last instance
    assert sorted(outcome.apps["ORDERS"]) == ["orders-1", "orders-2", "orders-3"]
    assert outcome.apps["ORDERS"]["orders-2"].status == UP
    assert outcome.changed_apps == {"ORDERS", "PAYMENTS"}
    # The input is untouched: a rejected delta leaves the last good copy as it was.
    assert sorted(local) == ["ORDERS", "PAYMENTS"]
    assert local["ORDERS"]["orders-2"].status == "OUT_OF_SERVICE"


def test_replayed_delta_is_idempotent_and_reports_no_change():
    local = from_instances([inst("a1"), inst("a2")])
    delta = Applications((inst("a1", action=ADDED), inst("a2", action=MODIFIED)), "UP_2_")
    outcome = apply_delta(local, delta)
    assert outcome.matches
    assert outcome.changed_apps == frozenset()
    assert outcome.apps == local


def test_delete_of_unknown_instance_is_ignored():
    local = from_instances([inst("a1")])
    outcome = apply_delta(local, Applications((inst("zz", action=DELETED),), "UP_1_"))
    assert outcome.matches and outcome.changed_apps == frozenset()


def test_missed_change_is_a_mismatch():
    # The local copy missed a registration that left the server's delta window.
    local = from_instances([inst("a1")])
    delta = Applications((inst("a1", status=DOWN, action=MODIFIED),), "DOWN_1_UP_1_")
    outcome = apply_delta(local, delta)
    assert not outcome.matches
    assert outcome.local_hash == "DOWN_1_"


def test_unchanged_apps_are_shared_not_copied():
    local = from_instances([inst("a1"), inst("b1", "B")])
    outcome = apply_delta(local, Applications((inst("a2", action=ADDED),), "UP_3_"))
    assert outcome.apps["B"] is local["B"]
    assert changed_apps(local, outcome.apps) == {"A"}


def test_stored_instances_drop_the_action_type():
    outcome = apply_delta({}, Applications((inst("a1", action=ADDED),), "UP_1_"))
    assert outcome.apps["A"]["a1"].action_type == ""


def test_merge_regions_tags_each_instance_with_the_region_only_its_view_has():
    from meshfed.adapters.eureka.reconcile import merge_regions

    def inst(app, iid, ip):
        return Instance(iid, app, ip_addr=ip, status=UP)

    local = from_instances([inst("A", "a1", "127.0.0.1"), inst("S", "s-e", "127.0.0.2")])
    # regions=us-west answers the local instances plus us-west's.
    west = from_instances(
        [
            *(i for app in local.values() for i in app.values()),
            inst("S", "s-w", "127.0.0.3"),
            inst("W", "w1", "127.0.0.4"),
            inst("A", "a1", "127.0.0.99"),  # the same id as the local a1
        ]
    )
    eu = from_instances([inst("W", "w1", "127.0.0.5"), inst("E", "e1", "127.0.0.6")])
    merged = merge_regions(("us-east", local), [("us-west", west), ("eu", eu)])
    regions = {(app, iid): i.region for app, insts in merged.items() for iid, i in insts.items()}
    assert regions == {
        ("A", "a1"): "us-east",
        ("S", "s-e"): "us-east",
        ("S", "s-w"): "us-west",
        ("W", "w1"): "us-west",  # first listed remote region wins an id in several
        ("E", "e1"): "eu",
    }
    assert merged["A"]["a1"].ip_addr == "127.0.0.1"  # the local copy wins a shared id
    # Incremental: only the named applications are merged again.
    west2 = {k: v for k, v in west.items() if k != "W"}
    again = merge_regions(("us-east", local), [("us-west", west2), ("eu", eu)], merged, {"W"})
    assert again["W"]["w1"].region == "eu" and again["S"] is merged["S"]
    assert again == merge_regions(("us-east", local), [("us-west", west2), ("eu", eu)])
    # Without any region configuration the local copy is the answer, untouched.
    assert merge_regions(("", local), []) == local
