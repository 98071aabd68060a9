"""Mixer's own spans: each Check, and each reported request, joins the request's trace.

Why it exists: a trace that shows the caller's sidecar, the destination's sidecar and the
service but not the policy check in between hides where a slow or refused request spent its
time. Mixer therefore continues the trace the request carries:

- a **Check** span (``Mixer.Check``, kind SERVER) is the child of the trace context of the
  call's gRPC metadata (``traceparent``/``tracestate``, which the node-local client passes on
  from Envoy's ext_authz call), or else of the one in the checked request's
  ``request.headers``; it records the destination, the answer's code and the quotas asked for;
- a **Report** call carries many requests of many traces, so each reported request whose
  ``request.headers`` carry a trace context gets its own ``Mixer.Report`` span in that trace
  (at most :data:`MAX_REPORT_SPANS` per call), all spanning the one dispatch of the batch;
  when the call's metadata carries a trace context (the node-local client's
  ``MixerClient.Report`` span of the batch), each of those spans links to it, so a request's
  trace leads to the batch that carried its report and to the batch's other requests.

Sampling follows the request: a context whose sampled flag is off makes no span (the
provider's parent-based sampler), one without any context is sampled at the mesh config's
percentage. Spans are exported by the SDK's batch processor in its own thread; nothing here
blocks the event loop, and a tracing failure never fails a Check or Report.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from meshfed.core.tracing import TracingSettings, extract, tracer_provider

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger("meshfed.mixer.tracing")

SERVICE_NAME = "mixer"
MAX_REPORT_SPANS = 1000
HEADERS = "request.headers"


def bag_context_carrier(bag: Mapping[str, Any]) -> Mapping[str, Any]:
    headers = bag.get(HEADERS)
    return headers if isinstance(headers, Mapping) else {}


class MixerTracing:
    """Makes Mixer's spans with ``tracer``; a ``MixerTracing(None)`` makes none."""

    def __init__(self, tracer: Tracer | None, provider: TracerProvider | None = None) -> None:
        self.tracer = tracer
        self.provider = provider

    @classmethod
    def from_settings(cls, settings: TracingSettings | None) -> MixerTracing:
        if settings is None or not settings.enabled:
            return cls(None)
        provider = tracer_provider(settings, SERVICE_NAME)
        return cls(provider.get_tracer("meshfed.mixer"), provider)

    def shutdown(self) -> None:
        """Flush what is pending and stop the exporter (blocking: call it off the loop)."""
        if self.provider is not None:
            self.provider.shutdown()

    @contextlib.contextmanager
    def check(
        self, metadata: Iterable[tuple[str, Any]], bag: Mapping[str, Any]
    ) -> Iterator[Span | None]:
        """The span of one Check, open for the ``with`` block (None when not tracing)."""
        if self.tracer is None:
            yield None
            return
        from opentelemetry.trace import SpanKind

        try:
            parent = extract(list(metadata)) or extract(bag_context_carrier(bag))
            span = self.tracer.start_span("Mixer.Check", context=parent, kind=SpanKind.SERVER)
        except Exception:  # spans are a view of the work, never a reason to fail it
            log.exception("check span failed")
            yield None
            return
        try:
            destination = bag.get("destination.service")
            if isinstance(destination, str):
                span.set_attribute("mixer.destination.service", destination)
            yield span
        finally:
            span.end()

    def reported(
        self,
        bags: Sequence[Mapping[str, Any]],
        started_ns: int,
        metadata: Iterable[tuple[str, Any]] = (),
    ) -> None:
        """A span per traced request of one Report, from ``started_ns`` to now, each linked
        to the sender's span of the batch when ``metadata`` carries one."""
        if self.tracer is None:
            return
        from opentelemetry import trace
        from opentelemetry.trace import Link, SpanKind

        links: list[Link] = []
        batch = extract(list(metadata))
        if batch is not None:
            links.append(Link(trace.get_current_span(batch).get_span_context()))
        ended = time.time_ns()
        made = 0
        for bag in bags:
            parent = extract(bag_context_carrier(bag))
            if parent is None:
                continue
            span = self.tracer.start_span(
                "Mixer.Report",
                context=parent,
                kind=SpanKind.SERVER,
                start_time=started_ns,
                links=links,
            )
            span.set_attribute("mixer.report.batch", len(bags))
            destination = bag.get("destination.service")
            if isinstance(destination, str):
                span.set_attribute("mixer.destination.service", destination)
            code = bag.get("response.code")
            if isinstance(code, int):
                span.set_attribute("http.response.status_code", code)
            span.end(end_time=ended)
            made += 1
            if made >= MAX_REPORT_SPANS:
                break


NO_TRACING = MixerTracing(None)
