"""A real statsd daemon (Etsy's, from the npm registry) for Mixer's statsd handler tests.

Provisioned by ``python -m integration.provision --only statsd``. It listens for statsd lines
on UDP and is read back through its management TCP interface (``counters``, ``gauges``,
``timers``), which answers with Node's ``util.inspect`` of its tables: flat objects of numbers
or arrays of numbers, parsed here. No backend is configured and the flush interval is an hour,
so nothing is reset while a test reads.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from integration.peers.artifacts import require_binary, statsd_script, unavailable
from integration.peers.ports import free_port, loopback_host
from integration.peers.process import PeerProcess

START_TIMEOUT = 20.0
_ENTRY = re.compile(
    r"(?:'((?:[^'\\]|\\.)*)'|([A-Za-z_$][\w$]*))\s*:\s*(\[[^\]]*\]|-?[\d.]+(?:e[-+]?\d+)?)"
)


def parse_inspect(text: str) -> dict[str, float | list[float]]:
    """``{ 'a.b': 3, c: [ 1, 2.5 ] }`` (util.inspect of a flat table) as a dict."""
    out: dict[str, float | list[float]] = {}
    for quoted, bare, value in _ENTRY.findall(text):
        key = quoted.replace("\\'", "'") if quoted else bare
        if value.startswith("["):
            out[key] = [
                float(v) for v in value.strip("[] \n").replace("\n", " ").split(",") if v.strip()
            ]
        else:
            out[key] = float(value)
    return out


@dataclass
class StatsdServer:
    """Where a statsd daemon listens and how to read what it received."""

    host: str
    port: int  # UDP, statsd lines
    mgmt_port: int  # TCP, the management interface
    process: PeerProcess

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self, cmd: str, timeout: float = 5.0) -> str:
        """One management command; returns its answer up to the closing ``END``."""
        with socket.create_connection((self.host, self.mgmt_port), timeout=timeout) as sock:
            sock.sendall(cmd.encode() + b"\n")
            data = b""
            while b"END\n" not in data and not data.startswith(b"health"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data.decode()

    def counters(self) -> dict[str, float | list[float]]:
        return parse_inspect(self.command("counters"))

    def gauges(self) -> dict[str, float | list[float]]:
        return parse_inspect(self.command("gauges"))

    def timers(self) -> dict[str, float | list[float]]:
        return parse_inspect(self.command("timers"))


@contextmanager
def start_statsd(base: Path, host: str | None = None) -> Iterator[StatsdServer]:
    """Start the statsd daemon on loopback; yield once its management port answers."""
    node = shutil.which("node")
    if node is None:
        unavailable("node not found; install Debian's nodejs, then run the statsd provisioning")
    script = require_binary(statsd_script(), "statsd", "npm", "statsd")
    host = host or loopback_host()
    port, mgmt_port = free_port(host), free_port(host)
    workdir = base / f"statsd-{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "port": port,
        "address": host,
        "mgmt_port": mgmt_port,
        "mgmt_address": host,
        "backends": [],
        "flushInterval": 3_600_000,
    }
    (workdir / "config.js").write_text(json.dumps(config))  # JSON is a JS object literal
    argv = [node, script, workdir / "config.js"]
    proc = PeerProcess(f"statsd@{host}:{port}", argv, workdir / "statsd.log", cwd=workdir).start()
    server = StatsdServer(host, port, mgmt_port, proc)
    try:
        proc.wait_until(lambda: "up" in server.command("health", 1.0), "for health", START_TIMEOUT)
        yield server
    finally:
        proc.stop()
