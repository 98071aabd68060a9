"""Pilot failures that must not break the data plane.

- Pilot killed and restarted (empty cache, same port): Envoy keeps serving with its last
  config while Pilot is down, reconnects, and converges to state that changed meanwhile.
- A resource Envoy rejects (a TCP service port already bound on the proxy's address) shows as
  NACKED with Envoy's error in proxy-status and in the NACK metric; the previous config keeps
  working, later changes still apply, and a fix returns the proxy to SYNCED.

Hosts: 127.<run>.84.x.
"""

from __future__ import annotations

import socket

import aiohttp
import pytest
from prometheus_client import REGISTRY

from integration.pilot_helpers import (
    addr,
    endpoint,
    eventually,
    get,
    http_service,
    running_mesh,
    spread,
    uptime_and_epoch,
)
from meshfed.registry.model import Endpoint, Port, Protocol, Service

A_IP = addr(84, 2)
B1, B2, D1 = addr(84, 3), addr(84, 4), addr(84, 5)
HOST = "b.default.svc.cluster.local"


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_pilot_restart_envoy_keeps_serving_then_converges(delta: bool) -> None:
    async with running_mesh() as mesh:
        mesh.member.replace([http_service(HOST)], {HOST: [endpoint(B1)]})
        await mesh.backend("b1", B1, 9080)
        await mesh.backend("b2", B2, 9080)
        a = await mesh.sidecar(A_IP, "a", delta=delta)
        url = a.outbound_url + "/"
        async with aiohttp.ClientSession() as session:
            assert await spread(session, url, HOST, 3) == {"b1": 3}
            pid = a.proc.pid
            port = mesh.pilot.port
            await mesh.pilot.stop()
            # Pilot is down: the last config stays in force.
            assert await spread(session, url, HOST, 5) == {"b1": 5}
            # The registry moves on while Pilot is away.
            mesh.member.set_endpoints(HOST, [endpoint(B2)])
            assert await spread(session, url, HOST, 3) == {"b1": 3}
            await mesh.restart_pilot(down_for=0.5)
            assert mesh.pilot.port == port

            async def converged() -> bool:
                state = mesh.syncz(a.spec.node_id)
                synced = bool(state) and state["ready"]
                return synced and await spread(session, url, HOST, 3) == {"b2": 3}

            await eventually(converged, 30, "Envoy to reconnect and converge after Pilot restart")
            assert a.proc.pid == pid and a.running
            _, epoch = await uptime_and_epoch(a)
            assert epoch == 0


def _nacks(type_short: str) -> float:
    return REGISTRY.get_sample_value("meshfed_pilot_xds_nacks_total", {"type": type_short}) or 0.0


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_rejected_listener_is_nacked_and_previous_config_keeps_working(
    delta: bool,
) -> None:
    async with running_mesh() as mesh:
        mesh.member.replace([http_service(HOST)], {HOST: [endpoint(B1)]})
        await mesh.backend("b1", B1, 9080)
        await mesh.backend("d1", D1, 9080)
        a = await mesh.sidecar(A_IP, "a", delta=delta)
        url = a.outbound_url + "/"
        blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            blocker.bind((A_IP, 7501))
            blocker.listen()
            acked_lds = mesh.syncz(a.spec.node_id)["types"]["lds"]["acked_version"]
            nacks_before = _nacks("lds")
            # Envoy cannot bind A_IP:7501 for this service's local listener: it NACKs.
            tcp = Service("t.default.svc.cluster.local", ports=(Port(7501, "tcp", Protocol.TCP),))
            mesh.member.put_service(tcp, [Endpoint(D1, ports={"tcp": 7501})])

            async def nacked() -> bool:
                return mesh.syncz(a.spec.node_id)["types"]["lds"]["status"] == "NACKED"

            await eventually(nacked, 15, "LDS to be NACKED")
            lds = mesh.syncz(a.spec.node_id)["types"]["lds"]
            assert "7501" in lds["error"], lds
            assert lds["acked_version"] == acked_lds  # the last ACKed config is in force
            assert _nacks("lds") == nacks_before + 1
            async with aiohttp.ClientSession() as session:
                assert await spread(session, url, HOST, 3) == {"b1": 3}
                # Other types keep flowing: a new HTTP service is reachable while LDS is NACKED.
                d_host = "d.default.svc.cluster.local"
                mesh.member.put_service(http_service(d_host), [endpoint(D1)])

                async def d_reachable() -> bool:
                    return await get(session, url, d_host) == (200, "d1")

                await eventually(d_reachable, 15, "a new service to work while LDS is NACKED")
                # The rejected version was not re-sent by that push (LDS needed nothing new).
                assert _nacks("lds") == nacks_before + 1
                # Fix: the TCP service goes away; the new listener set is accepted.
                mesh.member.delete_service(tcp.hostname)

                async def synced() -> bool:
                    return mesh.syncz(a.spec.node_id)["types"]["lds"]["status"] == "SYNCED"

                await eventually(synced, 15, "LDS to return to SYNCED")
                assert await spread(session, url, HOST, 3) == {"b1": 3}
        finally:
            blocker.close()
