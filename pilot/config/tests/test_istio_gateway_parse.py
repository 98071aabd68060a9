"""Istio ``Gateway`` parsing: what is accepted, what is refused (naming file, object, field and
what was expected), and hostile documents never crashing the parser or translator."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshfed.core.resources import Document
from meshfed.pilot.config.istio_gateway import (
    ServerProtocol,
    TlsMode,
    host_matches,
    intersect,
    parse_istio_gateway,
)
from meshfed.pilot.config.store import ConfigSnapshot, parse_config_file
from meshfed.pilot.node import ProxyNode
from meshfed.pilot.translate import gateway
from meshfed.pilot.translate.traffic import TrafficIndex
from meshfed.registry.model import Port, Protocol, Service

HEAD = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: shop}\n"


def errors_of(tmp_path: Path, spec: str) -> list[str]:
    path = tmp_path / "gw.yaml"
    path.write_text(HEAD + textwrap.dedent(spec))
    objects, errors = parse_config_file(path)
    assert objects is None
    return [str(e) for e in errors]


REFUSED = {
    "istio mutual": (
        "tls: {mode: ISTIO_MUTUAL}",
        "spec.servers[0].tls.mode: not supported by meshfed",
    ),
    "auto passthrough": (
        "tls: {mode: AUTO_PASSTHROUGH}",
        "spec.servers[0].tls.mode: not supported by meshfed",
    ),
    "optional mutual": (
        "tls: {mode: OPTIONAL_MUTUAL}",
        "spec.servers[0].tls.mode: not supported by meshfed",
    ),
    "unknown mode": ("tls: {mode: simple}", "spec.servers[0].tls.mode: expected one of SIMPLE"),
    "no certificate": ("tls: {mode: SIMPLE}", "spec.servers[0].tls: expected credentialName"),
    "both": (
        "tls: {mode: SIMPLE, credentialName: c, serverCertificate: a, privateKey: b}",
        "spec.servers[0].tls.credentialName: expected credentialName or certificate files",
    ),
    "mutual without ca": (
        "tls: {mode: MUTUAL, serverCertificate: a, privateKey: b}",
        "spec.servers[0].tls.caCertificates: is required for MUTUAL",
    ),
    "subject alt names": (
        "tls: {mode: SIMPLE, credentialName: c, subjectAltNames: [x]}",
        "spec.servers[0].tls.subjectAltNames: not supported by meshfed",
    ),
    "cipher suites": (
        "tls: {mode: SIMPLE, credentialName: c, cipherSuites: [x]}",
        "spec.servers[0].tls.cipherSuites: not supported by meshfed",
    ),
    "tls version": (
        "tls: {mode: SIMPLE, credentialName: c, minProtocolVersion: TLS9}",
        "spec.servers[0].tls.minProtocolVersion: expected one of TLS_AUTO",
    ),
    "bind": (
        "tls: {mode: SIMPLE, credentialName: c}\n    bind: 127.0.0.1",
        "spec.servers[0].bind: not supported by meshfed",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_tls_settings_name_the_field(tmp_path: Path, case: str) -> None:
    tls, expected = REFUSED[case]
    spec = (
        "spec:\n  selector: {istio: ingressgateway}\n  servers:\n"
        "  - port: {number: 443, name: https, protocol: HTTPS}\n"
        f"    hosts: [a.example.com]\n    {tls}\n"
    )
    errors = errors_of(tmp_path, spec)
    prefix = f"{tmp_path / 'gw.yaml'}: Gateway shop/gw: "
    assert any(e.startswith(prefix + expected) for e in errors), errors
    assert len(errors) == 1, errors  # one mistake, one error


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ("port: {number: 80, protocol: HTTP}\n    hosts: []", "spec.servers[0].hosts: expected"),
        (
            "port: {number: 80, protocol: UDP}\n    hosts: [a]",
            "spec.servers[0].port.protocol: expected one of HTTP, HTTPS",
        ),
        ("port: {number: 0, protocol: HTTP}\n    hosts: [a]", "spec.servers[0].port.number"),
        (
            "port: {number: 80, protocol: HTTP}\n    hosts: [Bad_NS/a]",
            "spec.servers[0].hosts[0]: namespace part",
        ),
        (
            "port: {number: 80, protocol: HTTPS}\n    hosts: [a]",
            "spec.servers[0].tls: is required for a HTTPS server",
        ),
        (
            "port: {number: 80, protocol: HTTP}\n    hosts: [a]\n    tls: {mode: SIMPLE, "
            "credentialName: c}",
            "spec.servers[0].tls.mode: expected no TLS mode on a HTTP server",
        ),
        (
            "port: {number: 80, protocol: HTTP, targetPort: 8080}\n    hosts: [a]",
            "spec.servers[0].port.targetPort: not supported by meshfed",
        ),
    ],
)
def test_bad_servers_name_the_field(tmp_path: Path, server: str, expected: str) -> None:
    errors = errors_of(tmp_path, f"spec:\n  servers:\n  - {server}\n")
    assert any(f"Gateway shop/gw: {expected}" in e for e in errors), errors


def test_a_port_takes_one_kind_of_server(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        "spec:\n  servers:\n  - port: {number: 8443, protocol: HTTP}\n    hosts: [a]\n"
        "  - port: {number: 8443, protocol: TLS}\n    hosts: [b]\n    tls: {mode: PASSTHROUGH}\n",
    )
    assert any(
        "spec.servers[1].port.number: expected one kind of server per port" in e for e in errors
    )


def test_meshfed_gateway_kind_still_parses_as_before(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        "apiVersion: config.meshfed.io/v1alpha1\nkind: Gateway\nmetadata: {name: front}\n"
        "spec: {rules: [{host: a.example.com, http: {paths: [{path: /, backend: "
        "{serviceName: web, servicePort: 80}}]}}]}\n"
    )
    objects, errors = parse_config_file(path)
    assert errors == [] and objects is not None
    assert ConfigSnapshot.of(objects).gateways[0].ref == "Gateway default/front"


def test_accepted_gateway_fields(tmp_path: Path) -> None:
    doc = Document(
        str(tmp_path / "gw.yaml"),
        0,
        "networking.istio.io/v1alpha3",
        "Gateway",
        "gw",
        "shop",
        {},
        spec={
            "selector": {"app": "gw"},
            "servers": [
                {
                    "port": {"number": 443, "name": "https", "protocol": "https"},
                    "hosts": ["./a.example.com", "*/*.b.example.com", "*"],
                    "tls": {
                        "mode": "MUTUAL",
                        "credentialName": "c",
                        "maxProtocolVersion": "TLSV1_3",
                    },
                }
            ],
        },
    )
    gw, errors = parse_istio_gateway(doc)
    assert errors == [] and gw is not None
    (server,) = gw.servers
    assert server.protocol is ServerProtocol.HTTPS and server.tls.mode is TlsMode.MUTUAL
    assert [str(h) for h in server.hosts] == ["shop/a.example.com", "*/*.b.example.com", "*/*"]
    assert server.tls.max_version == "TLSv1_3"


def test_host_patterns() -> None:
    assert host_matches("*", "a.b") and host_matches("*.b.com", "a.b.com")
    assert not host_matches("*.b.com", "b.com") and not host_matches("a.com", "b.com")
    assert intersect("*.b.com", "x.b.com") == "x.b.com" == intersect("x.b.com", "*.b.com")
    assert intersect("a.com", "b.com") is None


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=12,
)
SERVER_KEYS = st.sampled_from(["port", "hosts", "tls", "name", "bind"])
TLS = st.fixed_dictionaries(
    {},
    optional={
        "mode": st.sampled_from(["SIMPLE", "MUTUAL", "PASSTHROUGH", "ISTIO_MUTUAL", "x"]) | JSON,
        "credentialName": st.text(max_size=10) | JSON,
        "serverCertificate": st.text(max_size=10) | JSON,
        "privateKey": st.text(max_size=10) | JSON,
        "caCertificates": st.text(max_size=10) | JSON,
        "httpsRedirect": JSON,
        "minProtocolVersion": st.sampled_from(["TLSV1_2", "TLS_AUTO", "v9"]) | JSON,
        "maxProtocolVersion": JSON,
        "subjectAltNames": JSON,
    },
)
SERVER = st.fixed_dictionaries(
    {},
    optional={
        "port": st.fixed_dictionaries(
            {},
            optional={
                "number": st.integers(-5, 70000) | JSON,
                "protocol": st.sampled_from(["HTTP", "HTTPS", "TLS", "TCP", "grpc", "x"]) | JSON,
                "name": JSON,
            },
        )
        | JSON,
        "hosts": st.lists(
            st.sampled_from(["*", "a.com", "*.a.com", "./b.com", "ns/c.com", "x/", "/", "..", ""])
            | JSON,
            max_size=4,
        )
        | JSON,
        "tls": TLS | JSON,
    },
)
SPEC = st.fixed_dictionaries(
    {},
    optional={
        "selector": st.dictionaries(st.text(max_size=8), JSON, max_size=2) | JSON,
        "servers": st.lists(SERVER, max_size=4) | JSON,
    },
)
SERVICES = [
    Service("web.shop.svc.cluster.local", ports=(Port(80, "http", Protocol.HTTP),)),
    Service("tls.shop.svc.cluster.local", ports=(Port(443, "tls", Protocol.TLS),)),
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=SPEC)
def test_hostile_gateways_give_errors_or_translatable_objects(spec: Any) -> None:
    doc = Document("gw.yaml", 0, "networking.istio.io/v1", "Gateway", "gw", "shop", {}, spec)
    gw, errors = parse_istio_gateway(doc)
    assert (gw is None) == bool(errors)
    for error in errors:
        assert str(error).startswith("gw.yaml: Gateway shop/gw: ")
    if gw is None:
        return
    vs = Document(
        "vs.yaml",
        0,
        "networking.istio.io/v1",
        "VirtualService",
        "vs",
        "shop",
        {},
        spec=yaml.safe_load(
            "{hosts: ['*'], gateways: [gw], http: [{route: [{destination: {host: web}}]}],"
            " tls: [{match: [{sniHosts: ['*']}],"
            " route: [{destination: {host: tls, port: {number: 443}}}]}]}"
        ),
    )
    from meshfed.pilot.config.istio import parse_virtual_service

    service, vs_errors = parse_virtual_service(vs)
    assert vs_errors == [] and service is not None
    snap = ConfigSnapshot.of([gw, service])
    node = ProxyNode(id="router~127.0.0.9~gw.shop~x", ip="127.0.0.9")
    listeners, _, _ = gateway.gateway_resources(node, TrafficIndex.build(snap, SERVICES))
    ports = [lst.address.socket_address.port_value for lst in listeners]
    assert len(ports) == len(set(ports))
    for listener in listeners:
        assert listener.filter_chains
        matches = [
            c.filter_chain_match.SerializeToString(deterministic=True)
            for c in listener.filter_chains
        ]
        assert len(matches) == len(set(matches)), listener


def test_port_names_are_unique_across_servers(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        "spec:\n  servers:\n  - port: {number: 80, name: web, protocol: HTTP}\n    hosts: [a]\n"
        "  - port: {number: 81, name: web, protocol: HTTP}\n    hosts: [b]\n",
    )
    assert any(
        "spec.servers[1].port.name: expected a name no other server uses (servers[0] has 'web')"
        in e
        for e in errors
    ), errors
