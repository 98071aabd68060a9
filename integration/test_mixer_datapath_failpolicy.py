"""The network fail policy through real Envoy, with sidecars run by ``meshfed proxy`` as a user
runs them: no ``--mixer`` flag (the client's Mixer address comes from the mesh config), the
hub's Mixer stopped, and ``meshfed proxy-status`` telling which proxy's client cannot reach it.

A real hub (static registry, Pilot with the Mixer plugin, Mixer on a fixed port); ``web``'s
sidecar is a ``meshfed proxy`` process whose mesh config file enables Mixer's data path; the
caller's sidecar is a plain Envoy without a Mixer client. With a ``denier`` on ``web``, the
first request is refused (403, the client reached Mixer); with Mixer stopped, ``failOpen:
false`` answers 503 and ``failOpen: true`` serves the request (200). Either way proxy-status
marks web's client UNREACHABLE with the status port that serves the client's metrics, where
the failed Checks are counted by policy.

Hosts: 127.0.133.x.
"""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import pytest

from integration.mixer_datapath_helpers import (
    DENY_WEB,
    call,
    cli_proxy,
    datapath_mesh,
    eventually,
    run_cli,
    workload,
)
from integration.routing_helpers import free_port
from meshfed.mixer.settings import DataPathSettings

pytestmark = pytest.mark.timeout(150)

CLIENT_IP, WEB_IP = "127.0.133.2", "127.0.133.11"
WEB = "web.default.svc.cluster.local"
STATUS_PORT = 15021

SERVICES = workload("client", "client.default.svc.cluster.local", CLIENT_IP, 9080) + workload(
    "web", WEB, WEB_IP, 9080
)


def mesh_config_file(folder: Path, mixer_port: int, fail_open: bool) -> Path:
    """What the operator hands ``meshfed proxy``: the mesh config that enables Mixer."""
    path = folder / "mesh.yaml"
    path.write_text(
        "apiVersion: meshfed.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec:\n"
        "  mixer:\n"
        "    enabled: true\n"
        f"    listen: 0.0.0.0:{mixer_port}\n"  # a wildcard: the proxy dials its loopback
        "    kubernetes: false\n"
        f"    dataPath: {{failOpen: {str(fail_open).lower()}}}\n"
    )
    return path


async def client_metric(result: str) -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{WEB_IP}:{STATUS_PORT}/metrics") as response,
    ):
        text = await response.text()
    match = re.search(
        rf'^meshfed_mixerclient_checks_total\{{result="{result}"\}} (\S+)$', text, re.M
    )
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize("fail_open", [False, True], ids=["fail-closed", "fail-open"])
async def test_mixer_down_fail_policy_and_proxy_status(tmp_path: Path, fail_open: bool) -> None:
    port = free_port()
    data_path = DataPathSettings(fail_open=fail_open)
    async with datapath_mesh(
        tmp_path, SERVICES, DENY_WEB, data_path, mixer_listen=f"127.0.0.1:{port}"
    ) as mesh:
        await mesh.backend("web", WEB_IP, 8080)
        await mesh.proxy(CLIENT_IP, "client", mixer_client=False)
        config = mesh_config_file(tmp_path, port, fail_open)
        async with cli_proxy(
            *("--ip", WEB_IP, "--workload", "web", "--app-ports", "9080:8080"),
            *("--pilot", f"127.0.0.1:{mesh.pilot.port}", "--hub", mesh.hub_url),
            *("--config", str(config), "--status-port", str(STATUS_PORT)),
            *("--mixer-cache-size", "0"),  # every request a Check: the policy shows at once
        ) as lines:
            started = next(line for line in lines if line.startswith("mixer client on unix:"))
            assert f"-> 127.0.0.1:{port}" in started, started
            assert f"metrics {WEB_IP}:{STATUS_PORT}" in started, started
            sidecar = f"http://{CLIENT_IP}:15001"
            status, body = await call(sidecar, WEB)
            assert status == 403 and "web is closed today" in body, (status, body)
            node_id = f"sidecar~{WEB_IP}~web.default~default.svc.cluster.local"
            code, out = await run_cli("proxy-status", "--hub", mesh.hub_url)
            assert code == 0, out
            row = next(r for r in out.splitlines() if r.startswith(node_id))
            assert row.split()[-3:-1] == ["ok", f":{STATUS_PORT}"], out
            caller = next(r for r in out.splitlines() if r.startswith(f"sidecar~{CLIENT_IP}~"))
            assert caller.split()[-2] == "-", out  # no client there, nothing to reach

            await mesh.mixer.stop()  # the hub's Mixer is gone; the hub and Pilot stay
            status, body = await call(sidecar, WEB)
            if fail_open:
                assert (status, body) == (200, "web"), (status, body)
            else:
                assert status == 503 and "mixer unavailable" in body, (status, body)
            result = "failed_open" if fail_open else "failed_closed"
            assert await client_metric(result) >= 1

            async def marked() -> bool:
                code, out = await run_cli("proxy-status", "--hub", mesh.hub_url)
                row = next(r for r in out.splitlines() if r.startswith(node_id))
                return code == 0 and row.split()[-3:-1] == ["UNREACHABLE", f":{STATUS_PORT}"]

            await eventually(marked, 15, "proxy-status to mark web's Mixer client UNREACHABLE")
            code, out = await run_cli("proxy-status", node_id, "--hub", mesh.hub_url, "--no-envoy")
            assert code == 0, out
            line = next(r for r in out.splitlines() if "cannot reach Mixer" in r)
            assert line.startswith(f"{node_id}: mixer client cannot reach Mixer at 127.0.0.1:")
            assert f"http://{WEB_IP}:{STATUS_PORT}/metrics" in line, line
