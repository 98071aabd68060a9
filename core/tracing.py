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
- :func:`extract` reads W3C ``traceparent``/``tracestate`` from a header or metadata mapping
  (keys in any case) and returns the remote context, or None when there is none.
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

TRACING_FIELDS = frozenset({"enabled", "collector", "sampling"})
TRACE_HEADERS = ("traceparent", "tracestate")
DEFAULT_SAMPLING = 1.0  # percent, as Istio's tracing.sampling
EXPORT_DELAY_MS = 500  # how long finished spans wait before a batch goes to the collector


@attrs.frozen(slots=True)
class TracingSettings:
    """``spec.tracing``: where spans go (an OTLP/gRPC collector) and how many requests."""

    enabled: bool = False
    collector: str = ""  # host:port of the OTLP/gRPC receiver
    sampling: float = DEFAULT_SAMPLING  # percent of requests traced when no caller decided

    @property
    def collector_host_port(self) -> tuple[str, int]:
        host, _, port = self.collector.rpartition(":")
        return host.strip("[]"), int(port)


DISABLED = TracingSettings()


def parse_tracing(reader: FieldReader | None) -> TracingSettings:
    """``spec.tracing`` of a MeshConfig; problems go to ``reader.errors``."""
    if reader is None:
        return DISABLED
    reader.unknown_fields(set(TRACING_FIELDS))
    enabled = reader.bool("enabled", default=True)
    collector = reader.checked("collector", validators.host_port, required=enabled, default=None)
    sampling = reader.number("sampling", default=DEFAULT_SAMPLING, minimum=0.0, maximum=100.0)
    address = ""
    if collector is not None:
        host, port = collector
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return TracingSettings(enabled=enabled and bool(address), collector=address, sampling=sampling)


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
    """The W3C trace headers of ``carrier`` (a mapping or gRPC metadata), keys lower-cased."""
    items = carrier.items() if isinstance(carrier, Mapping) else carrier
    out: dict[str, str] = {}
    for key, value in items:
        if isinstance(key, str) and isinstance(value, str) and key.lower() in TRACE_HEADERS:
            out[key.lower()] = value
    return out


def extract(carrier: Mapping[str, object] | Iterable[tuple[str, object]]) -> Context | None:
    """The remote span context ``carrier`` propagates, or None (absent or malformed)."""
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    headers = trace_headers(carrier)
    if "traceparent" not in headers:
        return None
    context = TraceContextTextMapPropagator().extract(headers)
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None
    return context
