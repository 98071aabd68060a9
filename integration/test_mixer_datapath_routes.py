"""A per-route opt-out of Mixer's Check, through real Envoy: with ``dataPath.disabledRoutes``
naming ``web``'s ``/public`` prefix, a ``denier`` on ``web`` refuses ``/`` (403, Mixer's
message) while ``/public/...`` is served; the unchecked requests are still reported.

Real hub (static registry, Pilot with the Mixer plugin, Mixer), real sidecars with their
node-local Mixer clients, a real backend. Hosts: 127.0.134.x.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from integration.mixer_datapath_helpers import DENY_WEB, call, datapath_mesh, eventually, workload
from meshfed.mixer.settings import DataPathSettings

pytestmark = pytest.mark.timeout(120)

CLIENT_IP, WEB_IP = "127.0.134.2", "127.0.134.11"
WEB = "web.default.svc.cluster.local"
SERVICES = workload("client", "client.default.svc.cluster.local", CLIENT_IP, 9080) + workload(
    "web", WEB, WEB_IP, 9080
)


async def test_a_disabled_route_passes_a_denier_and_is_still_reported(tmp_path: Path) -> None:
    data_path = DataPathSettings(disabled_routes=((WEB, "/public"),))
    async with datapath_mesh(tmp_path, SERVICES, DENY_WEB, data_path, cache_entries=0) as mesh:
        backend = await mesh.backend("web", WEB_IP, 8080)
        await mesh.proxy(WEB_IP, "web", "9080:8080")
        await mesh.proxy(CLIENT_IP, "client", mixer_client=False)
        web_client = mesh.clients[0]
        sidecar = f"http://{CLIENT_IP}:15001"
        status, body = await call(sidecar, WEB, "/")
        assert status == 403 and "web is closed today" in body, (status, body)
        checks = web_client.checks
        for path in ("/public", "/public/logo.png", "/public/a/b?x=1"):
            status, body = await call(sidecar, WEB, path)
            assert (status, body) == (200, "web"), (path, status, body)
        assert web_client.checks == checks  # no Check left the sidecar for them
        assert [r["path"] for r in backend.requests] == [
            "/public",
            "/public/logo.png",
            "/public/a/b?x=1",
        ]
        status, body = await call(sidecar, WEB, "/private")
        assert status == 403, (status, body)  # the rest of web is still checked

        async def reported() -> bool:
            await web_client.flush_reports()
            return web_client.batcher.stats.sent >= 5

        await eventually(reported, 15, "all five requests to be reported")
