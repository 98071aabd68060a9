"""The node-local Mixer client's gRPC server: Envoy on one side, the hub's Mixer on the other.

Promises:
- Serves ``envoy.service.auth.v3.Authorization`` (ext_authz, HTTP and network) and
  ``envoy.service.accesslog.v3.AccessLogService`` (``http_grpc`` / ``tcp_grpc`` loggers) with
  ``grpc.aio`` on ``unix:<path>``; the socket's folder is made 0700 and the socket 0600.
- A Check becomes a bag (:mod:`.attributes`) and a Mixer ``Check``. Mixer's verdict is
  Envoy's: OK passes; any other code denies, over HTTP with the status Istio's proxy used for
  it (PERMISSION_DENIED 403, RESOURCE_EXHAUSTED 429, ...) and Mixer's message as the body; a
  TCP connection is closed. A quota the Check asked for (gRPC metadata
  :data:`pilot.mixer_plugin.QUOTAS_HEADER`) that is not granted answers 429.
- Mixer unreachable (or slower than ``check_timeout``): the request passes when the fail
  policy is open (metadata :data:`~pilot.mixer_plugin.FAIL_OPEN_HEADER`, from the mesh
  config's ``dataPath.failOpen``; open when absent, as Istio's ``network_fail_policy``), else
  it gets 503. Each outcome is counted (``meshfed_mixerclient_checks_total{result}``).
- Mixer's precondition answers are cached (:class:`.check_cache.CheckCache`, keyed by the
  attributes each answer referenced, within its ``valid_duration`` / ``valid_use_count``); a
  Check asking for quota always goes to Mixer, since quota is allocated per call. Hits and
  misses are counted (``meshfed_mixerclient_check_cache_total{result}``).
- The trace context of Envoy's ext_authz call (``traceparent``/``tracestate`` metadata) is
  passed on to Mixer's Check as metadata, so Mixer's span joins the request's trace; with a
  ``tracer`` the client's own ``MixerClient.Check`` span (cache hit or miss) sits between.
- Access-log entries become Report bags, queued in a :class:`.report_batcher.ReportBatcher`
  (sent when ``report_batch`` are pending or the oldest has waited ``report_delay``; retried
  while Mixer is away; at most ``report_pending`` held, the oldest dropped beyond that). A bad
  entry or a failed Report never ends Envoy's stream. With a ``tracer``, each Report call is
  a ``MixerClient.Report`` span (kind CLIENT) at the root of its own trace, since a batch
  belongs to no single request: it counts its entries, links to the traces of the first
  :data:`MAX_REPORT_LINKS` traced ones, is marked an error when Mixer did not take it (the
  retry is another span), and its context goes to Mixer, whose per-request ``Mixer.Report``
  spans link back to it.
- Whether Mixer can be reached is known even while every Check is a cache hit: the client
  asks Mixer's gRPC health every ``probe_interval`` seconds, and every Check and Report
  counts too. :meth:`MixerClient.describe` (served by ``meshfed proxy`` on its status port,
  read by ``meshfed proxy-status``) and ``meshfed_mixerclient_mixer_reachable`` say so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from envoy.service.auth.v3 import external_auth_pb2 as authz
from envoy.service.auth.v3 import external_auth_pb2_grpc as authz_grpc
from envoy.type.v3 import http_status_pb2
from google.rpc import code_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from meshfed.core.tracing import extract, trace_headers
from meshfed.mixer.api.service import SERVICE, MixerStub
from meshfed.mixer.api.v1 import check_pb2, report_pb2
from meshfed.mixer.attributes import codec
from meshfed.mixer.attributes.dictionary import GLOBAL_WORDS
from meshfed.nodeagent.mixerclient.attributes import (
    Bag,
    check_bag,
    http_report_bag,
    http_status_for,
    tcp_report_bag,
)
from meshfed.nodeagent.mixerclient.check_cache import CheckCache, referenced_from_proto
from meshfed.nodeagent.mixerclient.report_batcher import ReportBatcher
from meshfed.pilot.mixer_plugin import DESTINATION_SERVICE, FAIL_OPEN_HEADER, QUOTAS_HEADER

log = logging.getLogger("meshfed.nodeagent.mixerclient")

# OpenTelemetry's default bound on a span's links: a batch of 1,000 entries links to the
# first 128 distinct requests it carries (``mixer.report.traced`` counts them all)
MAX_REPORT_LINKS = 128

CHECKS = Counter(
    "meshfed_mixerclient_checks_total",
    "ext_authz checks answered, by result (allowed, denied, failed_open, failed_closed)",
    ["result"],
)
REPORTS = Counter(
    "meshfed_mixerclient_reports_total", "Report calls to Mixer, by result", ["result"]
)
REPORT_BAGS = Counter(
    "meshfed_mixerclient_report_bags_total", "Access-log entries turned into Report bags"
)
REACHABLE = Gauge(
    "meshfed_mixerclient_mixer_reachable",
    "1 while the hub's Mixer answers the client (Check, Report or gRPC health), else 0",
)
CACHE = Counter(
    "meshfed_mixerclient_check_cache_total",
    "Check answers looked up in the client's cache, by result (hit, miss)",
    ["result"],
)


_LIVE: weakref.WeakSet[MixerClient] = weakref.WeakSet()


class _BatcherCollector(Collector):
    """What the report batchers and caches of this process's clients hold right now: read at
    scrape time, since they count in plain attributes (the batcher knows nothing of metrics)."""

    def collect(self) -> Iterator[Metric]:
        clients = list(_LIVE)
        dropped = CounterMetricFamily(
            "meshfed_mixerclient_report_dropped",
            "Report bags dropped, by reason (bound: the pending bound was hit while Mixer was "
            "away; invalid: the bag cannot be encoded)",
            labels=["reason"],
        )
        dropped.add_metric(["bound"], sum(c.batcher.stats.dropped for c in clients))
        dropped.add_metric(["invalid"], sum(c.batcher.stats.invalid for c in clients))
        yield dropped
        batches = CounterMetricFamily(
            "meshfed_mixerclient_report_batches",
            "Delta-encoded Report batches Mixer took, and the bags they carried",
            labels=["what"],
        )
        batches.add_metric(["batches"], sum(c.batcher.stats.requests for c in clients))
        batches.add_metric(["bags"], sum(c.batcher.stats.sent for c in clients))
        yield batches
        yield GaugeMetricFamily(
            "meshfed_mixerclient_reports_pending",
            "Report bags queued or being sent (held while Mixer is away)",
            value=sum(c.batcher.pending for c in clients),
        )
        yield GaugeMetricFamily(
            "meshfed_mixerclient_check_cache_entries",
            "Check answers held in the clients' caches",
            value=sum(len(c.cache) for c in clients if c.cache is not None),
        )


REGISTRY.register(_BatcherCollector())


class Verdict:
    """What a Check answers Envoy: a gRPC code, an HTTP status and a message."""

    __slots__ = ("code", "destination", "http", "message")

    def __init__(self, code: int, http: int = 200, message: str = "") -> None:
        self.code, self.http, self.message = code, http, message
        self.destination = ""  # destination.service, handed back to Envoy for the access log

    @property
    def ok(self) -> bool:
        return self.code == code_pb2.OK

    def response(self) -> authz.CheckResponse:
        out = self._response()
        if self.destination:
            out.dynamic_metadata.update({DESTINATION_SERVICE: self.destination})
        return out

    def _response(self) -> authz.CheckResponse:
        if self.ok:
            return authz.CheckResponse(
                status=status_pb2.Status(code=code_pb2.OK), ok_response=authz.OkHttpResponse()
            )
        return authz.CheckResponse(
            status=status_pb2.Status(code=self.code, message=self.message),
            denied_response=authz.DeniedHttpResponse(
                status=http_status_pb2.HttpStatus(code=self.http),  # type: ignore[arg-type]
                body=self.message,
                headers=[
                    base_pb2.HeaderValueOption(
                        header=base_pb2.HeaderValue(key="content-type", value="text/plain")
                    )
                ],
            ),
        )


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            out[key.lower()] = value
    return out


class MixerClient:
    """The client beside one Envoy: serves it on ``socket_path``, calls Mixer at
    ``mixer_address`` (``host:port``)."""

    def __init__(
        self,
        socket_path: str | Path,
        mixer_address: str,
        check_timeout: float = 0.8,
        cache_entries: int = 10_000,
        report_batch: int = 1000,
        report_delay: float = 1.0,
        report_pending: int = 100_000,
        tracer: Any = None,
        probe_interval: float = 2.0,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.tracer = tracer  # an OpenTelemetry Tracer: the client's own Check spans
        self.mixer_address = mixer_address
        self.check_timeout = check_timeout
        # cache_entries 0: no cache (every Check goes to Mixer)
        self.cache: CheckCache[Verdict] | None = (
            CheckCache(max_entries=cache_entries) if cache_entries > 0 else None
        )
        self.batcher = ReportBatcher(
            self._deliver,
            max_entries=report_batch,
            max_delay=report_delay,
            max_pending=max(report_pending, report_batch),
            word_count=len(GLOBAL_WORDS),
        )
        self.probe_interval = probe_interval
        self._sender: asyncio.Task[None] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None
        self._mixer: MixerStub | None = None
        self.last_error = ""  # the last failure to reach Mixer ("" once a call succeeds)
        # None until the first answer or failure; then whether Mixer answered last time
        self.reachable: bool | None = None
        self.unreachable_since: float | None = None  # time.time() of the first failure in a row
        self.checks = 0
        self.reports = 0
        _LIVE.add(self)

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        folder = self.socket_path.parent
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a stale socket from a crashed client
        # Reconnect within a second or two of Mixer coming back (gRPC's default backoff can
        # wait minutes), so fail-open periods and queued Reports stay short.
        self._channel = grpc.aio.insecure_channel(
            self.mixer_address,
            options=[
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ],
        )
        self._mixer = MixerStub(self._channel)
        server = grpc.aio.server()
        authz_grpc.add_AuthorizationServicer_to_server(_Authorization(self), server)
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(_AccessLog(self), server)
        server.add_insecure_port(f"unix:{self.socket_path}")
        await server.start()
        os.chmod(self.socket_path, 0o600)
        self._server = server
        self._sender = asyncio.create_task(self.batcher.run(), name="mixer report batcher")
        if self.probe_interval > 0:
            self._prober = asyncio.create_task(self._probe(), name="mixer health probe")
        log.info("mixer client on unix:%s, Mixer at %s", self.socket_path, self.mixer_address)

    async def stop(self, grace: float = 0.5) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
            self._prober = None
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
            self._sender = None
            if self._channel is not None and self.batcher.pending:
                # what Envoy logged last still goes out, if Mixer answers soon
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.batcher.flush(), 2.0)
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    def describe(self) -> dict[str, Any]:
        return {
            "socket": str(self.socket_path),
            "mixer": self.mixer_address,
            "checks": self.checks,
            "reports": self.reports,
            "mixerReachable": self.reachable,
            "unreachableSeconds": (
                None
                if self.unreachable_since is None
                else round(time.time() - self.unreachable_since, 1)
            ),
            "lastError": self.last_error,
            "cache": None if self.cache is None else attrs.asdict(self.cache.stats),
            "reportsPending": self.batcher.pending,
            "reportStats": attrs.asdict(self.batcher.stats),
        }

    # -- reachability ---------------------------------------------------------------------------
    def _answered(self) -> None:
        self.last_error = ""
        self.reachable = True
        self.unreachable_since = None
        REACHABLE.set(1)

    def _failed(self, exc: grpc.aio.AioRpcError) -> None:
        self._unreachable(f"{exc.code().name}: {exc.details()}")

    def _unreachable(self, error: str) -> None:
        self.last_error = error
        if self.unreachable_since is None:
            self.unreachable_since = time.time()
        self.reachable = False
        REACHABLE.set(0)

    async def _probe(self) -> None:
        """Ask Mixer's gRPC health now and then: cache hits alone never show an outage."""
        assert self._channel is not None
        health = health_pb2_grpc.HealthStub(self._channel)
        request = health_pb2.HealthCheckRequest(service=SERVICE)
        while True:
            try:
                reply = await health.Check(request, timeout=min(self.probe_interval, 1.0))
            except grpc.aio.AioRpcError as exc:
                self._failed(exc)
            except Exception as exc:  # a probe must never end; the next one tries again
                log.warning("mixer health probe: %r", exc)
            else:
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    self._answered()
                else:
                    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                    self._unreachable(f"health: {status}")
            await asyncio.sleep(self.probe_interval)

    # -- Check ----------------------------------------------------------------------------------
    async def check(
        self,
        bag: Bag,
        fail_open: bool,
        quotas: Sequence[str] = (),
        trace: Mapping[str, str] | None = None,
    ) -> Verdict:
        """Mixer's verdict on ``bag`` (and one unit of each quota), or the fail policy's.

        ``trace`` (W3C ``traceparent``/``tracestate``) is the context of the request Envoy is
        checking. With a tracer, the check is a ``MixerClient.Check`` span in that trace
        (``mixer.cache``: hit or miss; the verdict's code) and Mixer's own span is its child;
        without one, ``trace`` goes to Mixer as it came."""
        span = self._span(trace)
        if span is None:
            return await self._check(bag, fail_open, quotas, trace or {})
        try:
            outgoing: dict[str, str] = {}
            _inject(span, outgoing)
            verdict = await self._check(bag, fail_open, quotas, outgoing or trace or {}, span)
            span.set_attribute("mixer.status.code", verdict.code)
            return verdict
        finally:
            span.end()

    def _span(self, trace: Mapping[str, str] | None) -> Any:
        if self.tracer is None or not trace:
            return None
        try:
            from opentelemetry.trace import SpanKind

            parent = extract(trace)
            if parent is None:
                return None
            return self.tracer.start_span("MixerClient.Check", context=parent, kind=SpanKind.SERVER)
        except Exception:  # spans are a view of the work, never a reason to fail it
            log.exception("check span failed")
            return None

    async def _check(
        self,
        bag: Bag,
        fail_open: bool,
        quotas: Sequence[str],
        trace: Mapping[str, str],
        span: Any = None,
    ) -> Verdict:
        assert self._mixer is not None, "start() first"
        self.checks += 1
        cacheable = self.cache is not None and not quotas
        if cacheable and self.cache is not None:
            hit = self.cache.lookup(bag)
            if span is not None:
                span.set_attribute("mixer.cache", "hit" if hit is not None else "miss")
            if hit is not None:
                CACHE.labels("hit").inc()
                cached = hit.answer
                CHECKS.labels("allowed" if cached.ok else "denied").inc()
                return Verdict(cached.code, cached.http, cached.message)
            CACHE.labels("miss").inc()
        request = check_pb2.CheckRequest(
            attributes=codec.encode(bag),
            global_word_count=len(GLOBAL_WORDS),
            deduplication_id=uuid.uuid4().hex,
        )
        for name in quotas:
            request.quotas[name].amount = 1
        try:
            answer = await self._mixer.Check(
                request, timeout=self.check_timeout, metadata=tuple(trace.items()) or None
            )
        except grpc.aio.AioRpcError as exc:
            self._failed(exc)
            log.warning("mixer check failed (%s): %s", self.mixer_address, self.last_error)
            if fail_open:
                CHECKS.labels("failed_open").inc()
                return Verdict(code_pb2.OK)
            CHECKS.labels("failed_closed").inc()
            return Verdict(code_pb2.UNAVAILABLE, 503, f"mixer unavailable: {self.last_error}")
        self._answered()
        precondition = answer.precondition
        status = precondition.status
        verdict = (
            Verdict(status.code, http_status_for(status.code), status.message)
            if status.code != code_pb2.OK
            else Verdict(code_pb2.OK)
        )
        if cacheable and self.cache is not None:
            self.cache.insert(
                bag,
                referenced_from_proto(
                    precondition.referenced_attributes, request.global_word_count
                ),
                Verdict(verdict.code, verdict.http, verdict.message),
                precondition.valid_duration.ToTimedelta().total_seconds(),
                precondition.valid_use_count,
            )
        if not verdict.ok:
            CHECKS.labels("denied").inc()
            return verdict
        for name in quotas:
            result = answer.quotas.get(name)
            if result is None or result.granted_amount < 1:
                CHECKS.labels("denied").inc()
                return Verdict(
                    code_pb2.RESOURCE_EXHAUSTED, 429, f"quota {name} exhausted (mixer granted 0)"
                )
        CHECKS.labels("allowed").inc()
        return Verdict(code_pb2.OK)

    # -- Report ---------------------------------------------------------------------------------
    def report(self, bags: Sequence[Bag]) -> None:
        """Queue ``bags`` for Mixer's Report (sent in delta-encoded batches, retried)."""
        REPORT_BAGS.inc(len(bags))
        for bag in bags:
            self.batcher.add(bag)

    async def flush_reports(self) -> bool:
        """Send what is queued now (tests, shutdown); ``True`` when all was delivered."""
        return await self.batcher.flush()

    async def _deliver(
        self, request: report_pb2.ReportRequest, bags: Sequence[Mapping[str, Any]]
    ) -> None:
        """The batcher's send: raises when Mixer did not take ``request`` (it is retried)."""
        assert self._mixer is not None, "start() first"
        span = self._report_span(bags)
        metadata: tuple[tuple[str, str], ...] | None = None
        if span is not None:
            carrier: dict[str, str] = {}
            _inject(span, carrier)
            metadata = tuple(carrier.items()) or None
        try:
            await self._mixer.Report(request, timeout=5.0, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            self._failed(exc)
            REPORTS.labels("failed").inc()
            if span is not None:
                _failed_span(span, self.last_error)
            raise
        finally:
            if span is not None:
                span.end()
        self._answered()
        self.reports += 1
        REPORTS.labels("ok").inc()

    def _report_span(self, bags: Sequence[Mapping[str, Any]]) -> Any:
        """A ``MixerClient.Report`` span for one batch: the root of its own trace (a batch
        belongs to no single request), linked to the trace of each entry that carries one."""
        if self.tracer is None:
            return None
        try:
            from opentelemetry import context as otel_context
            from opentelemetry import trace
            from opentelemetry.trace import Link, SpanKind

            seen: set[tuple[int, int]] = set()
            links: list[Link] = []
            traced = 0
            for bag in bags:
                headers = bag.get("request.headers")
                parent = extract(headers) if isinstance(headers, Mapping) else None
                if parent is None:
                    continue
                traced += 1
                ctx = trace.get_current_span(parent).get_span_context()
                if (ctx.trace_id, ctx.span_id) in seen or len(links) >= MAX_REPORT_LINKS:
                    continue
                seen.add((ctx.trace_id, ctx.span_id))
                links.append(Link(ctx))
            return self.tracer.start_span(
                "MixerClient.Report",
                context=otel_context.Context(),
                kind=SpanKind.CLIENT,
                links=links,
                attributes={
                    "mixer.report.entries": len(bags),
                    "mixer.report.traced": traced,
                    "mixer.report.links": len(links),
                    "mixer.report.pending": self.batcher.pending,
                },
            )
        except Exception:  # spans are a view of the work, never a reason to fail it
            log.exception("report span failed")
            return None


def _failed_span(span: Any, error: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_status(Status(StatusCode.ERROR, f"not delivered, kept to retry: {error}"))


def _inject(span: Any, carrier: dict[str, str]) -> None:
    """``span``'s context (its sampled flag included) as W3C headers into ``carrier``."""
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if span.get_span_context().is_valid:
        TraceContextTextMapPropagator().inject(carrier, trace.set_span_in_context(span))


class _Authorization(authz_grpc.AuthorizationServicer):
    def __init__(self, client: MixerClient) -> None:
        self.client = client

    async def Check(  # type: ignore[override]
        self, request: authz.CheckRequest, context: grpc.aio.ServicerContext
    ) -> authz.CheckResponse:
        meta = _metadata(context)
        fail_open = meta.get(FAIL_OPEN_HEADER, "true").lower() != "false"
        quotas = [q for q in meta.get(QUOTAS_HEADER, "").split(",") if q]
        started = time.monotonic()
        try:
            bag = check_bag(request)
        except Exception as exc:  # an Envoy message we cannot read: the fail policy decides
            log.warning("cannot read ext_authz request: %r", exc)
            ok = Verdict(code_pb2.OK)
            return (ok if fail_open else Verdict(code_pb2.INTERNAL, 503, "bad request")).response()
        # Envoy's ext_authz call carries the trace context of the request it checks
        trace = trace_headers(context.invocation_metadata() or ())
        verdict = await self.client.check(bag, fail_open, quotas, trace)
        verdict.destination = str(bag.get("destination.service", ""))
        log.debug("check %s in %.1f ms", verdict.code, (time.monotonic() - started) * 1000)
        return verdict.response()


class _AccessLog(als_pb2_grpc.AccessLogServiceServicer):
    def __init__(self, client: MixerClient) -> None:
        self.client = client

    async def StreamAccessLogs(  # type: ignore[override]
        self,
        request_iterator: AsyncIterator[als_pb2.StreamAccessLogsMessage],
        context: grpc.aio.ServicerContext,
    ) -> als_pb2.StreamAccessLogsResponse:
        async for message in request_iterator:
            bags: list[Bag] = []
            try:
                bags.extend(http_report_bag(e) for e in message.http_logs.log_entry)
                bags.extend(tcp_report_bag(e) for e in message.tcp_logs.log_entry)
            except Exception as exc:  # never let one unreadable entry end Envoy's stream
                log.warning("cannot read access-log entries: %r", exc)
                continue
            self.client.report(bags)
        return als_pb2.StreamAccessLogsResponse()
