"""Reading the ``consul`` registry entry of the mesh config."""

from __future__ import annotations

import pytest

from meshfed.adapters.consul.params import (
    ConsulParamsError,
    go_duration,
    parse_duration,
    parse_params,
)


def test_defaults():
    p = parse_params({})
    assert p.addresses == ("127.0.0.1:8500",)
    assert p.datacenters == ()
    assert p.consistency == "stale"
    assert p.hostname_template == "{service}.service.consul"
    assert p.mesh_namespace == "default"
    assert p.wait_s == 300.0


def test_full_entry():
    p = parse_params(
        {
            "address": "127.0.0.2:8500",
            "addresses": ["https://127.0.0.3:8501", "127.0.0.2:8500"],
            "datacenters": ["dc1", "dc2", "dc1"],
            "token": "secret",
            "tls": {"caFile": "/ca.pem", "certFile": "/c.pem", "keyFile": "/k.pem"},
            "tagFilter": ["mesh", "api", "mesh"],
            "namespace": "team-a",
            "hostnameTemplate": "{service}.{datacenter}.consul.example",
            "consistency": "default",
            "wait": "30s",
            "timeout": "250ms",
            "rateLimit": 5,
        }
    )
    assert p.addresses == ("127.0.0.2:8500", "https://127.0.0.3:8501")
    assert p.datacenters == ("dc1", "dc2")
    assert p.tls is not None and p.tls.key_file == "/k.pem"
    assert p.tag_filter == ("api", "mesh")
    assert p.mesh_namespace == "team-a"
    assert (p.wait_s, p.timeout_s, p.rate_limit) == (30.0, 0.25, 5.0)


def test_every_bad_field_is_named():
    with pytest.raises(ConsulParamsError) as info:
        parse_params(
            {
                "adress": "x",
                "addresses": ["nope"],
                "tls": {"certFile": "/c.pem"},
                "hostnameTemplate": "{svc}.consul",
                "consistency": "eventual",
                "wait": "forever",
                "rateLimit": 0,
            },
            "registries[consul]",
        )
    text = str(info.value)
    for field in (
        "registries[consul].adress: unknown key",
        "addresses",
        "tls",
        "hostnameTemplate",
        "consistency",
        "wait",
        "rateLimit",
    ):
        assert field in text, field
    assert len(info.value.errors) == 7


def test_durations():
    assert parse_duration("5m") == 300.0
    assert parse_duration("250ms") == 0.25
    assert parse_duration(3) == 3.0
    assert parse_duration("3 days") is None
    assert go_duration(300.0) == "300000ms"
