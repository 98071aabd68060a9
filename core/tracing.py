"""Tracing settings of the mesh config, and the OpenTelemetry pieces every traced part shares.

Why it exists: Pilot (which tells Envoy where to send spans and how many requests to trace)
and Mixer (which adds its own spans to those traces) read the same ``spec.tracing`` section,
and neither may import the other; so the settings, their parser and the SDK set-up live here,
below both. Nothing here knows a feature.

Promises:
- :func:`parse_tracing` reads ``spec.tracing`` through the field reader: errors name the
  file, the object and the field, and ``enabled`` without a ``collector`` is an error.
- :func:`tracer_provider` builds an SDK provider that exports over OTLP/gRPC from a worker
  thread (never from the event loop) and samples as Envoy does: a span with a remote parent
  follows the parent's sampled flag; a span without one is kept when one of its links points
  at a sampled span (a batch of work done for traced requests is as interesting as they are),
  else with ``sampling`` percent.
- :func:`extract` reads the trace context of a header or metadata mapping (keys in any case):
  W3C ``traceparent``/``tracestate`` (Envoy's OpenTelemetry tracer) or, when that is absent
  or malformed, Zipkin's B3, as multiple ``x-b3-*`` headers or the single ``b3`` header
  (Envoy's Zipkin tracer, and Istio 0.2's apps, which forward ``x-b3-*``); it returns the
  remote context, or None when there is none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import attrs

from meshfed.core import validators
from meshfed.core.resources import FieldReader

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import Sampler

TRACING_FIELDS = frozenset({"enabled", "collector", "sampling", "zipkin"})
W3C_HEADERS = ("traceparent", "tracestate")
B3_HEADERS = (
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
)
TRACE_HEADERS = W3C_HEADERS + B3_HEADERS
DEFAULT_SAMPLING = 1.0  # percent, as Istio's tracing.sampling
EXPORT_DELAY_MS = 500  # how long finished spans wait before a batch goes to the collector


@attrs.frozen(slots=True)
class TracingSettings:
    """``spec.tracing``: where spans go (an OTLP/gRPC collector) and how many requests."""

    enabled: bool = False
    collector: str = ""  # host:port of the OTLP/gRPC receiver
    sampling: float = DEFAULT_SAMPLING  # percent of requests traced when no caller decided
    # host:port of a Zipkin receiver (``POST /api/v2/spans``): when set, Envoy traces with its
    # Zipkin tracer and propagates B3 (``x-b3-*``), as Istio 0.2 did; Mixer's and the
    # client's spans still go to ``collector``
    zipkin: str = ""

    @property
    def collector_host_port(self) -> tuple[str, int]:
        return _split(self.collector)

    @property
    def zipkin_host_port(self) -> tuple[str, int]:
        return _split(self.zipkin)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


DISABLED = TracingSettings()


def parse_tracing(reader: FieldReader | None) -> TracingSettings:
    """``spec.tracing`` of a MeshConfig; problems go to ``reader.errors``."""
    if reader is None:
        return DISABLED
    reader.unknown_fields(set(TRACING_FIELDS))
    enabled = reader.bool("enabled", default=True)
    collector = reader.checked("collector", validators.host_port, required=enabled, default=None)
    sampling = reader.number("sampling", default=DEFAULT_SAMPLING, minimum=0.0, maximum=100.0)
    zipkin = reader.checked("zipkin", validators.host_port, required=False, default=None)
    address = "" if collector is None else _join(*collector)
    return TracingSettings(
        enabled=enabled and bool(address),
        collector=address,
        sampling=sampling,
        zipkin="" if zipkin is None else _join(*zipkin),
    )


def tracer_provider(settings: TracingSettings, service_name: str) -> TracerProvider:
    """An SDK provider exporting ``service_name``'s spans to ``settings.collector``."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased

    sampler = ParentBased(root=linked_or_ratio(settings.sampling / 100.0))
    provider = TracerProvider(
        sampler=sampler, resource=Resource.create({"service.name": service_name})
    )
    exporter = OTLPSpanExporter(endpoint=settings.collector, insecure=True)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=EXPORT_DELAY_MS))
    return provider


def linked_or_ratio(rate: float) -> Sampler:
    from opentelemetry.sdk.trace.sampling import Decision, SamplingResult, TraceIdRatioBased

    class LinkedOrRatio(TraceIdRatioBased):
        def should_sample(  # type: ignore[no-untyped-def]
            self, parent_context, trace_id, name, kind=None, attributes=None, links=None, *rest
        ) -> SamplingResult:
            if any(link.context.trace_flags.sampled for link in links or ()):
                return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
            return super().should_sample(
                parent_context, trace_id, name, kind, attributes, links, *rest
            )

        def get_description(self) -> str:
            return f"LinkedOrRatio{{{rate}}}"

    return LinkedOrRatio(rate)


def trace_headers(carrier: Mapping[str, object] | Iterable[tuple[str, object]]) -> dict[str, str]:
    """The trace headers (W3C and B3) of ``carrier`` (a mapping or gRPC metadata), keys
    lower-cased."""
    items = carrier.items() if isinstance(carrier, Mapping) else carrier
    out: dict[str, str] = {}
    for key, value in items:
        if isinstance(key, str) and isinstance(value, str) and key.lower() in TRACE_HEADERS:
            out[key.lower()] = value
    return out


def extract(carrier: Mapping[str, object] | Iterable[tuple[str, object]]) -> Context | None:
    """The remote span context ``carrier`` propagates (W3C first, then B3), or None (absent
    or malformed)."""
    from opentelemetry import trace
    from opentelemetry.propagators.b3 import B3MultiFormat
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    headers = trace_headers(carrier)
    if "traceparent" in headers:
        context = TraceContextTextMapPropagator().extract(headers)
        if trace.get_current_span(context).get_span_context().is_valid:
            return context
    if "b3" in headers or "x-b3-traceid" in headers:
        # B3MultiFormat reads the single ``b3`` header first, then the ``x-b3-*`` ones
        context = B3MultiFormat().extract(headers)
        if trace.get_current_span(context).get_span_context().is_valid:
            return context
    return None
