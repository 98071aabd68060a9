"""Endpoints added to / removed from the watched static file move traffic, without restarting
Envoy (its uptime keeps growing and its hot-restart epoch stays 0).

Hosts: 127.<run>.82.x. The registry is the real static adapter watching a YAML file.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import REGISTRY

from integration.pilot_helpers import (
    addr,
    eventually,
    get,
    running_mesh,
    spread,
    uptime_and_epoch,
)
from meshfed.adapters.contract import AdapterContext
from meshfed.adapters.static.registry import create as create_static

A_IP = addr(82, 2)
BACKENDS = {"b1": addr(82, 3), "b2": addr(82, 4)}
HOST = "b.default.svc.cluster.local"


def _convergence_count() -> float:
    sample = REGISTRY.get_sample_value(
        "meshfed_pilot_proxy_convergence_seconds_count", {"type": "eds"}
    )
    return sample or 0.0


def service_yaml(addresses: list[str]) -> str:
    eps = "\n".join(f"    - {{address: {a}, ports: {{http: 9080}}}}" for a in addresses)
    return f"""apiVersion: networking.meshfed.io/v1alpha1
kind: ServiceEntry
metadata: {{name: b, namespace: default}}
spec:
  hosts: [{HOST}]
  resolution: STATIC
  ports:
    - {{number: 80, name: http, protocol: HTTP}}
  endpoints:
{eps}
"""


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_static_file_endpoint_changes_move_traffic_without_restart(
    tmp_path: Path, delta: bool
) -> None:
    path = tmp_path / "services.yaml"
    path.write_text(service_yaml([BACKENDS["b1"]]))
    async with running_mesh() as mesh:
        static = create_static(AdapterContext(mesh.member, {"paths": [str(path)]}))
        task = asyncio.create_task(static.run())
        try:
            for name, ip in BACKENDS.items():
                await mesh.backend(name, ip, 9080)
            await eventually(
                lambda: asyncio.sleep(0, mesh.aggregate.service(HOST) is not None),
                10,
                "the static registry to load the file",
            )
            a = await mesh.sidecar(A_IP, "a", delta=delta)
            converged_before = _convergence_count()
            url = a.outbound_url + "/"
            async with aiohttp.ClientSession() as session:
                assert await spread(session, url, HOST, 4) == {"b1": 4}
                uptime, epoch = await uptime_and_epoch(a)
                pid = a.proc.pid

                path.write_text(service_yaml([BACKENDS["b1"], BACKENDS["b2"]]))

                async def reaches_b2() -> bool:
                    return (await get(session, url, HOST))[1] == "b2"

                await eventually(reaches_b2, 15, "traffic to reach the added endpoint b2")
                counts = await spread(session, url, HOST, 10)
                assert set(counts) == {"b1", "b2"}, counts

                path.write_text(service_yaml([BACKENDS["b2"]]))

                async def only_b2() -> bool:
                    return await spread(session, url, HOST, 6) == {"b2": 6}

                await eventually(only_b2, 15, "traffic to stop reaching the removed endpoint b1")

                uptime_after, epoch_after = await uptime_and_epoch(a)
                assert uptime_after >= uptime  # a hot restart would reset this epoch's uptime
                assert a.proc.pid == pid and a.running
                assert epoch_after == epoch == 0
                info = await a.server_info()
                assert info["state"] == "LIVE"
            # Each endpoint push was ACKed and timed from the registry event.
            assert _convergence_count() >= converged_before + 2
            state = mesh.syncz(a.spec.node_id)
            assert state["types"]["eds"]["acks"] >= 3  # initial + two endpoint pushes
            assert state["types"]["cds"]["acks"] == 1  # endpoint changes never resent clusters
            assert state["types"]["lds"]["acks"] == 1
        finally:
            await static.stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
