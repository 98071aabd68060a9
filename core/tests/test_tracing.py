"""The tracing settings parser, trace-context extraction and the sampler Mixer's spans use."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import Decision

from meshfed.core.resources import FieldReader
from meshfed.core.tracing import extract, parse_tracing, trace_headers, tracer_provider

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def read(data: dict) -> tuple[object, list[str]]:
    reader = FieldReader("mesh.yaml", "MeshConfig/mesh", data, "spec.tracing")
    settings = parse_tracing(reader)
    return settings, [f"{e.field}: {e.message}" for e in reader.errors]


def test_parse_names_the_bad_field() -> None:
    settings, errors = read({"collector": "127.0.0.1:4317", "sampling": 50})
    assert errors == []
    assert settings == parse_tracing(
        FieldReader("f", "o", {"enabled": True, "collector": "127.0.0.1:4317", "sampling": 50.0})
    )
    _, errors = read({"sampling": "lots"})
    assert any(e.startswith("spec.tracing.collector: is required") for e in errors)
    assert any(e.startswith("spec.tracing.sampling: expected a number 0..100") for e in errors)
    _, errors = read({"enabled": False})
    assert errors == []  # a switched-off section needs no collector
    settings, errors = read({"collector": "127.0.0.1:4317", "zipkin": "127.0.0.1:9411"})
    assert errors == [] and settings.zipkin == "127.0.0.1:9411"  # type: ignore[attr-defined]
    assert settings.zipkin_host_port == ("127.0.0.1", 9411)  # type: ignore[attr-defined]
    _, errors = read({"collector": "127.0.0.1:4317", "zipkin": "nowhere"})
    assert [e.split(":")[0] for e in errors] == ["spec.tracing.zipkin"], errors
    settings, _ = read({"collector": "[::1]:4317"})
    assert settings.collector == "[::1]:4317"  # type: ignore[attr-defined]
    assert settings.collector_host_port == ("::1", 4317)  # type: ignore[attr-defined]


def test_extract_reads_traceparent_in_any_case_and_ignores_garbage() -> None:
    context = extract([("TraceParent", f"00-{TRACE_ID}-{PARENT}-01"), ("x-other", "1")])
    assert context is not None
    span = trace.get_current_span(context).get_span_context()
    assert (f"{span.trace_id:032x}", f"{span.span_id:016x}", span.trace_flags.sampled) == (
        TRACE_ID,
        PARENT,
        True,
    )
    assert extract({}) is None
    assert extract({"traceparent": "00-zz-yy-01"}) is None
    assert extract({"traceparent": f"00-{'0' * 32}-{PARENT}-01"}) is None  # invalid all-zero id
    assert trace_headers({"traceparent": "a", "tracestate": "b", "X-B3-Sampled": "1", "n": 1}) == {
        "traceparent": "a",
        "tracestate": "b",
        "x-b3-sampled": "1",
    }


def context_of(carrier: dict) -> tuple[str, str, bool] | None:
    context = extract(carrier)
    if context is None:
        return None
    span = trace.get_current_span(context).get_span_context()
    return f"{span.trace_id:032x}", f"{span.span_id:016x}", span.trace_flags.sampled


def test_extract_reads_b3_multi_and_single_headers() -> None:
    multi = {"X-B3-TraceId": TRACE_ID, "X-B3-SpanId": PARENT, "X-B3-Sampled": "1"}
    assert context_of(multi) == (TRACE_ID, PARENT, True)
    assert context_of({**multi, "X-B3-Sampled": "0"}) == (TRACE_ID, PARENT, False)
    assert context_of({**multi, "X-B3-Sampled": None, "x-b3-flags": "1"}) == (
        TRACE_ID,
        PARENT,
        True,
    )  # debug
    short = {"x-b3-traceid": PARENT, "x-b3-spanid": PARENT, "x-b3-sampled": "1"}
    assert context_of(short) == ("0" * 16 + PARENT, PARENT, True)  # 64-bit ids, zero-padded
    assert context_of({"b3": f"{TRACE_ID}-{PARENT}-1"}) == (TRACE_ID, PARENT, True)
    assert context_of({"B3": f"{TRACE_ID}-{PARENT}-0-{'1' * 16}"}) == (TRACE_ID, PARENT, False)
    # W3C wins when both are there; a broken traceparent falls back to B3
    other = "a" * 32
    both = {"traceparent": f"00-{other}-{PARENT}-01", "b3": f"{TRACE_ID}-{PARENT}-1"}
    assert context_of(both) == (other, PARENT, True)
    assert context_of({**both, "traceparent": "garbage"}) == (TRACE_ID, PARENT, True)
    for bad in ({"b3": "garbage"}, {"x-b3-traceid": "zz", "x-b3-spanid": PARENT}, {"b3": "0"}):
        assert context_of(bad) is None, bad


def test_sampler_follows_the_caller_and_samples_roots_by_percent() -> None:
    from meshfed.core.tracing import TracingSettings

    never = tracer_provider(TracingSettings(enabled=True, collector="127.0.0.1:1", sampling=0), "t")
    sampler = never.sampler
    sampled = extract({"traceparent": f"00-{TRACE_ID}-{PARENT}-01"})
    unsampled = extract({"traceparent": f"00-{TRACE_ID}-{PARENT}-00"})
    trace_id = int(TRACE_ID, 16)
    assert sampler.should_sample(sampled, trace_id, "x").decision is Decision.RECORD_AND_SAMPLE
    assert sampler.should_sample(unsampled, trace_id, "x").decision is Decision.DROP
    assert sampler.should_sample(None, trace_id, "x").decision is Decision.DROP  # 0 %
    every = tracer_provider(
        TracingSettings(enabled=True, collector="127.0.0.1:1", sampling=100.0), "t"
    )
    always = every.sampler
    assert always.should_sample(None, trace_id, "x").decision is Decision.RECORD_AND_SAMPLE
    assert always.should_sample(unsampled, trace_id, "x").decision is Decision.DROP
    # a root span linked to a sampled span (a Report batch carrying a traced request) is kept
    # even at 0 %; linked only to unsampled ones, it is not
    from opentelemetry.trace import Link

    def link(context: object) -> Link:
        return Link(trace.get_current_span(context).get_span_context())  # type: ignore[arg-type]

    linked = sampler.should_sample(None, trace_id, "x", links=[link(unsampled), link(sampled)])
    assert linked.decision is Decision.RECORD_AND_SAMPLE
    alone = sampler.should_sample(None, trace_id, "x", links=[link(unsampled)])
    assert alone.decision is Decision.DROP
    never.shutdown()
    every.shutdown()


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["enabled", "collector", "sampling", "zipkin", "other"]),
        _values,
        max_size=4,
    )
)
def test_any_section_gives_settings_or_named_errors_never_an_exception(data: dict) -> None:
    reader = FieldReader("mesh.yaml", "MeshConfig/mesh", data, "spec.tracing")
    parsed = parse_tracing(reader)
    assert all(e.field.startswith("spec.tracing") for e in reader.errors)
    if not reader.errors and parsed.enabled:
        host, port = parsed.collector_host_port
        assert host and 1 <= port <= 65535
        assert 0.0 <= parsed.sampling <= 100.0


_header_values = st.one_of(
    st.text(max_size=80),
    st.from_regex(r"[0-9a-f]{1,40}(-[0-9a-f]{1,20}(-[01d])?(-[0-9a-f]{1,20})?)?", fullmatch=True),
    st.integers(),
    st.none(),
)


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "X-B3-Sampled"]
        ),
        _header_values,
        max_size=5,
    )
)
def test_hostile_trace_headers_give_a_context_or_none_never_an_exception(carrier: dict) -> None:
    context = extract(carrier)
    if context is not None:
        span = trace.get_current_span(context).get_span_context()
        assert span.is_valid and span.trace_id != 0 and span.span_id != 0
