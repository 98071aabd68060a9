"""xDS version/nonce bookkeeping: ACK, NACK, stale nonces, partial and delta responses."""

from __future__ import annotations

from meshfed.pilot import xds_types as T
from meshfed.pilot.cache import ProxyView, make_resource
from meshfed.pilot.translate.protos import seconds
from meshfed.pilot.watch import RequestKind, Status, TypeWatch


def res(name: str, value: float):
    # Any message works as a payload; a Duration keeps the versions easy to vary.
    return make_resource(name, seconds(value))


def view(type_url: str, **values: float) -> ProxyView:
    return ProxyView({type_url: {n: res(n, v) for n, v in values.items()}})


def test_sotw_ack_then_no_resend_of_same_version() -> None:
    w = TypeWatch(T.CLUSTER)
    kind, names = w.on_request("", names=[])
    assert kind is RequestKind.INITIAL and "*" in names
    v = view(T.CLUSTER, a=1, b=2)
    plan = w.plan(v, "1", force=names)
    assert plan is not None and [r.name for r in plan.resources] == ["a", "b"]
    assert w.status is Status.STALE
    kind, names = w.on_request("1", version_info=plan.version)
    assert kind is RequestKind.ACK and not names
    assert w.status is Status.SYNCED and w.acked_version == plan.version
    assert w.plan(v, "2") is None


def test_nack_is_recorded_and_rejected_version_never_resent() -> None:
    w = TypeWatch(T.LISTENER)
    w.on_request("", names=[])
    good = w.plan(view(T.LISTENER, a=1), "1")
    w.on_request("1", version_info=good.version)
    bad_view = view(T.LISTENER, a=1, bad=9)
    bad = w.plan(bad_view, "2")
    kind, _ = w.on_request("2", version_info=good.version, error="cannot bind")
    assert kind is RequestKind.NACK
    assert w.status is Status.NACKED
    assert w.describe()["error"] == "cannot bind"
    assert w.acked_version == good.version  # the last ACKed config stays in force
    assert w.last_nack.version == bad.version
    assert w.plan(bad_view, "3") is None  # never re-sent
    newer = w.plan(view(T.LISTENER, a=1, fixed=3), "4")
    assert newer is not None
    w.on_request("4", version_info=newer.version)
    assert w.status is Status.SYNCED


def test_stale_nonce_is_ignored() -> None:
    w = TypeWatch(T.CLUSTER)
    w.on_request("", names=[])
    w.plan(view(T.CLUSTER, a=1), "1")
    w.plan(view(T.CLUSTER, a=2), "2")
    kind, names = w.on_request("1", version_info="x", error="old failure")
    assert kind is RequestKind.STALE and not names
    assert w.status is Status.STALE and w.last_nack is None


def test_sotw_endpoints_send_only_changed_and_new_subscriptions() -> None:
    w = TypeWatch(T.ENDPOINT)
    _, names = w.on_request("", names=["a", "b"])
    v1 = view(T.ENDPOINT, a=1, b=1, c=1)
    first = w.plan(v1, "1", force=names)
    assert sorted(r.name for r in first.resources) == ["a", "b"]  # c not subscribed
    w.on_request("1", version_info=first.version, names=["a", "b"])
    v2 = view(T.ENDPOINT, a=1, b=2, c=2)
    second = w.plan(v2, "2")
    assert [r.name for r in second.resources] == ["b"]
    kind, names = w.on_request("2", version_info=second.version, names=["a", "b", "c"])
    assert kind is RequestKind.ACK and names == {"c"}
    third = w.plan(v2, "3", force=names)
    assert [r.name for r in third.resources] == ["c"]


def test_reconnect_resends_everything() -> None:
    w = TypeWatch(T.CLUSTER)
    w.on_request("", names=[])
    v = view(T.CLUSTER, a=1)
    p = w.plan(v, "1")
    w.on_request("1", version_info=p.version)
    fresh = TypeWatch(T.CLUSTER)  # a new stream after Pilot restarted
    fresh.on_request("", version_info=p.version, names=[])
    again = fresh.plan(v, "1")
    assert again is not None and again.version == p.version  # content versions are stable


def test_delta_sends_changes_and_removals() -> None:
    w = TypeWatch(T.CLUSTER, delta=True)
    _kind, _names = w.on_request("", subscribe=[])
    assert w.wildcard
    p1 = w.plan(view(T.CLUSTER, a=1, b=1), "1")
    assert sorted(r.name for r in p1.resources) == ["a", "b"] and not p1.removed
    w.on_request("1")
    assert w.status is Status.SYNCED
    p2 = w.plan(view(T.CLUSTER, a=2), "2")
    assert [r.name for r in p2.resources] == ["a"] and p2.removed == ("b",)


def test_delta_initial_versions_skip_what_the_client_has() -> None:
    v = view(T.ENDPOINT, a=1, b=1)
    w = TypeWatch(T.ENDPOINT, delta=True)
    have = {"a": v.get(T.ENDPOINT)["a"].version, "b": "old"}
    w.on_request("", subscribe=["a", "b"], initial_versions=have)
    p = w.plan(v, "1")
    assert [r.name for r in p.resources] == ["b"]


def test_delta_nack_keeps_rejected_version_from_being_resent() -> None:
    w = TypeWatch(T.LISTENER, delta=True)
    w.on_request("", subscribe=[])
    v = view(T.LISTENER, bad=1)
    w.plan(v, "1")
    kind, _ = w.on_request("1", error="invalid")
    assert kind is RequestKind.NACK and w.status is Status.NACKED
    assert w.plan(v, "2") is None


def test_delta_reconnect_holding_everything_still_gets_an_answer_to_ack() -> None:
    v = view(T.CLUSTER, a=1)
    w = TypeWatch(T.CLUSTER, delta=True)
    kind, _ = w.on_request("", subscribe=[], initial_versions={"a": v.get(T.CLUSTER)["a"].version})
    assert kind is RequestKind.INITIAL
    assert w.plan(v, "1") is None  # nothing new for an ordinary push
    answer = w.plan(v, "1", respond=True)
    assert answer is not None and answer.resources == () and answer.removed == ()
    w.on_request("1")
    assert w.status is Status.SYNCED


def test_subscription_is_replaced_on_change_and_kept_when_an_ack_repeats_it() -> None:
    w = TypeWatch(T.ENDPOINT)
    w.on_request("", names=["a", "b"])
    plan = w.plan(view(T.ENDPOINT, a=1, b=2), "1")
    held = w.subscribed
    kind, names = w.on_request("1", version_info=plan.version, names=["b", "a"])
    assert kind is RequestKind.ACK and not names and w.subscribed is held
    kind, names = w.on_request("1", version_info=plan.version, names=["a", "b", "c"])
    assert names == {"c"} and w.subscribed == {"a", "b", "c"} and w.subscribed is not held
    assert held == {"a", "b"}  # the previous set was not changed in place


def test_delta_subscription_changes_replace_the_set() -> None:
    w = TypeWatch(T.ENDPOINT, delta=True)
    w.on_request("", subscribe=["a", "b"])
    held = w.subscribed
    w.on_request("", subscribe=["a"])
    assert w.subscribed is held  # nothing new
    w.on_request("", unsubscribe=["b"])
    assert w.subscribed == {"a"} and w.subscribed is not held and held == {"a", "b"}
