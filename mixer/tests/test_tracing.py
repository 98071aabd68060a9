"""Mixer's spans over gRPC: a Check joins the trace its metadata (or its request headers)
carries, an unsampled caller gives no span, and each traced request of a Report gets one."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshfed.mixer.api.service import MixerStub
from meshfed.mixer.api.v1 import check_pb2
from meshfed.mixer.attributes import codec
from meshfed.mixer.attributes.dictionary import GLOBAL_WORDS
from meshfed.mixer.component import Mixer
from meshfed.mixer.settings import MixerSettings

from .test_server import DENY
from .testkinds import kinds

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER = "a3ce929d0e0e47364bf92f3577b34da6"
PARENT = "00f067aa0ba902b7"


@pytest.fixture
async def traced(tmp_path: Path):
    (tmp_path / "mixer.yaml").write_text(DENY)
    mixer = Mixer(
        MixerSettings(enabled=True, listen="127.0.0.1:0", config_paths=(str(tmp_path),)),
        kinds=kinds(),
    )
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    await mixer.start()
    # the served MixerService holds the component's tracing: make it export in memory
    mixer.tracing.tracer = provider.get_tracer("test")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{mixer.port}")
    try:
        yield MixerStub(channel), exporter
    finally:
        await channel.close()
        await mixer.stop()


def check_request(headers: dict[str, str]) -> check_pb2.CheckRequest:
    bag = {"destination.service": "web.default.svc.cluster.local", "request.headers": headers}
    return check_pb2.CheckRequest(attributes=codec.encode(bag), global_word_count=len(GLOBAL_WORDS))


async def test_check_span_is_the_child_of_the_metadata_context(traced) -> None:
    stub, exporter = traced
    meta = (("traceparent", f"00-{TRACE}-{PARENT}-01"),)
    # the request's own headers name another trace: the call's metadata wins
    headers = {"clnt": "abc", "traceparent": f"00-{OTHER}-{PARENT}-01"}
    answer = await stub.Check(check_request(headers), metadata=meta)
    assert answer.precondition.status.code == 7
    (span,) = exporter.get_finished_spans()
    assert span.name == "Mixer.Check"
    assert f"{span.context.trace_id:032x}" == TRACE
    assert span.parent is not None and f"{span.parent.span_id:016x}" == PARENT
    assert span.attributes["mixer.destination.service"] == "web.default.svc.cluster.local"
    assert span.attributes["mixer.status.code"] == 7
    assert str(span.attributes["mixer.status.message"]).endswith("Not allowed")


async def test_check_falls_back_to_request_headers_and_follows_the_sampled_flag(traced) -> None:
    stub, exporter = traced
    await stub.Check(check_request({"traceparent": f"00-{OTHER}-{PARENT}-01"}))
    (span,) = exporter.get_finished_spans()
    assert f"{span.context.trace_id:032x}" == OTHER
    assert span.attributes["mixer.status.code"] == 0
    exporter.clear()
    await stub.Check(check_request({}), metadata=(("traceparent", f"00-{TRACE}-{PARENT}-00"),))
    assert exporter.get_finished_spans() == ()


async def test_each_traced_request_of_a_report_gets_a_span_in_its_trace(traced) -> None:
    stub, exporter = traced
    bags = [
        {"request.headers": {"traceparent": f"00-{TRACE}-{PARENT}-01"}, "response.code": 200},
        {"request.headers": {"x-request-id": "no trace here"}, "response.code": 200},
        {"request.headers": {"traceparent": f"00-{OTHER}-{PARENT}-01"}, "response.code": 503},
    ]
    for request in codec.encode_batches(bags):
        await stub.Report(request)
    spans = exporter.get_finished_spans()
    got = sorted(
        (f"{s.context.trace_id:032x}", s.attributes["http.response.status_code"]) for s in spans
    )
    assert got == sorted([(TRACE, 200), (OTHER, 503)])
    assert {s.name for s in spans} == {"Mixer.Report"}
