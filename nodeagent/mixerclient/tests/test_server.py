"""The client's verdicts against a real Mixer (the hub's component, in process) and against
none at all: Mixer's codes become HTTP statuses, and the fail policy decides when it is away."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from pathlib import Path

from meshfed.mixer.component import Mixer
from meshfed.mixer.settings import MixerSettings
from meshfed.nodeagent.mixerclient.server import MixerClient

POLICY = """
apiVersion: config.istio.io/v1alpha2
kind: denier
metadata: {name: slow, namespace: istio-system}
spec:
  status: {code: 8, message: slow down}
---
apiVersion: config.istio.io/v1alpha2
kind: checknothing
metadata: {name: nothing, namespace: istio-system}
spec:
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: r, namespace: istio-system}
spec:
  match: request.path == "/limited"
  actions:
  - handler: slow.denier
    instances: [nothing.checknothing]
"""


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def bag(path: str) -> dict:
    return {
        "context.protocol": "http",
        "request.path": path,
        "source.ip": ipaddress.ip_address("127.0.0.1"),
    }


async def test_verdicts_from_a_real_mixer(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    mixer = Mixer(
        MixerSettings(
            enabled=True, listen="127.0.0.1:0", config_paths=(str(tmp_path),), kubernetes=False
        )
    )
    await mixer.start()
    client = MixerClient(tmp_path / "c" / "mixer.sock", f"127.0.0.1:{mixer.port}")
    await client.start()
    try:
        await mixer.reload()
        assert mixer.problems() == []
        assert (await client.check(bag("/"), fail_open=False)).ok
        # the rule looked at request.path only: another source is answered from the cache
        other = {**bag("/"), "source.ip": ipaddress.ip_address("127.0.0.9")}
        assert (await client.check(other, fail_open=False)).ok
        assert client.cache is not None and client.cache.stats.hits == 1
        limited = await client.check(bag("/limited"), fail_open=True)
        assert (limited.code, limited.http) == (8, 429)
        assert "slow down" in limited.message
        # a quota no rule limits is granted as asked
        assert (await client.check(bag("/"), fail_open=False, quotas=["requestcount"])).ok
        client.report([bag("/"), bag("/x")])
        assert await client.flush_reports()
        assert client.reports == 1 and client.last_error == ""
    finally:
        await client.stop()
        await mixer.stop()


async def test_reports_wait_for_a_restarted_mixer(tmp_path: Path) -> None:
    """Entries logged while Mixer is down are delivered once it is back (none lost)."""
    (tmp_path / "policy.yaml").write_text(POLICY)
    port = closed_port()
    settings = MixerSettings(
        enabled=True, listen=f"127.0.0.1:{port}", config_paths=(str(tmp_path),), kubernetes=False
    )
    client = MixerClient(tmp_path / "c" / "mixer.sock", f"127.0.0.1:{port}", report_delay=0.05)
    await client.start()
    mixer = Mixer(settings)
    try:
        client.report([bag("/a"), bag("/b"), bag("/c")])
        assert not await client.flush_reports()
        assert client.batcher.pending == 3 and client.reports == 0
        await mixer.start()
        await mixer.reload()
        for _ in range(100):  # the batcher's own retry loop delivers them (bounded wait)
            if client.batcher.pending == 0:
                break
            await asyncio.sleep(0.1)
        assert client.batcher.pending == 0, (client.batcher.stats, client._sender, mixer.port)
        assert client.batcher.stats.sent == 3 and client.batcher.stats.dropped == 0
    finally:
        await client.stop()
        await mixer.stop()


async def test_fail_policy_when_mixer_is_away(tmp_path: Path) -> None:
    client = MixerClient(tmp_path / "mixer.sock", f"127.0.0.1:{closed_port()}", check_timeout=0.5)
    await client.start()
    try:
        assert (await client.check(bag("/"), fail_open=True)).ok
        closed = await client.check(bag("/"), fail_open=False)
        assert (closed.code, closed.http) == (14, 503)
        assert closed.message.startswith("mixer unavailable: UNAVAILABLE")
        assert client.last_error.startswith("UNAVAILABLE")
        client.report([bag("/")])  # kept for a retry, not raised
        assert not await client.flush_reports()
        assert client.reports == 0 and client.batcher.pending == 1
        assert oct((tmp_path / "mixer.sock").stat().st_mode & 0o777) == "0o600"
    finally:
        await client.stop()


async def test_check_spans_of_the_client_and_mixer_form_one_chain(tmp_path: Path) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    (tmp_path / "policy.yaml").write_text(POLICY)
    mixer = Mixer(
        MixerSettings(
            enabled=True, listen="127.0.0.1:0", config_paths=(str(tmp_path),), kubernetes=False
        )
    )
    await mixer.start()
    mixer.tracing.tracer = provider.get_tracer("mixer")  # the served service's tracing
    client = MixerClient(
        tmp_path / "c" / "mixer.sock",
        f"127.0.0.1:{mixer.port}",
        tracer=provider.get_tracer("client"),
    )
    await client.start()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    envoy_span = "00f067aa0ba902b7"
    sampled = {"traceparent": f"00-{trace_id}-{envoy_span}-01"}
    try:
        await mixer.reload()
        assert (await client.check(bag("/"), fail_open=False, trace=sampled)).ok
        spans = {s.name: s for s in exporter.get_finished_spans()}
        local, remote = spans["MixerClient.Check"], spans["Mixer.Check"]
        assert f"{local.context.trace_id:032x}" == trace_id
        assert local.parent is not None and f"{local.parent.span_id:016x}" == envoy_span
        assert remote.parent is not None and remote.parent.span_id == local.context.span_id
        assert local.attributes["mixer.cache"] == "miss"
        exporter.clear()
        # a cache hit: the client's span only
        assert (await client.check(bag("/"), fail_open=False, trace=sampled)).ok
        (hit,) = exporter.get_finished_spans()
        assert (hit.name, hit.attributes["mixer.cache"]) == ("MixerClient.Check", "hit")
        exporter.clear()
        # Envoy did not sample the request: neither the client nor Mixer keeps a span
        unsampled = {"traceparent": f"00-{trace_id}-{envoy_span}-00"}
        assert (await client.check(bag("/x"), fail_open=False, trace=unsampled)).ok
        assert exporter.get_finished_spans() == ()
        denied = await client.check(bag("/limited"), fail_open=False, trace=sampled)
        assert denied.code == 8
        codes = {s.name: s.attributes["mixer.status.code"] for s in exporter.get_finished_spans()}
        assert codes == {"MixerClient.Check": 8, "Mixer.Check": 8}
    finally:
        await client.stop()
        await mixer.stop()


async def _until(probe, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if probe():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def test_health_probe_tells_reachability_without_traffic(tmp_path: Path) -> None:
    """No Check, no Report: the probe alone notices Mixer going away and coming back."""
    (tmp_path / "policy.yaml").write_text(POLICY)
    port = closed_port()
    settings = MixerSettings(
        enabled=True, listen=f"127.0.0.1:{port}", config_paths=(str(tmp_path),), kubernetes=False
    )
    client = MixerClient(tmp_path / "c" / "mixer.sock", f"127.0.0.1:{port}", probe_interval=0.1)
    await client.start()
    mixer = Mixer(settings)
    try:
        await _until(lambda: client.reachable is False)
        down = client.describe()
        assert down["mixerReachable"] is False and down["unreachableSeconds"] >= 0
        assert down["lastError"].startswith("UNAVAILABLE"), down
        await mixer.start()
        await mixer.reload()
        await _until(lambda: client.reachable is True)
        up = client.describe()
        assert up["unreachableSeconds"] is None and up["lastError"] == ""
        await mixer.stop()
        await _until(lambda: client.reachable is False)
        assert client.checks == 0 and client.reports == 0
    finally:
        await client.stop()
        await mixer.stop()


async def test_metrics_count_drops_pending_and_cache(tmp_path: Path) -> None:
    """The scrape shows what the client holds: bags dropped at the bound while Mixer is
    away, bags still pending, Check answers cached."""
    from prometheus_client import REGISTRY

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    dropped = sample("meshfed_mixerclient_report_dropped_total", reason="bound")
    pending = sample("meshfed_mixerclient_reports_pending")
    client = MixerClient(
        tmp_path / "c" / "mixer.sock",
        f"127.0.0.1:{closed_port()}",
        report_batch=2,
        report_pending=5,
        probe_interval=0,
    )
    await client.start()
    try:
        client.report([bag(f"/{i}") for i in range(8)])
        assert sample("meshfed_mixerclient_report_dropped_total", reason="bound") - dropped == 3
        assert sample("meshfed_mixerclient_reports_pending") - pending == 5
        assert client.describe()["reportStats"]["dropped"] == 3
    finally:
        await client.stop()


async def test_a_report_batch_is_one_client_span_linked_to_its_requests_traces(
    tmp_path: Path,
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind, StatusCode

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    (tmp_path / "policy.yaml").write_text(POLICY)
    port = closed_port()
    settings = MixerSettings(
        enabled=True, listen=f"127.0.0.1:{port}", config_paths=(str(tmp_path),), kubernetes=False
    )
    client = MixerClient(
        tmp_path / "c" / "mixer.sock",
        f"127.0.0.1:{port}",
        tracer=provider.get_tracer("client"),
        report_delay=60,  # sent by flush_reports() only
        probe_interval=0,
    )
    await client.start()
    mixer = Mixer(settings)
    a, b = "a" * 32, "b" * 32
    traced = [
        {**bag("/1"), "request.headers": {"traceparent": f"00-{a}-{'1' * 16}-01"}},
        {**bag("/2"), "request.headers": {"traceparent": f"00-{a}-{'1' * 16}-01"}},  # retried
        {**bag("/3"), "request.headers": {"traceparent": f"00-{b}-{'2' * 16}-01"}},
        {**bag("/4"), "request.headers": {"x-request-id": "no trace"}},
    ]
    try:
        client.report(traced)
        assert not await client.flush_reports()  # Mixer not there yet: an error span
        (failed,) = exporter.get_finished_spans()
        assert failed.name == "MixerClient.Report" and failed.kind is SpanKind.CLIENT
        assert failed.status.status_code is StatusCode.ERROR
        assert "kept to retry" in (failed.status.description or "")
        exporter.clear()

        await mixer.start()
        mixer.tracing.tracer = provider.get_tracer("mixer")
        await mixer.reload()
        await _until(lambda: client.batcher.pending == 4 and client.reachable is not True)
        for _ in range(50):
            if await client.flush_reports():
                break
            await asyncio.sleep(0.1)
        assert client.batcher.pending == 0
        spans = exporter.get_finished_spans()
        # retries while the channel reconnects are error spans; one span delivered the batch
        (batch,) = [
            s
            for s in spans
            if s.name == "MixerClient.Report" and s.status.status_code is not StatusCode.ERROR
        ]
        assert batch.parent is None  # its own trace: a batch belongs to no one request
        attributes = dict(batch.attributes or {})
        assert attributes["mixer.report.entries"] == 4
        assert attributes["mixer.report.traced"] == 3
        assert attributes["mixer.report.links"] == 2  # one per distinct span
        assert sorted(f"{link.context.trace_id:032x}" for link in batch.links) == [a, b]
        # Mixer's span in each request's trace links back to the batch
        mixer_spans = [s for s in spans if s.name == "Mixer.Report"]
        assert sorted(f"{s.context.trace_id:032x}" for s in mixer_spans) == [a, a, b]
        for span in mixer_spans:
            (link,) = span.links
            assert link.context.span_id == batch.context.span_id
            assert link.context.trace_id == batch.context.trace_id
    finally:
        await client.stop()
        await mixer.stop()
