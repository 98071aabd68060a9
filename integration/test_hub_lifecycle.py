"""``meshfed up`` as a user runs it, when a part cannot start or a signal arrives.

A hub whose discovery port is already taken must exit with one clear error line, no traceback,
after stopping every part it had started (the registry adapters, the workload registration, the
file stores): nothing keeps running and the monitoring port is never left open. A SIGTERM always
stops a running hub, cleanly. Hosts: 127.<run>.86.x.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path

from integration.pilot_helpers import addr

ROOT = Path(__file__).resolve().parents[1]
HOST = addr(86, 1)
SERVICES = ROOT / "meshfed" / "defaults" / "services.yaml"


def _mesh(tmp_path: Path, discovery: int, monitoring: int) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    path = tmp_path / "mesh.yaml"
    path.write_text(
        "apiVersion: meshfed.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: m}\nspec:\n"
        f"  listen: {{monitoring: '{HOST}:{monitoring}', discovery: '{HOST}:{discovery}'}}\n"
        f"  configPaths: [{rules}]\n"
        f"  registries:\n    - {{name: vms, kind: static, paths: [{SERVICES}]}}\n"
    )
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


async def _up(config: Path) -> asyncio.subprocess.Process:
    env = {**os.environ, "MESHFED_WORKLOAD_STATE": ""}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshfed.cli", "up", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip


async def test_a_hub_whose_pilot_port_is_taken_exits_cleanly(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind((HOST, 0))
    taken.listen()
    monitoring = _free_port()
    try:
        proc = await _up(_mesh(tmp_path, taken.getsockname()[1], monitoring))
        started = time.monotonic()
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        taken.close()
    text = out.decode()
    assert proc.returncode == 1, text
    assert time.monotonic() - started < 20
    assert "error: PilotServer could not start" in text, text
    assert "Traceback" not in text, text
    # The adapters ran before Pilot failed, and were stopped again.
    assert "registry vms synced" in text, text
    with socket.socket() as probe:  # the monitoring port was never left open
        assert probe.connect_ex((HOST, monitoring)) != 0


async def test_sigterm_stops_a_running_hub_with_every_part(tmp_path: Path) -> None:
    monitoring = _free_port()
    proc = await _up(_mesh(tmp_path, 0, monitoring))
    try:
        deadline = time.monotonic() + 20
        ready = None
        url = f"http://{HOST}:{monitoring}/debug/tasksz"
        while time.monotonic() < deadline:
            try:
                body = await asyncio.to_thread(
                    lambda: urllib.request.urlopen(url, timeout=2).read()
                )
                ready = json.loads(body)
                break
            except OSError:
                await asyncio.sleep(0.1)
        assert ready is not None, "hub did not come up"
        assert {"registry vms", "registry workloads", "pilot config files 0"} <= set(ready)
        assert all(task["running"] for task in ready.values())
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, out.decode()
    assert "Traceback" not in out.decode()
