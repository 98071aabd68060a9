"""The ``istio.mixer.v1.Mixer`` gRPC service over the runtime (``grpc.aio``).

Turns wire messages into bags (:mod:`meshfed.mixer.attributes.codec`), calls the
:class:`~meshfed.mixer.runtime.dispatch.Dispatcher`, and writes the verdict back, with the
referenced attributes encoded against the client's own ``global_word_count`` (so a client with
an older dictionary can read them). A request the server cannot decode gets INVALID_ARGUMENT
with the reason; nothing else a request does reaches the caller as an error traceback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import grpc
from google.rpc import status_pb2

from meshfed.mixer.api.service import MixerServicer
from meshfed.mixer.api.v1 import check_pb2, report_pb2
from meshfed.mixer.attributes import codec
from meshfed.mixer.attributes.dictionary import GLOBAL_INDEX
from meshfed.mixer.runtime import metrics
from meshfed.mixer.runtime.dispatch import Dispatcher
from meshfed.mixer.tracing import NO_TRACING, MixerTracing

log = logging.getLogger("meshfed.mixer.server")

ReferencedAttributes = check_pb2.ReferencedAttributes


def encode_refs(refs: Mapping[Any, int], word_count: int) -> check_pb2.ReferencedAttributes:
    """Referenced attributes as Istio sends them: names (and map keys) as dictionary indices."""
    word = codec.WordEncoder(GLOBAL_INDEX, word_count)
    out = ReferencedAttributes()
    for key in sorted(refs, key=lambda k: (k, "") if isinstance(k, str) else k):
        match = out.attribute_matches.add()
        match.condition = refs[key]  # type: ignore[assignment]
        if isinstance(key, str):
            match.name = word(key)
        else:
            match.name = word(key[0])
            index = word(key[1])
            # map_key 0 would read as "no key": use the message's own words for that one
            match.map_key = index if index != 0 else word.own(key[1])
    out.words.extend(word.words)
    return out


class MixerService(MixerServicer):
    def __init__(self, dispatcher: Dispatcher, tracing: MixerTracing = NO_TRACING) -> None:
        self.dispatcher = dispatcher
        self.tracing = tracing

    async def Check(
        self, request: check_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> check_pb2.CheckResponse:
        try:
            count = codec.usable_word_count(request.global_word_count)
            bag = codec.decode_into({}, request.attributes, word_count=count)
        except codec.DecodeError as exc:
            metrics.CHECKS.labels(str(grpc.StatusCode.INVALID_ARGUMENT.value[0])).inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad attributes: {exc}")
            raise AssertionError("unreachable") from exc
        quotas = {name: (q.amount, q.best_effort) for name, q in request.quotas.items()}
        with self.tracing.check(context.invocation_metadata() or (), bag) as span:
            try:
                outcome = await self.dispatcher.check(bag, quotas, request.deduplication_id)
            except Exception as exc:  # a bug must be an answer, not a traceback to the caller
                log.exception("check failed")
                if span is not None:
                    span.set_attribute("mixer.status.code", grpc.StatusCode.INTERNAL.value[0])
                await context.abort(grpc.StatusCode.INTERNAL, f"check failed: {exc}")
                raise AssertionError("unreachable") from exc
            if span is not None:
                span.set_attribute("mixer.status.code", outcome.code)
                if outcome.message:
                    span.set_attribute("mixer.status.message", outcome.message)
                if quotas:
                    span.set_attribute("mixer.quotas", sorted(quotas))
        response = check_pb2.CheckResponse()
        pre = response.precondition
        pre.status.CopyFrom(status_pb2.Status(code=outcome.code, message=outcome.message))
        pre.valid_duration.FromTimedelta(outcome.valid_duration)
        pre.valid_use_count = outcome.valid_use_count
        pre.referenced_attributes.CopyFrom(encode_refs(outcome.refs, count))
        for name, q in outcome.quotas.items():
            result = response.quotas[name]
            result.granted_amount = q.granted
            result.valid_duration.FromTimedelta(q.valid_duration)
            result.referenced_attributes.CopyFrom(encode_refs(q.refs, count))
        return response

    async def Report(
        self, request: report_pb2.ReportRequest, context: grpc.aio.ServicerContext
    ) -> report_pb2.ReportResponse:
        try:
            bags = list(codec.decode_batch(request))
        except codec.DecodeError as exc:
            metrics.REPORTS.labels(str(grpc.StatusCode.INVALID_ARGUMENT.value[0])).inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad attributes: {exc}")
            raise AssertionError("unreachable") from exc
        metrics.REPORTED_BAGS.inc(len(bags))
        started = time.time_ns()
        try:
            await self.dispatcher.report(bags)
        except Exception as exc:
            log.exception("report failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"report failed: {exc}")
            raise AssertionError("unreachable") from exc
        try:
            self.tracing.reported(bags, started, context.invocation_metadata() or ())
        except Exception:  # spans are a view of the work, never a reason to fail it
            log.exception("report spans failed")
        metrics.REPORTS.labels("0").inc()
        return report_pb2.ReportResponse()
