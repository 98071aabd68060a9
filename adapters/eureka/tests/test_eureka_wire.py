"""Eureka's JSON and XML answers parse into the same canonical records, quirks included."""

from pathlib import Path

import pytest

from meshfed.adapters.eureka.wire import (
    DELETED,
    MODIFIED,
    OUT_OF_SERVICE,
    STARTING,
    UNKNOWN,
    UP,
    PortSpec,
    WireError,
    parse,
    parse_json,
    parse_xml,
)

DATA = Path(__file__).parent / "data"


def load(name: str) -> bytes:
    return (DATA / name).read_bytes()


def by_id(apps):
    return {i.instance_id: i for i in apps.instances}


def test_json_full_fetch_fields():
    apps = parse_json(load("full.json"))
    assert apps.apps_hashcode == "OUT_OF_SERVICE_1_UP_2_"
    assert apps.versions_delta == "1"
    instances = by_id(apps)
    assert sorted(instances) == ["orders-1", "orders-2", "payments-1"]
    one = instances["orders-1"]
    assert one.app == "ORDERS"
    assert one.ip_addr == "127.0.10.1"
    assert one.vip_address == "orders"
    assert one.status == UP
    assert one.overridden_status == UNKNOWN
    assert one.port == PortSpec(8080, True)
    assert one.secure_port == PortSpec(8443, False)
    assert dict(one.metadata) == {"zone": "zone-a", "region": "eu", "version": "v1"}
    two = instances["orders-2"]
    assert two.status == OUT_OF_SERVICE and two.overridden_status == OUT_OF_SERVICE
    assert two.data_center.name == "Amazon"
    assert two.data_center.class_name == "com.netflix.appinfo.AmazonInfo"
    assert two.data_center.get("availability-zone") == "us-east-1b"


def test_empty_map_class_marker_is_not_metadata():
    payments = by_id(parse_json(load("full.json")))["payments-1"]
    assert payments.metadata == ()
    assert payments.port == PortSpec(9000, False)
    assert payments.secure_port == PortSpec(9443, True)


def test_xml_and_json_give_equal_records():
    from_json = parse_json(load("full.json"))
    from_xml = parse_xml(load("full.xml"))
    assert from_xml == from_json
    # Lease timestamps differ between the two samples and must not matter.
    assert by_id(from_xml)["orders-1"] == by_id(from_json)["orders-1"]


def test_single_element_quirk_and_string_numbers():
    apps = parse_json(load("single.json"))
    assert len(apps.instances) == 1
    inst = apps.instances[0]
    # No instanceId (pre-1.2 servers): the host name is the id, as in InstanceInfo.getId().
    assert inst.instance_id == "127.0.10.9"
    assert inst.app == "INVENTORY"  # app names are upper case in Eureka
    assert inst.status == STARTING  # case-insensitive
    assert inst.port == PortSpec(7001, True)
    assert inst.secure_port == PortSpec(7002, False)
    assert inst.action_type == MODIFIED


def test_amazon_instance_id_is_the_id_when_instance_id_is_missing():
    body = b"""{"applications": {"application": {"name": "A", "instance": {
        "app": "A", "hostName": "ip-10-0-0-1", "ipAddr": "127.0.0.9", "status": "UP",
        "dataCenterInfo": {"name": "Amazon", "metadata": {"instance-id": "i-123"}}}}}}"""
    assert parse_json(body).instances[0].instance_id == "i-123"


def test_empty_registry_in_every_spelling():
    for body in (
        b'{"applications": {"versions__delta": "1", "apps__hashcode": "", "application": []}}',
        b'{"applications": {"versions__delta": "1", "apps__hashcode": ""}}',
        b'{"applications": {"application": {"name": "X"}}}',
        b"<applications><versions__delta>1</versions__delta>"
        b"<apps__hashcode></apps__hashcode></applications>",
    ):
        assert parse(body).instances == ()


def test_delta_action_types_and_single_instance_object():
    apps = parse_json(load("delta.json"))
    actions = {i.instance_id: i.action_type for i in apps.instances}
    assert actions == {"orders-2": MODIFIED, "orders-3": "ADDED", "payments-1": DELETED}


def test_action_type_takes_no_part_in_equality():
    full = by_id(parse_json(load("full.json")))["orders-1"]
    import attrs

    assert attrs.evolve(full, action_type=MODIFIED) == full


def test_unknown_status_is_unknown_like_java_toEnum():
    body = b"""{"applications": {"application": [{"name": "A", "instance": [
        {"instanceId": "a", "app": "A", "status": "SLEEPY", "overriddenStatus": null}]}]}}"""
    inst = parse_json(body).instances[0]
    assert inst.status == UNKNOWN and inst.overridden_status == UNKNOWN


def test_bare_port_number_is_enabled():
    body = b"""{"applications": {"application": [{"name": "A", "instance": [
        {"instanceId": "a", "app": "A", "status": "UP", "port": 8080}]}]}}"""
    assert parse_json(body).instances[0].port == PortSpec(8080, True)


def test_parse_picks_the_encoding():
    assert parse(load("full.xml"), "application/xml;charset=UTF-8") == parse(
        load("full.json"), "application/json"
    )
    assert parse(load("full.xml")) == parse(load("full.json"))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"{}",
        b'{"applications": []}',
        b'{"applications": {"application": [1]}}',
        b'{"applications": {"application": [{"name": "A", "instance": [{"status": "UP"}]}]}}',
        b'{"applications": {"application": [{"name": "A", "instance": '
        b'[{"instanceId": "a", "port": {"$": "eighty"}}]}]}}',
        b"<applications><application>",
        b"<instance/>",
        b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "y">]><applications/>',
    ],
)
def test_malformed_answers_raise_wire_error_only(body):
    with pytest.raises(WireError):
        parse(body)
