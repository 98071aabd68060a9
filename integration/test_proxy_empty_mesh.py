"""A new user's first gateway: ``meshfed up`` with no services, then ``meshfed proxy --gateway``.

Such a proxy never asks for EDS (it has no cluster to fill), so Pilot's entry for it has only a
status for that type; the proxy must still print its ready line and keep running (it once died
there with a traceback). Real hub process, real proxy process, real Envoy.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from integration.peers.ports import free_ports, loopback_hosts
from integration.test_gateway_mtls import CliProxy


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz/ready", timeout=1) as response:
            return bool(json.load(response)["ready"])
    except OSError:
        return False


async def test_a_gateway_in_a_mesh_without_services_gets_ready(tmp_path: Path) -> None:
    hub_ip, gw_ip = loopback_hosts(2)
    monitoring, discovery = free_ports(2, hub_ip)
    (gw_port,) = free_ports(1, gw_ip)
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(
        "apiVersion: meshfed.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\nspec:\n"
        f'  listen: {{monitoring: "{hub_ip}:{monitoring}", discovery: "{hub_ip}:{discovery}"}}\n'
        "  registries: []\n"
    )
    meshfed = str(Path(sys.executable).with_name("meshfed"))
    with (tmp_path / "hub.log").open("wb") as log:
        hub = subprocess.Popen([meshfed, "up", "--config", str(mesh)], stdout=log, stderr=log)
    url = f"http://{hub_ip}:{monitoring}"
    args = ["--gateway", "--ip", gw_ip, "--workload", "ingress", "--gateway-port", str(gw_port)]
    args += ["--pilot", f"{hub_ip}:{discovery}", "--hub", url, "--status-port", "0"]
    proxy = CliProxy(args, tmp_path / "gw.log")
    try:
        deadline = time.monotonic() + 30
        while not await asyncio.to_thread(_ready, url):
            assert hub.poll() is None and time.monotonic() < deadline, "hub not ready"
            await asyncio.sleep(0.1)
        ready = await proxy.start()
        assert ready.startswith(f"ready: router~{gw_ip}~ingress.default"), ready
        assert "'eds': 'NOT REQUESTED'" in ready
        await asyncio.sleep(0.5)
        assert proxy.proc is not None and proxy.proc.returncode is None  # still serving
    finally:
        err = await proxy.stop()
        hub.terminate()
        hub.wait(15)
    assert "Traceback" not in err, err
