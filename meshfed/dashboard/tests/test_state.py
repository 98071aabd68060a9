"""The dashboard document's own additions: last event per registry, rule hits, the cut-off."""

from prometheus_client import CollectorRegistry, Counter

from meshfed.dashboard.state import LastEvents, build_state, mixer_state, rule_hits
from meshfed.registry.aggregate import AggregateRegistry
from meshfed.registry.model import Endpoint, Port, Protocol, Service


def svc(host: str) -> Service:
    return Service(hostname=host, ports=(Port("http", 80, Protocol.HTTP),))


def test_last_event_names_the_registry_whose_change_it_was() -> None:
    agg = AggregateRegistry()
    a, b = agg.add_member("a", "static"), agg.add_member("b", "consul")
    events = LastEvents(clock=lambda: 7.0)
    agg.subscribe(lambda e: events.record(e, agg))
    a.put_service(svc("x.test"), [Endpoint(address="127.0.0.2", ports={"http": 80})])
    assert events.seen == {"a": {"at": 7.0, "hosts": ["x.test"], "count": 1}}
    b.set_endpoints("x.test", [Endpoint(address="127.0.0.3", ports={"http": 80})])
    assert events.seen["b"] == {"at": 7.0, "hosts": ["x.test"], "count": 1}
    doc = build_state(agg, last_events=events)
    assert [m["last_event"]["count"] for m in doc["members"]] == [1, 1]


def test_services_beyond_the_cut_are_counted() -> None:
    agg = AggregateRegistry()
    member = agg.add_member("a")
    for i in range(5):
        member.put_service(svc(f"s{i}.test"))
    doc = build_state(agg, max_services=3)
    assert [s["hostname"] for s in doc["services"]] == ["s0.test", "s1.test", "s2.test"]
    assert doc["services_left_out"] == 2 and doc["summary"]["services"] == 5


class DescribedMixer:
    """Only the shape of Mixer's describe(): the dashboard reads no other member here."""

    def describe(self) -> dict:
        return {
            "version": 3,
            "rules": [
                {"name": "deny.istio-system", "match": "true", "check": [{"handler": "d"}]},
                {"name": "stats.istio-system", "match": "true", "report": [{"handler": "p"}]},
            ],
            "handlers": {"d": {"kind": "denier"}},
            "problems": ["bad.yaml: rule x: ..."],
        }


def test_rule_hits_come_from_the_counter() -> None:
    counter = Counter("t_rule_matches", "test", ["rule"], registry=CollectorRegistry())
    counter.labels("stats.istio-system").inc(4)
    hits = rule_hits(counter)
    assert hits == {"stats.istio-system": 4.0}
    state = mixer_state(DescribedMixer(), hits, {})
    assert state is not None
    assert [(r["name"], r["hits"], r["actions"]) for r in state["rules"]] == [
        ("deny.istio-system", 0.0, ["check -> d"]),
        ("stats.istio-system", 4.0, ["report -> p"]),
    ]
    assert state["problems"] == ["bad.yaml: rule x: ..."]
    assert mixer_state(None, {}, {}) is None
