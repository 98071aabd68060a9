"""Mixer's statsd handler against a real statsd daemon (Etsy's, from the npm registry).

What the daemon counted, read through its management interface, is the proof: names from
``prefix`` and ``nameTemplate``, counter sums (scaled back up by the daemon for a sampling
rate), gauges, timings in milliseconds, and that packets are batched up to ``flushBytes``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

import prometheus_client

from integration.peers.statsd import StatsdServer
from meshfed.core.resources import FieldReader
from meshfed.mixer.handlers import statsd
from meshfed.mixer.handlers.api import HandlerEnv
from meshfed.mixer.templates import Metric


def env() -> HandlerEnv:
    return HandlerEnv(
        "handler.statsd.istio-system",
        logging.getLogger("test.statsd"),
        prometheus_client.CollectorRegistry(),
    )


def params(kind: statsd.StatsdKind, spec: dict) -> statsd.StatsdParams:
    reader = FieldReader("handlers.yaml", "statsd istio-system/handler", spec)
    parsed = kind.parse_params(reader)
    assert parsed is not None and not reader.errors, [str(e) for e in reader.errors]
    return parsed


async def until(server: StatsdServer, read: str, key: str, value: object, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while True:
        table = await asyncio.to_thread(getattr(server, read))
        if table.get(key) == value:
            return table
        assert time.monotonic() < deadline, f"{read}[{key}] = {table.get(key)!r}, not {value!r}"
        await asyncio.sleep(0.1)


SPEC = {
    "prefix": "mesh.",
    "flushDuration": "100ms",
    "flushBytes": 512,
    "metrics": {
        "requestcount.metric.istio-system": {
            "type": "COUNTER",
            "nameTemplate": "{{.destination_service}}.{{ .response_code }}",
        },
        "requestduration.metric.istio-system": {"type": "DISTRIBUTION"},
        "inflight.metric.istio-system": {"type": "GAUGE", "nameTemplate": "inflight"},
    },
}


async def test_counters_gauges_timings_reach_a_real_statsd(statsd_server: StatsdServer):
    spec = {**SPEC, "address": statsd_server.address}
    h = await statsd.KIND.build(params(statsd.KIND, spec), env())
    try:
        ok = {"destination_service": "reviews", "response_code": 200}
        batch = [Metric("requestcount.metric.istio-system", 1, ok) for _ in range(300)]
        batch += [
            Metric("requestcount.metric.istio-system", 2, {**ok, "response_code": 503}),
            Metric("requestduration.metric.istio-system", dt.timedelta(milliseconds=12.5), ok),
            Metric("requestduration.metric.istio-system", dt.timedelta(seconds=1), ok),
            Metric("inflight.metric.istio-system", 7, {}),
            Metric("unconfigured.metric.istio-system", 1, {}),
        ]
        await h.report(batch)
        counters = await until(statsd_server, "counters", "mesh.reviews.200", 300.0)
        assert counters["mesh.reviews.503"] == 2.0
        assert not any(k.startswith("mesh.unconfigured") for k in counters)
        # 304 lines of ~20 bytes in packets of at most 512 bytes: batched, not one per line
        received = counters["statsd.packets_received"]
        assert 10 <= received <= 20, received
        assert h.sent_packets == received
        timers = await until(
            statsd_server, "timers", "mesh.requestduration.metric.istio-system", [12.5, 1000.0]
        )
        assert timers
        await until(statsd_server, "gauges", "mesh.inflight", 7.0)
    finally:
        await h.close()


async def test_sampling_rate_is_scaled_back_by_the_daemon(statsd_server: StatsdServer):
    # a deterministic "random" source: every second sample is kept
    draws = iter([0.1, 0.9] * 1000)
    kind = statsd.StatsdKind(sample=lambda: next(draws))
    spec = {**SPEC, "address": statsd_server.address, "samplingRate": 0.5, "flushBytes": 0}
    h = await kind.build(params(kind, spec), env())
    try:
        dims = {"destination_service": "ratings", "response_code": 200}
        await h.report([Metric("requestcount.metric.istio-system", 1, dims)] * 100)
        assert h.sent_packets == 50  # flushBytes 0: one packet per line
        # 50 lines marked |@0.5: the daemon counts each as 2
        await until(statsd_server, "counters", "mesh.ratings.200", 100.0)
    finally:
        await h.close()


async def test_no_server_loses_samples_without_failing(tmp_path):
    from integration.peers.ports import free_port

    spec = {**SPEC, "address": f"127.0.0.1:{free_port()}", "flushBytes": 0}
    h = await statsd.KIND.build(params(statsd.KIND, spec), env())
    try:
        dims = {"destination_service": "x", "response_code": 200}
        for _ in range(20):  # ICMP port unreachable comes back between sends: never raised
            await h.report([Metric("requestcount.metric.istio-system", 1, dims)])
            await asyncio.sleep(0.01)
    finally:
        await h.close()
