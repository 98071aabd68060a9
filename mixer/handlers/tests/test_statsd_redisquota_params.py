"""Params and pure parts of the two network handlers (their traffic is proven in integration/)."""

import datetime as dt

import pytest

from meshfed.mixer.handlers import redisquota, statsd
from meshfed.mixer.handlers.quotas import Algorithm
from meshfed.mixer.handlers.tests.helpers import field_errors, parse_ok


def test_name_template_renders_dimensions():
    t = statsd.NameTemplate.parse("{{.service}}.{{ .code }}-x")
    assert t.render({"service": "reviews", "code": 200}) == "reviews.200-x"
    assert t.render({}) == ".-x"
    with pytest.raises(ValueError):
        statsd.NameTemplate.parse("{{.a | printf}}")


def test_statsd_params():
    p = parse_ok(
        statsd.KIND,
        {
            "address": "127.0.0.1:9125",
            "prefix": "istio.",
            "flushDuration": "1s",
            "flushBytes": 1400,
            "samplingRate": 0.25,
            "metrics": {"requestcount": {"type": "COUNTER"}},
        },
    )
    assert (p.host, p.port, p.flush_duration, p.flush_bytes) == (
        "127.0.0.1",
        9125,
        dt.timedelta(seconds=1),
        1400,
    )
    assert p.metrics["requestcount"].type is statsd.Type.COUNTER
    errors = field_errors(
        statsd.KIND,
        {
            "address": "nohost",
            "samplingRate": 2,
            "flushDuration": "fast",
            "metrics": {
                "a": {"type": "HISTOGRAM"},
                "b": {"type": "GAUGE", "nameTemplate": "{{ range }}"},
                "c": {},
            },
        },
    )
    assert set(errors) == {
        "address",
        "samplingRate",
        "flushDuration",
        "metrics.a.type",
        "metrics.b.nameTemplate",
        "metrics.c.type",
    }


def test_redisquota_params():
    p = parse_ok(
        redisquota.KIND,
        {
            "redisServerUrl": "localhost:6379",
            "connectionPoolSize": 20,
            "quotas": [
                {
                    "name": "q",
                    "maxAmount": 5,
                    "validDuration": "10s",
                    "bucketDuration": "1s",
                    "rateLimitAlgorithm": "ROLLING_WINDOW",
                }
            ],
        },
    )
    assert p.url == "redis://localhost:6379" and p.pool_size == 20
    assert p.quotas[0].algorithm is Algorithm.ROLLING_WINDOW
    assert parse_ok(redisquota.KIND, {"redisServerUrl": "redis://h:1/2"}).url == "redis://h:1/2"
    errors = field_errors(
        redisquota.KIND,
        {
            "redisServerUrl": "http://x",
            "connectionPoolSize": 0,
            "quotas": [
                {"name": "a", "maxAmount": 1},
                {
                    "name": "b",
                    "maxAmount": 1,
                    "validDuration": "1s",
                    "rateLimitAlgorithm": "ROLLING_WINDOW",
                },
                {
                    "name": "c",
                    "maxAmount": 1,
                    "validDuration": "1s",
                    "bucketDuration": "2s",
                    "rateLimitAlgorithm": "ROLLING_WINDOW",
                },
                {"name": "d", "maxAmount": 1, "validDuration": "1s", "rateLimitAlgorithm": "LEAKY"},
            ],
        },
    )
    assert set(errors) == {
        "redisServerUrl",
        "connectionPoolSize",
        "quotas[0].validDuration",
        "quotas[1].bucketDuration",
        "quotas[2].bucketDuration",
        "quotas[3].rateLimitAlgorithm",
    }
    assert "required" in errors["quotas[0].validDuration"]
    assert list(field_errors(redisquota.KIND, {})) == ["redisServerUrl"]
