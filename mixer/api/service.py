"""The ``istio.mixer.v1.Mixer`` service binding: server registration and a client stub.

Written by hand instead of generated so that no generated module pins a grpcio version; the
method paths are Istio's (``/istio.mixer.v1.Mixer/Check`` and ``/Report``), so an Istio 0.2
client reaches this server unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import grpc

from meshfed.mixer.api.v1 import check_pb2, report_pb2

SERVICE = "istio.mixer.v1.Mixer"
CHECK_METHOD = f"/{SERVICE}/Check"
REPORT_METHOD = f"/{SERVICE}/Report"


class MixerServicer(Protocol):
    async def Check(
        self, request: check_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> check_pb2.CheckResponse: ...

    async def Report(
        self, request: report_pb2.ReportRequest, context: grpc.aio.ServicerContext
    ) -> report_pb2.ReportResponse: ...


def add_mixer_servicer(servicer: MixerServicer, server: grpc.aio.Server) -> None:
    handlers = {
        "Check": grpc.unary_unary_rpc_method_handler(
            servicer.Check,
            request_deserializer=check_pb2.CheckRequest.FromString,
            response_serializer=check_pb2.CheckResponse.SerializeToString,
        ),
        "Report": grpc.unary_unary_rpc_method_handler(
            servicer.Report,
            request_deserializer=report_pb2.ReportRequest.FromString,
            response_serializer=report_pb2.ReportResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


class MixerStub:
    """A client of the Mixer service on a ``grpc.aio`` channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.Check: Callable[..., Awaitable[check_pb2.CheckResponse]] = channel.unary_unary(
            CHECK_METHOD,
            request_serializer=check_pb2.CheckRequest.SerializeToString,
            response_deserializer=check_pb2.CheckResponse.FromString,
        )
        self.Report: Callable[..., Awaitable[report_pb2.ReportResponse]] = channel.unary_unary(
            REPORT_METHOD,
            request_serializer=report_pb2.ReportRequest.SerializeToString,
            response_deserializer=report_pb2.ReportResponse.FromString,
        )
