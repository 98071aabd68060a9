"""``meshfed up --log-format json``: every line on stderr is one JSON object a collector can parse.

The hub federates the static registry and a Consul address where nothing listens, with a short
initial-sync timeout, so its log has registry lines (synced, degraded, late) with the registry
as a field, and a bad rule file (its error with the file and object as fields); then it is
stopped with SIGTERM. Hosts: 127.<run>.89.x.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from integration.pilot_helpers import addr

ROOT = Path(__file__).resolve().parents[1]
HOST = addr(89, 1)
SERVICES = ROOT / "meshfed" / "defaults" / "services.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


async def test_up_with_json_logs_writes_one_object_per_line(tmp_path: Path) -> None:
    monitoring, nobody = _free_port(), _free_port()  # nothing listens on `nobody`
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "bad.yaml").write_text(  # a rule with an unknown field: one error, as a record
        "apiVersion: config.istio.io/v1alpha2\nkind: RouteRule\nmetadata: {name: bad}\n"
        "spec: {destination: {name: reviews}, bogus: 1}\n"
    )
    config = tmp_path / "mesh.yaml"
    config.write_text(
        "apiVersion: meshfed.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: m}\nspec:\n"
        "  initialSyncTimeout: 1s\n"
        f"  listen: {{monitoring: '{HOST}:{monitoring}', discovery: '{HOST}:0'}}\n"
        f"  configPaths: [{rules}]\n"
        "  registries:\n"
        f"    - {{name: vms, kind: static, paths: [{SERVICES}]}}\n"
        f"    - {{name: consul, kind: consul, addresses: ['{HOST}:{nobody}']}}\n"
    )
    log_path = tmp_path / "hub.log"
    env = {**os.environ, "MESHFED_WORKLOAD_STATE": ""}
    with log_path.open("wb") as log_file:
        hub = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meshfed.cli", "up", "--log-format", "json",
            "--config", str(config),
            stdout=asyncio.subprocess.DEVNULL, stderr=log_file, env=env,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            url = f"http://{HOST}:{monitoring}/healthz/ready"
            while not await asyncio.to_thread(_ready, url):
                assert time.monotonic() < deadline, log_path.read_text()
                assert hub.returncode is None, log_path.read_text()
                await asyncio.sleep(0.2)
        finally:
            hub.send_signal(signal.SIGTERM)
            await asyncio.wait_for(hub.wait(), 40)
    lines = log_path.read_text().splitlines()
    assert hub.returncode == 0 and lines, lines
    records = [json.loads(line) for line in lines]  # every line, or the test fails here
    for record in records:
        assert isinstance(record, dict)
        assert {"time", "level", "logger", "message"} <= record.keys(), record
        assert record["level"] in {"debug", "info", "warning", "error", "critical"}, record
    messages = [r["message"] for r in records]
    assert any(m.startswith("starting hub") for m in messages), messages
    vms = [r for r in records if r.get("registry") == "vms"]
    assert any(r["message"] == "registry vms synced" for r in vms), records
    late = [
        r for r in records if r.get("registry") == "consul" and "initialSyncTimeout" in r["message"]
    ]
    assert late and late[0]["level"] == "warning", records
    bad = [r for r in records if r.get("file") == str(rules / "bad.yaml")]
    assert bad and bad[0]["level"] == "error" and "bad" in bad[0]["resource"], records
