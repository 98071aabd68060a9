"""The Consul -> model mapping: labels, protocol, locality, health, ports, canonical order."""

from __future__ import annotations

import random
from typing import Any

from meshfed.adapters.consul.mapping import (
    build_service,
    check_health,
    hostname_for,
    instance_labels,
    instance_protocol,
    instances_from_entries,
    node_locality,
    split_tag,
    tag_labels,
)
from meshfed.registry.model import Locality, Protocol


def entry(
    node: str = "n1",
    address: str = "127.0.0.10",
    port: int = 9000,
    tags: list[str] | None = None,
    meta: dict[str, str] | None = None,
    checks: list[dict[str, Any]] | None = None,
    service: str = "web",
    service_id: str | None = None,
    node_meta: dict[str, str] | None = None,
    service_address: str = "",
    kind: str = "",
    weights: dict[str, int] | None = None,
) -> dict[str, Any]:
    sid = service_id or f"{service}-{node}-{port}"
    return {
        "Node": {"Node": node, "Address": address, "Datacenter": "dc1", "Meta": node_meta or {}},
        "Service": {
            "ID": sid,
            "Service": service,
            "Tags": tags or [],
            "Meta": meta or {},
            "Port": port,
            "Address": service_address,
            "Kind": kind,
            "Weights": weights or {"Passing": 1, "Warning": 1},
        },
        "Checks": checks
        if checks is not None
        else [
            {"CheckID": "serfHealth", "ServiceID": "", "Status": "passing"},
            {"CheckID": f"service:{sid}", "ServiceID": sid, "Status": "passing"},
        ],
    }


def build(entries: list[dict[str, Any]], host: str = "web.service.consul"):
    return build_service(host, "default", instances_from_entries(entries, "dc1"), "consul")


def test_split_tag_both_conventions():
    assert split_tag("version=v1") == ("version", "v1")
    assert split_tag("version|v1") == ("version", "v1")
    assert split_tag("a=b|c") == ("a", "b|c")  # the first separator wins
    assert split_tag("a|b=c") == ("a", "b=c")
    assert split_tag("primary") is None
    assert split_tag("=v") is None  # no key
    assert split_tag("k=") == ("k", "")


def test_tag_labels_ignore_bare_tags_and_are_order_independent():
    tags = ["primary", "version|v2", "team=payments", "version=v1"]
    labels = tag_labels(tags)
    assert labels == {"team": "payments", "version": "v1"}  # "version=v1" sorts first
    for _ in range(10):
        random.shuffle(tags)
        assert tag_labels(tags) == labels


def test_service_meta_overrides_tags():
    labels = instance_labels(["version=v1", "zone|a"], {"version": "v2"})
    assert dict(labels) == {"version": "v2", "zone": "a"}


def test_protocol_from_meta_then_tag_default_none():
    assert instance_protocol(["protocol=http"], {}) is Protocol.HTTP
    assert instance_protocol(["protocol|grpc"], {}) is Protocol.GRPC
    assert instance_protocol(["protocol=http"], {"protocol": "http2"}) is Protocol.HTTP2
    assert instance_protocol(["protocol=MONGO"], None) is Protocol.MONGO
    assert instance_protocol(["protocol=redis"], None) is Protocol.REDIS
    assert instance_protocol([], {}) is None
    assert instance_protocol(["protocol=carrier-pigeon"], {}) is None


def test_protocol_from_node_meta_as_istio_0_2_read_it():
    # A node registered with meta protocol=http (Istio 0.2's Consul convention) gives an HTTP
    # service; a declaration on the service itself (meta, then tag) is more specific and wins.
    service, _ = build([entry(node_meta={"protocol": "http"})])
    assert [p.protocol for p in service.ports] == [Protocol.HTTP]
    assert instance_protocol([], {}, {"protocol": "grpc"}) is Protocol.GRPC
    assert instance_protocol(["protocol=tcp"], {}, {"protocol": "http"}) is Protocol.TCP
    assert instance_protocol([], {"protocol": "http2"}, {"protocol": "http"}) is Protocol.HTTP2
    assert instance_protocol([], None, None) is None


def test_locality_from_datacenter_and_node_meta():
    assert node_locality("dc1", {"zone": "a", "rack": "r7"}) == Locality("dc1", "a", "r7")
    assert node_locality("dc2", {"availability-zone": "b"}) == Locality("dc2", "b", "")
    assert node_locality("dc3", None) == Locality("dc3")


def test_health_only_passing_and_maintenance():
    ok = [{"CheckID": "serfHealth", "ServiceID": "", "Status": "passing"}]
    assert check_health(ok, "s1") == (True, False)
    assert check_health([], "s1") == (True, False)  # no checks: Consul treats it as passing
    warn = [*ok, {"CheckID": "c", "ServiceID": "s1", "Status": "warning"}]
    assert check_health(warn, "s1") == (False, False)
    crit_node = [{"CheckID": "serfHealth", "ServiceID": "", "Status": "critical"}]
    assert check_health(crit_node, "s1") == (False, False)
    other = [*ok, {"CheckID": "c", "ServiceID": "s2", "Status": "critical"}]
    assert check_health(other, "s1") == (True, False)  # another instance's check
    maint = [*ok, {"CheckID": "_service_maintenance:s1", "ServiceID": "s1", "Status": "critical"}]
    assert check_health(maint, "s1") == (False, True)
    node_maint = [*ok, {"CheckID": "_node_maintenance", "ServiceID": "", "Status": "critical"}]
    assert check_health(node_maint, "s1") == (False, True)


def test_hostname_template():
    assert hostname_for("{service}.service.consul", "Web", "dc1", "default") == (
        "web.service.consul"
    )
    assert hostname_for("{service}.{datacenter}.example.com", "api", "DC2", "ns") == (
        "api.dc2.example.com"
    )
    assert hostname_for("{service}.{namespace}.svc.cluster.local", "b", "dc1", "demo") == (
        "b.demo.svc.cluster.local"
    )


def test_build_service_and_endpoints():
    service, endpoints = build(
        [
            entry(
                "n1", "127.0.0.11", 9000, ["protocol=http", "version=v1"], node_meta={"zone": "a"}
            ),
            entry("n2", "127.0.0.12", 9000, ["protocol=http", "version|v2"], {"team": "x"}),
        ]
    )
    assert service.hostname == "web.service.consul"
    assert service.address is None
    assert [(p.number, p.name, p.protocol) for p in service.ports] == [
        (9000, "http", Protocol.HTTP)
    ]
    assert service.registries == ("consul",)
    assert [(e.address, dict(e.ports), dict(e.labels)) for e in endpoints] == [
        ("127.0.0.11", {"http": 9000}, {"protocol": "http", "version": "v1"}),
        ("127.0.0.12", {"http": 9000}, {"protocol": "http", "team": "x", "version": "v2"}),
    ]
    assert endpoints[0].locality == Locality("dc1", "a")
    assert [e.workload for e in endpoints] == ["n1", "n2"]  # the nodes
    assert endpoints[1].locality == Locality("dc1")
    assert all(e.healthy and e.registry == "consul" for e in endpoints)


def test_default_protocol_is_tcp_and_port_is_most_common():
    service, endpoints = build(
        [
            entry("n1", "127.0.0.11", port=7000),
            entry("n2", "127.0.0.12", port=7001),
            entry("n3", "127.0.0.13", port=7001),
        ]
    )
    assert [(p.number, p.name, p.protocol) for p in service.ports] == [(7001, "tcp", Protocol.TCP)]
    # Every endpoint keeps its own instance port.
    assert sorted(e.target_port(service.ports[0]) for e in endpoints) == [7000, 7001, 7001]


def test_service_address_wins_over_node_address_and_weights():
    _, endpoints = build([entry(service_address="127.0.0.99", weights={"Passing": 5})])
    assert endpoints[0].address == "127.0.0.99"
    assert endpoints[0].weight == 5


def test_unhealthy_and_maintenance_leave_rotation_but_stay_listed():
    failing = entry(
        "n2",
        "127.0.0.12",
        checks=[{"CheckID": "c", "ServiceID": "web-n2-9000", "Status": "critical"}],
    )
    maint = entry(
        "n3",
        "127.0.0.13",
        checks=[
            {"CheckID": "_node_maintenance", "ServiceID": "", "Status": "critical"},
        ],
    )
    _, endpoints = build([entry("n1", "127.0.0.11"), failing, maint])
    assert [(e.address, e.healthy) for e in endpoints] == [
        ("127.0.0.11", True),
        ("127.0.0.12", False),
        ("127.0.0.13", False),
    ]


def test_proxies_and_portless_instances_are_skipped():
    assert build([entry(kind="connect-proxy"), entry(port=0)]) is None


def test_duplicate_registrations_are_one_endpoint_healthy_wins():
    sick = entry(
        "n2",
        "127.0.0.11",
        checks=[{"CheckID": "c", "ServiceID": "web-n2-9000", "Status": "critical"}],
    )
    _, endpoints = build([sick, entry("n1", "127.0.0.11")])
    assert [(e.address, e.healthy) for e in endpoints] == [("127.0.0.11", True)]


def test_reordering_tags_instances_and_checks_gives_equal_objects():
    entries = [
        entry("n1", "127.0.0.11", tags=["b=2", "a=1", "protocol=http", "x|y"], meta={"m": "1"}),
        entry("n2", "127.0.0.12", tags=["protocol=http", "a=1"]),
        entry("n3", "127.0.0.13", tags=["a=1", "protocol=http"]),
    ]
    first = build(entries)
    for _ in range(20):
        shuffled = [dict(e, Service=dict(e["Service"])) for e in entries]
        for e in shuffled:
            tags = list(e["Service"]["Tags"])
            random.shuffle(tags)
            e["Service"]["Tags"] = tags
            e["Checks"] = list(reversed(e["Checks"]))
        random.shuffle(shuffled)
        assert build(shuffled) == first


def test_datacenters_merge_into_one_service_with_region_locality():
    dc1 = instances_from_entries([entry("n1", "127.0.0.11")], "dc1")
    dc2 = instances_from_entries([entry("n2", "127.0.0.21")], "dc2")
    _, endpoints = build_service("web.service.consul", "default", [*dc2, *dc1], "consul")
    assert [(e.address, e.locality.region) for e in endpoints] == [
        ("127.0.0.11", "dc1"),
        ("127.0.0.21", "dc2"),
    ]


def test_protocol_disagreement_is_decided_by_majority():
    service, _ = build(
        [
            entry("n1", tags=["protocol=http"]),
            entry("n2", tags=["protocol=grpc"]),
            entry("n3", tags=["protocol=grpc"]),
            entry("n4"),
        ]
    )
    assert service.ports[0].protocol is Protocol.GRPC
