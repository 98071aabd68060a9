"""Mixer's Report path feeds the dashboard's service graph: bags arrive over real gRPC, are
enriched from the registry (the caller is named by its address only), and become edges."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import grpc

from meshfed.dashboard.graph import ServiceGraph
from meshfed.mixer.api.service import MixerStub
from meshfed.mixer.attributes import codec
from meshfed.mixer.component import Mixer
from meshfed.mixer.settings import MixerSettings
from meshfed.registry.aggregate import AggregateRegistry
from meshfed.registry.model import Endpoint, Port, Protocol, Service


async def test_reported_requests_become_edges_with_errors(tmp_path: Path) -> None:
    aggregate = AggregateRegistry()
    member = aggregate.add_member("vms", "static")
    member.replace(
        [Service("legacy.vm.local", "vm", (Port(80, "http", Protocol.HTTP),))],
        {"legacy.vm.local": [Endpoint("10.9.0.5", registry="vms")]},
    )
    mixer = Mixer(
        MixerSettings(enabled=True, listen="127.0.0.1:0", config_paths=(str(tmp_path),)),
        index=aggregate,
    )
    graph = ServiceGraph()
    mixer.dispatcher.report_observers.append(graph.observe)
    await mixer.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{mixer.port}")
    try:
        caller = ipaddress.ip_address("10.9.0.5").packed
        bags = [
            {"source.ip": caller, "destination.service": "api.default", "response.code": code}
            for code in (200, 200, 200, 503)
        ]
        for request in codec.encode_batches(bags):
            await MixerStub(channel).Report(request)
    finally:
        await channel.close()
        await mixer.stop()
    (edge,) = graph.describe()["edges"]
    assert (edge["source"], edge["destination"]) == ("legacy.vm.local", "api.default")
    assert (edge["requests"], edge["errors"], edge["error_rate"]) == (4, 1, 0.25)
