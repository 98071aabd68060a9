"""Pilot's Istio-named metrics and debug views, from Pilot's own objects (no server)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from meshfed.pilot import istio_debug as D
from meshfed.pilot import metrics as M
from meshfed.registry import AggregateRegistry, Endpoint, Port, Protocol, Service

HOST = "api.default.svc.cluster.local"


def test_bare_counter_keeps_istio_name_without_total_suffix() -> None:
    counter = M.BareCounter("pilot_test_things", "things", ("type",))
    counter.inc(1, "cds")
    counter.inc(2, "cds")
    counter.inc(1, "eds")
    registry = CollectorRegistry(auto_describe=True)
    registry.register(counter)  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert 'pilot_test_things{type="cds"} 3.0' in text
    assert 'pilot_test_things{type="eds"} 1.0' in text
    assert "_total" not in text and counter.value("cds") == 3
    with pytest.raises(ValueError, match="only go up"):
        counter.inc(-1, "cds")
    with pytest.raises(ValueError, match="expected labels"):
        counter.inc(1)


def test_conflict_gauges_count_problems_by_kind() -> None:
    taken_tcp = "service x port 3306 has no local listener: port 3306 is taken by db.default"
    taken_self = (
        f"service y port 15001 has no local listener: port 15001 is taken by {M.SIDECAR_ITSELF}"
    )
    conns = {
        "a": SimpleNamespace(problems=[taken_tcp, taken_self, "something else"]),
        "b": SimpleNamespace(problems=[taken_tcp]),
    }
    collector = M.DiscoveryCollector()
    server = SimpleNamespace(connections=conns)
    collector.servers = [server]  # type: ignore[assignment]
    found = {m.name: m.samples[0].value for m in collector.collect()}
    assert found["pilot_xds"] == 2
    assert found["pilot_conflict_outbound_listener_tcp_over_current_tcp"] == 2
    assert found["pilot_conflict_outbound_listener_tcp_over_current_http"] == 1
    assert D._problem_kind(taken_self) == "pilot_conflict_outbound_listener_tcp_over_current_http"
    assert D._problem_kind(taken_tcp) == "pilot_conflict_outbound_listener_tcp_over_current_tcp"


def test_push_record_and_status() -> None:
    record = D.PushRecord()
    record.started(["registry", "registry", "config"])
    assert record.end == 0 and record.triggers == {"registry": 2, "config": 1}
    record.finished(7, False, True, ["b", "a"])
    status = D.push_status(None, record)
    assert status["Pushes"] == 1 and status["End"] >= status["Start"] > 0
    assert status["Responses"] == 7 and status["EndpointsChanged"] == ["a", "b"]
    assert status["ProxyStatus"] == {} and status["Types"] == ["cds", "eds", "lds", "rds"]
    record.started(["registry"])
    assert record.triggers == {"registry": 1} and record.count == 1


def test_endpointz_one_entry_per_port_and_endpoint_with_its_registry() -> None:
    aggregate = AggregateRegistry()
    ports = [Port(80, "http", Protocol.HTTP), Port(9090, "grpc", Protocol.GRPC)]
    aggregate.add_member("consul").put_service(
        Service(HOST, ports=ports), [Endpoint("127.0.0.5", labels={"version": "v1"})]
    )
    aggregate.add_member("vms").set_endpoints(HOST, [Endpoint("127.0.0.6")])
    found = D.endpointz(aggregate)
    assert len(found) == 4
    by = {(e["endpoint"]["address"], e["servicePort"]["port"]): e for e in found}
    assert by[("127.0.0.5", 80)]["endpoint"]["registry"] == "consul"
    assert by[("127.0.0.6", 9090)]["endpoint"]["registry"] == "vms"
    assert by[("127.0.0.5", 80)]["endpoint"]["labels"] == {"version": "v1"}
    assert D.endpointz(aggregate, "nope.default.svc.cluster.local") == []
    assert D.endpointz(None) == [] and D.adsz(None) == {"totalClients": 0, "clients": []}


def test_aggregate_names_the_member_while_subscribers_are_told() -> None:
    aggregate = AggregateRegistry()
    seen: list[str] = []
    aggregate.subscribe(lambda event: seen.append(aggregate.notifying))
    consul, vms = aggregate.add_member("consul"), aggregate.add_member("vms")
    consul.put_service(Service(HOST, ports=[Port(80, "http")]), [Endpoint("127.0.0.5")])
    vms.set_endpoints(HOST, [Endpoint("127.0.0.6")])
    consul.delete_service(HOST)
    assert seen == ["consul", "vms", "consul"] and aggregate.notifying == ""
