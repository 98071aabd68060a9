"""The operator's commands against a real hub and real Envoy processes.

``meshfed proxy`` (ready only after the first full ACK, Envoy stopped with it),
``meshfed proxy-status``, ``meshfed proxy-config``, ``meshfed bootstrap`` and ``meshfed demo``,
each run as the user runs them: a subprocess of ``python -m meshfed.cli``. Hosts: 127.<run>.85.x
(the demo uses its fixed 127.0.0.10-17 addresses).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp

from integration.pilot_helpers import addr
from meshfed.config import MeshConfig, RegistryConfig
from meshfed.hub import Hub, default_components
from meshfed.pilot.server import PilotServer

ROOT = Path(__file__).resolve().parents[1]
WEB_IP = addr(85, 2)
NODE_ID = f"sidecar~{WEB_IP}~web.default~default.svc.cluster.local"
SERVICES = """apiVersion: networking.meshfed.io/v1alpha1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.default.svc.cluster.local]
  resolution: STATIC
  ports:
    - {number: 80, name: http, protocol: HTTP}
  endpoints:
    - {address: ENDPOINT_IP, ports: {http: 9080}}
""".replace("ENDPOINT_IP", addr(85, 3))


async def run_cli(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meshfed.cli",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        await stop(proc)
        raise
    return proc.returncode or 0, out.decode(), err.decode()


async def stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM first, so the CLI stops the Envoys it started; SIGKILL if it hangs."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 15)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


async def admin_answers(url: str) -> bool:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session,
            session.get(url + "/ready") as response,
        ):
            return response.status == 200
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False


async def test_proxy_status_config_and_bootstrap_commands(tmp_path: Path) -> None:
    services = tmp_path / "services.yaml"
    services.write_text(SERVICES)
    mesh = MeshConfig(
        monitoring_address="127.0.0.1:0",
        discovery_address="127.0.0.1:0",
        registries=(RegistryConfig("static", "static", {"paths": [str(services)]}),),
    )
    hub = Hub(mesh, default_components(mesh))
    await hub.start()
    proxy = None
    try:
        hub_url = f"http://127.0.0.1:{hub.monitoring_port}"
        pilot_server = next(c for c in hub.components if isinstance(c, PilotServer))
        pilot = f"127.0.0.1:{pilot_server.port}"
        common = ("--ip", WEB_IP, "--workload", "web", "--pilot", pilot)

        code, out, _ = await run_cli("bootstrap", *common, "--app-ports", "9080:8080")
        boot = json.loads(out)
        assert code == 0 and boot["node"]["id"] == NODE_ID
        assert boot["node"]["metadata"]["APP_PORTS"] == "9080:8080"
        assert boot["admin"]["address"]["socketAddress"]["address"] == WEB_IP

        proxy = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "meshfed.cli",
            "proxy",
            *common,
            "--hub",
            hub_url,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        lines = []
        async with asyncio.timeout(40):
            while True:
                line = (await proxy.stdout.readline()).decode()  # type: ignore[union-attr]
                assert line, f"meshfed proxy exited early: {''.join(lines)}"
                lines.append(line)
                if line.startswith("ready:"):
                    break
        # Ready means Pilot saw the full config ACKed, not just that Envoy started.
        assert "'cds'" in line and "'rds'" in line
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{WEB_IP}:15021/healthz/ready") as response,
        ):
            assert response.status == 200 and (await response.json())["ready"] is True

        code, out, _ = await run_cli("proxy-status", "--hub", hub_url)
        assert code == 0
        row = next(r for r in out.splitlines() if r.startswith(NODE_ID))
        assert row.split()[2:8] == ["SYNCED", "SYNCED", "SYNCED", "SYNCED", "yes", "-"], out

        # One proxy: also compared with what its Envoy holds (admin address from metadata).
        code, out, _ = await run_cli("proxy-status", NODE_ID, "--hub", hub_url)
        assert code == 0, out
        for line in ("Clusters match (1)", "Endpoints match (1)", "Listeners match (1)"):
            assert line in out, out

        pilot_sent = ("--hub", hub_url, "--source", "pilot")
        code, out, _ = await run_cli("proxy-config", "cluster", NODE_ID, *pilot_sent, "-o", "json")
        clusters = json.loads(out)
        assert code == 0
        assert [c["name"] for c in clusters] == ["outbound|80||api.default.svc.cluster.local"]
        code, out, _ = await run_cli(
            "proxy-config", "endpoint", NODE_ID, *pilot_sent, "-o", "names"
        )
        assert out.split() == ["outbound|80||api.default.svc.cluster.local"]
        code, out, _ = await run_cli("proxy-config", "listener", NODE_ID, *pilot_sent, "-o", "json")
        assert [x["name"] for x in json.loads(out)] == ["outbound_http"]

        code, _, err = await run_cli("proxy-config", "route", "nope", "--hub", hub_url)
        assert code != 0 and "not connected" in err

        proxy.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proxy.wait(), 15) == 0
        for _ in range(50):
            if not await admin_answers(f"http://{WEB_IP}:15000"):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("Envoy still answers after meshfed proxy stopped")
    finally:
        if proxy is not None:
            await stop(proxy)
        await hub.stop()


async def test_demo_shows_traffic_and_stops_everything() -> None:
    code, out, err = await run_cli("demo", "--duration", "4", "--interval", "0.3", timeout=90)
    assert code == 0, out + err
    assert "reviews-v1" in out and "reviews-v2" in out and "ratings: ratings-v1" in out
    # ratings in the second registry and the VM that joined through registration answer too:
    # federation, end to end.
    assert "ratings: ratings-v2" in out and "ratings: ratings-v3" in out
    assert "registries (first wins a conflict): vms (static), dc2 (static)" in out
    assert "127.0.0.17      workloads" in out
    assert "conflict: mongodb.default.svc.cluster.local: port mongo" in out
    assert "stopped 6 sidecars and 5 apps" in out
    for ip in ("127.0.0.10", "127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.15", "127.0.0.17"):
        assert not await admin_answers(f"http://{ip}:15000"), f"sidecar on {ip} left running"
