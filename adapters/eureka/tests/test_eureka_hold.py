"""An empty full answer does not wipe a non-empty registry until the grace has passed."""

import time

from meshfed.adapters.contract import AdapterContext
from meshfed.adapters.eureka.client import Answer
from meshfed.adapters.eureka.reconcile import from_instances
from meshfed.adapters.eureka.registry import create
from meshfed.adapters.eureka.wire import Applications, Instance
from meshfed.registry import AggregateRegistry

SERVER = "http://127.0.0.1:1/eureka/"


def adapter(grace: str):
    member = AggregateRegistry().add_member("eu", "eureka")
    params = {"servers": [SERVER], "emptyRegistryGrace": grace}
    registry = create(AdapterContext(member, params))
    registry.local.apps = from_instances([Instance("i1", "A", ip_addr="127.0.0.9", status="UP")])
    return registry


def answer(*instances: Instance) -> Answer:
    return Answer(Applications(instances), SERVER, "full", 10, 0.001, 0.001)


def test_empty_answer_is_held_then_believed():
    registry = adapter("0.2s")
    assert registry._hold_empty(registry.local, {}, answer())
    assert "answered an empty registry" in registry._hold_reason
    assert registry.counters["empty_answers_held"] == 1
    time.sleep(0.25)
    assert not registry._hold_empty(registry.local, {}, answer())
    assert registry.local.empty_since is None


def test_non_empty_answer_ends_the_hold():
    registry = adapter("30s")
    assert registry._hold_empty(registry.local, {}, answer())
    apps = from_instances([Instance("i2", "A", ip_addr="127.0.0.8", status="UP")])
    assert not registry._hold_empty(registry.local, apps, answer())
    assert registry.local.empty_since is None


def test_nothing_to_protect_or_disabled():
    registry = adapter("30s")
    registry.local.apps = {}
    assert not registry._hold_empty(registry.local, {}, answer())
    disabled = adapter("0s")
    assert not disabled._hold_empty(disabled.local, {}, answer())
