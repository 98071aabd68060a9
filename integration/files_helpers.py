"""A live hub over one config folder, probed while tests or benchmarks break the folder.

``meshfed up`` runs as a real process whose static registry and Pilot rule store both read
``folder``; a background prober fetches ``/healthz/ready`` and ``/debug/registryz`` every 50 ms
and keeps the slowest answer. The hub runs as root without the DAC override capabilities, as an
unprivileged service would, so that a mode 000 file really cannot be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from integration.routing_helpers import free_port

HOST = "web.files.test"
ROOT = Path(__file__).resolve().parents[1]


def service_entry(name: str, host: str, addresses: list[str]) -> str:
    endpoints = "".join(f"\n    - {{address: {a}, ports: {{http: 8080}}}}" for a in addresses)
    return f"""apiVersion: networking.meshfed.io/v1alpha1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{host}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:{endpoints}
"""


RULES = """apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {name: web-default}
spec:
  destination: {name: web.files.test}
  precedence: 1
  route:
  - labels: {version: v1}
"""


class LiveHub:
    """A ``meshfed up`` process over ``folder``, probed every 50 ms while it runs."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.folder = tmp_path / "conf"
        self.log = tmp_path / "hub.log"
        self.url = ""
        self.proc: asyncio.subprocess.Process | None = None
        self.worst = 0.0  # slowest probe answer, seconds
        self.probe_failures: list[str] = []
        self._prober: asyncio.Task[None] | None = None

    async def start(self) -> None:
        monitoring, discovery = free_port(), free_port()
        config = self.tmp_path / "mesh.yaml"
        config.write_text(
            f"""apiVersion: meshfed.io/v1alpha1
kind: MeshConfig
metadata: {{name: files}}
spec:
  listen: {{monitoring: "127.0.0.1:{monitoring}", discovery: "127.0.0.1:{discovery}"}}
  configPaths: [{self.folder}]
  registries:
    - {{name: files, kind: static, paths: [{self.folder}]}}
"""
        )
        self.url = f"http://127.0.0.1:{monitoring}"
        with open(self.log, "ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                "setpriv",
                "--bounding-set=-dac_override,-dac_read_search",
                sys.executable,
                "-m",
                "meshfed.cli",
                "up",
                "-c",
                str(config),
                cwd=ROOT,
                stdout=out,
                stderr=out,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        await self.eventually(self._ready, "hub ready", 30)
        self._prober = asyncio.create_task(self._probe())

    async def _ready(self) -> bool:
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            return (await self._get("/healthz/ready"))[0] == 200
        return False

    async def _get(self, path: str) -> tuple[int, Any]:
        timeout = aiohttp.ClientTimeout(total=5)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(self.url + path) as response,
        ):
            return response.status, await response.json()

    async def _probe(self) -> None:
        while True:
            for path in ("/healthz/ready", "/debug/registryz"):
                started = time.monotonic()
                try:
                    status, _ = await self._get(path)
                    if status != 200:
                        self.probe_failures.append(f"{path}: {status}")
                except Exception as exc:
                    self.probe_failures.append(f"{path}: {exc!r}")
                self.worst = max(self.worst, time.monotonic() - started)
            await asyncio.sleep(0.05)

    async def eventually(
        self, predicate: Callable[[], Any], what: str, timeout: float = 10.0
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await predicate():
                return
            await asyncio.sleep(0.05)
        pytest.fail(f"not within {timeout}s: {what}\nhub log:\n{self.log.read_text()[-3000:]}")

    async def registry(self) -> dict[str, Any]:
        return (await self._get("/debug/registryz"))[1]

    async def addresses(self, host: str = HOST) -> list[str] | None:
        for svc in (await self.registry())["services"]:
            if svc["hostname"] == host:
                return sorted(e["address"] for e in svc["endpoints"])
        return None

    async def errors(self) -> list[str]:
        (member,) = [m for m in (await self.registry())["members"] if m["name"] == "files"]
        return member["errors"]

    async def rules(self) -> list[str]:
        (store,) = (await self._get("/debug/configz"))[1]["stores"]
        return store["route_rules"]

    def rss_mb(self) -> float:
        assert self.proc is not None
        # setpriv execs the hub in place: the pid is the hub's.
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    async def terminate(self) -> float:
        """SIGTERM; the seconds until the process exited."""
        assert self.proc is not None
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        finally:
            self.kill()
        return time.monotonic() - started

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
