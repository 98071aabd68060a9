"""Eureka instances become services and endpoints by the rules in adapters/eureka/mapping.py."""

from pathlib import Path

import attrs
import pytest

from meshfed.adapters.eureka.mapping import (
    MappingSettings,
    build_model,
    dns_name,
    hostnames,
    locality,
)
from meshfed.adapters.eureka.reconcile import from_instances
from meshfed.adapters.eureka.wire import (
    DOWN,
    OUT_OF_SERVICE,
    STARTING,
    UNKNOWN,
    UP,
    DataCenter,
    Instance,
    PortSpec,
    parse_json,
)
from meshfed.registry.model import Locality, Port, Protocol

DATA = Path(__file__).parent / "data"
SETTINGS = MappingSettings(registry="eureka")


def inst(iid: str, ip: str, **kw) -> Instance:
    kw.setdefault("app", "ORDERS")
    kw.setdefault("vip_address", "orders")
    kw.setdefault("status", UP)
    kw.setdefault("port", PortSpec(8080, True))
    return Instance(instance_id=iid, ip_addr=ip, **kw)


def model_of(*instances: Instance, settings: MappingSettings = SETTINGS):
    return build_model(from_instances(instances), settings)


def test_documented_sample():
    model = model_of(*parse_json((DATA / "full.json").read_bytes()).instances)
    hosts = [s.hostname for s in model.services]
    assert hosts == ["orders", "payments"]
    orders, payments = model.services
    # Protocol vote: one instance says http2, one says nothing (HTTP): tie -> by name -> HTTP.
    assert orders.ports == (Port(80, "http", Protocol.HTTP),)
    assert orders.registries == ("eureka",)
    eps = {e.address: e for e in model.endpoints["orders"]}
    assert eps["127.0.10.1"].healthy and dict(eps["127.0.10.1"].ports) == {"http": 8080}
    assert not eps["127.0.10.2"].healthy  # OUT_OF_SERVICE
    assert eps["127.0.10.1"].workload == "orders-1"  # the instance id
    assert eps["127.0.10.1"].locality == Locality("eu", "zone-a")
    assert eps["127.0.10.2"].locality == Locality("us-east-1", "us-east-1b")
    assert dict(eps["127.0.10.1"].labels) == {"region": "eu", "version": "v1", "zone": "zone-a"}
    # Plain port disabled, secure port enabled: only https, TLS by default.
    assert payments.ports == (Port(443, "https", Protocol.TLS),)
    assert dict(model.endpoints["payments"][0].ports) == {"https": 9443}


@pytest.mark.parametrize(
    ("status", "override", "healthy"),
    [
        (UP, UNKNOWN, True),
        (UP, UP, True),
        (DOWN, UNKNOWN, False),
        (STARTING, UNKNOWN, False),
        (OUT_OF_SERVICE, UNKNOWN, False),
        (UNKNOWN, UNKNOWN, False),
        (OUT_OF_SERVICE, OUT_OF_SERVICE, False),
        # A server whose rules let a stale UP through: the override still wins.
        (UP, OUT_OF_SERVICE, False),
        # DownOrStartingRule: an override of UP never revives an instance that reports DOWN.
        (DOWN, UP, False),
    ],
)
def test_only_up_without_contrary_override_is_healthy(status, override, healthy):
    model = model_of(inst("a", "127.0.0.2", status=status, overridden_status=override))
    (endpoint,) = model.endpoints["orders"]
    assert endpoint.healthy is healthy


def test_hostname_from_vip_falls_back_to_secure_vip_then_app():
    assert hostnames(inst("a", "127.0.0.2", vip_address="Orders-VIP"), "{vip}") == ["orders-vip"]
    no_vip = inst("a", "127.0.0.2", vip_address="", secure_vip_address="sec")
    assert hostnames(no_vip, "{vip}") == ["sec"]
    no_vips = inst("a", "127.0.0.2", vip_address="", app="MY_APP")
    assert hostnames(no_vips, "{vip}") == ["my-app"]
    assert hostnames(no_vips, "{vip}.eureka") == ["my-app.eureka"]
    assert hostnames(no_vips, "{app}.svc.example.com") == ["my-app.svc.example.com"]


def test_comma_separated_vips_give_one_service_each():
    model = model_of(inst("a", "127.0.0.2", vip_address="orders, orders-v2"))
    assert [s.hostname for s in model.services] == ["orders", "orders-v2"]
    assert all(len(model.endpoints[h]) == 1 for h in ("orders", "orders-v2"))


def test_dns_name_sanitises():
    assert dns_name(" My_Service!.Eureka. ") == "my-service-.eureka"


def test_protocol_metadata_majority_and_bad_values():
    model = model_of(
        inst("a", "127.0.0.2", metadata={"protocol": "grpc"}),
        inst("b", "127.0.0.3", metadata={"protocol": "GRPC"}),
        inst("c", "127.0.0.4", metadata={"protocol": "carrier-pigeon"}),
    )
    assert model.services[0].ports == (Port(80, "http", Protocol.GRPC),)
    assert any("carrier-pigeon" in p for p in model.problems)


def test_istio_0_2_protocol_metadata_key():
    # Instances registered for Istio 0.2 carry istio.protocol; meshfed's own key wins over it.
    model = model_of(inst("a", "127.0.0.2", metadata={"istio.protocol": "grpc"}))
    assert model.services[0].ports == (Port(80, "http", Protocol.GRPC),)
    both = model_of(inst("a", "127.0.0.2", metadata={"istio.protocol": "grpc", "protocol": "tcp"}))
    assert both.services[0].ports == (Port(80, "http", Protocol.TCP),)
    bad = model_of(inst("a", "127.0.0.2", metadata={"istio.protocol": "carrier-pigeon"}))
    assert bad.services[0].ports == (Port(80, "http", Protocol.HTTP),)
    assert any("istio.protocol='carrier-pigeon'" in p for p in bad.problems)


def test_secure_protocol_metadata():
    secure = PortSpec(8443, True)
    model = model_of(inst("a", "127.0.0.2", secure_port=secure, metadata={"secureProtocol": "tcp"}))
    assert model.services[0].ports == (
        Port(80, "http", Protocol.HTTP),
        Port(443, "https", Protocol.TCP),
    )
    assert dict(model.endpoints["orders"][0].ports) == {"http": 8080, "https": 8443}


def test_port_declared_only_when_every_instance_enables_it():
    model = model_of(
        inst("a", "127.0.0.2", secure_port=PortSpec(8443, True)),
        inst("b", "127.0.0.3", secure_port=PortSpec(8443, False)),
    )
    assert [p.name for p in model.services[0].ports] == ["http"]
    assert all("https" not in e.ports for e in model.endpoints["orders"])
    assert any("port https is not declared" in p for p in model.problems)


def test_configured_service_ports_and_namespace():
    settings = MappingSettings(
        registry="eu", namespace="shop", service_port=8000, secure_service_port=8443
    )
    model = model_of(inst("a", "127.0.0.2", secure_port=PortSpec(9443, True)), settings=settings)
    service = model.services[0]
    assert service.namespace == "shop" and service.registries == ("eu",)
    assert [p.number for p in service.ports] == [8000, 8443]


def test_locality_sources():
    amazon = DataCenter(
        "Amazon", "com.netflix.appinfo.AmazonInfo", {"availability-zone": "eu-west-1c"}
    )
    assert locality(inst("a", "127.0.0.2", data_center=amazon)) == Locality(
        "eu-west-1", "eu-west-1c"
    )
    assert locality(
        inst("a", "127.0.0.2", metadata={"zone": "z1", "region": "r", "subzone": "s"})
    ) == (Locality("r", "z1", "s"))
    assert locality(inst("a", "127.0.0.2", metadata={"availability-zone": "z2"})) == Locality(
        "", "z2"
    )
    assert locality(inst("a", "127.0.0.2")) == Locality()
    # The region the adapter fetched an instance from beats what metadata or the zone claim.
    fetched = attrs.evolve(inst("a", "127.0.0.2", data_center=amazon), region="us-west")
    assert locality(fetched) == Locality("us-west", "eu-west-1c")
    claimed = attrs.evolve(inst("a", "127.0.0.2", metadata={"region": "r"}), region="us-east")
    assert locality(claimed).region == "us-east"


def test_duplicate_socket_is_one_endpoint_preferring_healthy():
    model = model_of(
        inst("old", "127.0.0.2", status=DOWN),
        inst("new", "127.0.0.2", status=UP),
    )
    (endpoint,) = model.endpoints["orders"]
    assert endpoint.healthy


def test_instances_without_a_valid_ip_are_reported_and_left_out():
    model = model_of(
        inst("a", ""),
        inst("b", "127.0.0.3"),
        inst("c", "10.1.400.1"),
        inst("d", "orders-1.example.com"),
        inst("e", "::1"),
    )
    assert [e.address for e in model.endpoints["orders"]] == ["127.0.0.3", "::1"]
    bad = [p for p in model.problems if "is not an IP address" in p]
    assert len(bad) == 3


def test_equal_inputs_give_equal_models_whatever_the_order():
    instances = [
        inst("a", "127.0.0.2", metadata={"x": "1", "a": "2"}),
        inst("b", "127.0.0.3", status=DOWN),
        inst("c", "127.0.0.4", app="OTHER", vip_address="other"),
    ]
    forward = model_of(*instances)
    backward = model_of(*reversed([attrs.evolve(i) for i in instances]))
    assert forward == backward
