"""Merging, precedence, conflicts, events and synced state of the aggregate registry."""

import pytest

from meshfed.registry import (
    AggregateRegistry,
    Endpoint,
    Labels,
    Port,
    Protocol,
    Resolution,
    Service,
)

HOST = "reviews.default.svc.cluster.local"


def svc(**kw):
    kw.setdefault("ports", [Port(9080, "http", Protocol.HTTP)])
    return Service(HOST, **kw)


@pytest.fixture
def agg():
    return AggregateRegistry()


def test_one_service_spans_registries_with_union_of_endpoints(agg):
    k8s, static = agg.add_member("kubernetes"), agg.add_member("static")
    k8s.put_service(svc(address="10.0.0.1"), [Endpoint("10.1.0.1", labels={"version": "v1"})])
    static.put_service(svc(), [Endpoint("127.0.0.5", labels={"version": "vm"})])
    merged = agg.service(HOST)
    assert merged.registries == ("kubernetes", "static")
    assert merged.address == "10.0.0.1"
    by_registry = {e.address: e.registry for e in agg.endpoints(HOST)}
    assert by_registry == {"10.1.0.1": "kubernetes", "127.0.0.5": "static"}
    assert agg.conflicts() == ()


def test_vm_endpoints_join_a_service_defined_elsewhere(agg):
    k8s, vms = agg.add_member("kubernetes"), agg.add_member("vms")
    vms.set_endpoints(HOST, [Endpoint("127.0.0.7")])
    assert agg.service(HOST) is None  # endpoints alone do not make a service
    k8s.put_service(svc(), [Endpoint("10.1.0.1")])
    assert {e.address for e in agg.endpoints(HOST)} == {"10.1.0.1", "127.0.0.7"}
    assert agg.service(HOST).registries == ("kubernetes", "vms")


def test_port_conflict_decided_by_precedence_and_reported(agg, caplog):
    first, second = agg.add_member("consul"), agg.add_member("eureka")
    first.put_service(svc(ports=[Port(9080, "http", Protocol.HTTP)]))
    second.put_service(svc(ports=[Port(9081, "http", Protocol.TCP), Port(9443, "https")]))
    merged = agg.service(HOST)
    assert merged.port("http") == Port(9080, "http", Protocol.HTTP)
    assert merged.port("https") == Port(9443, "https")  # new name and number: added
    (conflict,) = agg.conflicts()
    assert (conflict.field, conflict.winner, conflict.loser) == ("port http", "consul", "eureka")
    assert conflict.winner_value == "9080/HTTP" and conflict.loser_value == "9081/TCP"
    assert "consul wins by precedence" in caplog.text


def test_precedence_is_member_order_not_report_order(agg):
    high, low = agg.add_member("high"), agg.add_member("low")
    low.put_service(svc(ports=[Port(80, "http", Protocol.TCP)], namespace="low"))
    high.put_service(svc(ports=[Port(80, "http", Protocol.HTTP)], namespace="high"))
    assert agg.service(HOST).namespace == "high"
    assert agg.service(HOST).port("http").protocol is Protocol.HTTP


def test_port_number_with_other_name_is_a_conflict(agg):
    a, b = agg.add_member("a"), agg.add_member("b")
    a.put_service(svc(ports=[Port(80, "http")]))
    b.put_service(svc(ports=[Port(80, "web")]))
    assert [p.name for p in agg.service(HOST).ports] == ["http"]
    assert agg.conflicts()[0].field == "port 80 name"


def test_address_and_resolution_conflicts(agg):
    a, b = agg.add_member("a"), agg.add_member("b")
    a.put_service(svc(address="10.0.0.1"))
    b.put_service(svc(address="10.0.0.2", resolution=Resolution.DNS))
    assert {c.field for c in agg.conflicts()} == {"address", "resolution"}
    b.delete_service(HOST)
    assert agg.conflicts() == ()


def test_labels_merge_with_primary_winning(agg):
    a, b = agg.add_member("a"), agg.add_member("b")
    a.put_service(svc(labels={"team": "a"}))
    b.put_service(svc(labels={"team": "b", "tier": "gold"}))
    assert agg.service(HOST).labels == Labels({"team": "a", "tier": "gold"})


def test_events_say_exactly_what_changed(agg):
    member = agg.add_member("static")
    events = []
    agg.subscribe(events.append)
    member.put_service(svc(), [Endpoint("127.0.0.2"), Endpoint("127.0.0.3")])
    assert events[-1].services_added == (HOST,)
    assert len(events[-1].endpoints[0].added) == 2

    member.set_endpoints(HOST, [Endpoint("127.0.0.2", healthy=False), Endpoint("127.0.0.4")])
    change = events[-1].endpoints[0]
    assert events[-1].services_added == events[-1].services_updated == ()
    assert [e.address for e in change.added] == ["127.0.0.4"]
    assert [e.address for e in change.removed] == ["127.0.0.3"]
    assert [(e.address, e.healthy) for e in change.updated] == [("127.0.0.2", False)]

    member.put_service(svc(labels={"x": "y"}))
    assert events[-1].services_updated == (HOST,)
    assert events[-1].endpoints == ()

    member.delete_service(HOST)
    assert events[-1].services_removed == (HOST,)
    assert len(events[-1].endpoints[0].removed) == 2
    assert agg.service(HOST) is None and agg.endpoints(HOST) == ()


def test_no_event_when_nothing_really_changed(agg):
    member = agg.add_member("static")
    events = []
    agg.subscribe(events.append)
    eps = [Endpoint("127.0.0.2", labels={"a": "1", "b": "2"}), Endpoint("127.0.0.3")]
    member.replace([svc()], {HOST: eps})
    assert len(events) == 1
    # Same content, different order and freshly built objects.
    member.replace(
        [svc()], {HOST: [Endpoint("127.0.0.3"), Endpoint("127.0.0.2", labels={"b": "2", "a": "1"})]}
    )
    member.put_service(svc())
    member.set_endpoints(HOST, list(reversed(eps)))
    assert len(events) == 1


def test_replace_removes_what_is_gone(agg):
    member = agg.add_member("static")
    other = Service("ratings.default.svc.cluster.local")
    member.replace([svc(), other])
    event = member.replace([other])
    assert event.services_removed == (HOST,)
    assert set(agg.services()) == {other.hostname}


def test_synced_only_when_every_member_synced(agg):
    a, b = agg.add_member("a"), agg.add_member("b")
    statuses = []
    agg.subscribe_status(lambda: statuses.append(agg.synced))
    assert not agg.synced
    a.mark_synced()
    assert not agg.synced
    b.mark_synced()
    assert agg.synced
    assert statuses == [False, True]


def test_degraded_keeps_state(agg):
    a = agg.add_member("consul")
    a.put_service(svc(), [Endpoint("127.0.0.2")])
    a.set_degraded("connection refused")
    assert a.degraded == "connection refused"
    assert len(agg.endpoints(HOST)) == 1
    a.set_degraded(None)
    assert a.degraded is None


def test_duplicate_member_name_rejected(agg):
    agg.add_member("a")
    with pytest.raises(ValueError, match="already a member"):
        agg.add_member("a")


def test_subscriber_sees_view_at_least_as_fresh_as_event(agg):
    member = agg.add_member("static")
    seen = []
    agg.subscribe(lambda ev: seen.append(len(agg.endpoints(HOST))))
    member.put_service(svc(), [Endpoint("127.0.0.2")])
    member.set_endpoints(HOST, [Endpoint("127.0.0.2"), Endpoint("127.0.0.3")])
    assert seen == [1, 2]


def test_a_member_no_longer_awaited_is_late_and_merged_when_it_syncs(agg):
    static, consul = agg.add_member("static"), agg.add_member("consul")
    static.mark_synced()
    statuses = []
    agg.subscribe_status(lambda: statuses.append(agg.synced))
    assert not agg.synced
    consul.stop_awaiting("initial sync not done after 30s")
    assert agg.synced and statuses == [True]
    assert consul.degraded == "initial sync not done after 30s" and not consul.synced
    # The adapter's own reasons come and go; until it syncs, it stays late.
    consul.set_degraded("connection refused")
    consul.set_degraded(None)
    assert consul.degraded == "initial sync not done after 30s"
    consul.put_service(svc(), [Endpoint("127.0.0.2")])
    consul.mark_synced()
    assert consul.degraded is None and consul.synced
    assert len(agg.endpoints(HOST)) == 1
    consul.stop_awaiting("too late")  # synced already: nothing to give up on
    assert consul.degraded is None


def test_stop_awaiting_keeps_the_adapters_own_reason(agg):
    consul = agg.add_member("consul")
    consul.set_degraded("connection refused")
    consul.stop_awaiting("initial sync not done after 30s")
    assert agg.synced and consul.degraded == "connection refused"
    consul.mark_synced()
    assert consul.degraded == "connection refused"  # the adapter's to clear
    assert consul.late_reason is None


def test_late_reason_is_kept_beside_the_adapters_reason(agg):
    consul = agg.add_member("consul")
    consul.set_degraded("connection refused")
    consul.stop_awaiting("late")
    assert consul.late_reason == "late"
