"""PilotServer on its own: readiness follows registry sync, gRPC health mirrors it."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from meshfed.pilot.server import PilotServer, debounce_settings
from meshfed.registry.aggregate import AggregateRegistry


def test_debounce_settings_fall_back_on_bad_values() -> None:
    assert debounce_settings({"debounceQuiet": "0.05", "debounceMax": 2}) == (0.05, 2.0)
    assert debounce_settings({"debounceQuiet": -1, "debounceMax": "soon"}) == (0.1, 1.0)


async def test_not_ready_until_registries_sync() -> None:
    agg = AggregateRegistry()
    member = agg.add_member("m")
    pilot = PilotServer(agg, "127.0.0.1:0")
    await pilot.start()
    try:
        assert pilot.not_ready() == ["pilot: waiting for registries to sync before serving xDS"]
        member.mark_synced()
        assert pilot.not_ready() == []
    finally:
        await pilot.stop()


async def test_grpc_health_reports_serving_after_sync() -> None:
    pytest.importorskip("grpc_health")
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    agg = AggregateRegistry()
    member = agg.add_member("m")
    pilot = PilotServer(agg, "127.0.0.1:0")
    await pilot.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{pilot.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service="")
            assert (await stub.Check(request)).status == health_pb2.HealthCheckResponse.NOT_SERVING
            member.mark_synced()
            await asyncio.sleep(0.05)
            assert (await stub.Check(request)).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await pilot.stop()


async def test_a_burst_of_registry_events_costs_one_push() -> None:
    from prometheus_client import REGISTRY

    from meshfed.registry.model import Endpoint, Port, Protocol, Service

    agg = AggregateRegistry()
    member = agg.add_member("m")
    member.mark_synced()
    pilot = PilotServer(agg, "127.0.0.1:0", quiet=0.1, max_delay=2.0)
    await pilot.start()
    before = REGISTRY.get_sample_value("meshfed_pilot_debounce_seconds_count") or 0.0
    try:
        host = "b.default.svc.cluster.local"
        member.put_service(Service(host, ports=(Port(80, "http", Protocol.HTTP),)))
        for i in range(50):
            member.set_endpoints(host, [Endpoint(f"10.1.0.{i + 1}")])
        for _ in range(100):
            if pilot.pushes:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        assert pilot.pushes == 1
        assert REGISTRY.get_sample_value("meshfed_pilot_debounce_seconds_count") == before + 1
    finally:
        await pilot.stop()
