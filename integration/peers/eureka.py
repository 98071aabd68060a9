"""A real Spring Cloud Netflix Eureka server, built by provisioning from Maven Central.

The jar (``integration/build/eureka``) runs standalone with self-preservation off and
one-second cache and eviction intervals, so registrations and expiries are visible
to tests within seconds. JVM start-up costs several seconds, so fixtures share one
server per session; tests use distinct application names.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from integration.peers.artifacts import eureka_jar_path, require_binary
from integration.peers.http import get
from integration.peers.ports import free_port, loopback_host
from integration.peers.process import PeerProcess

START_TIMEOUT = 120.0


@dataclass
class EurekaServer:
    """Where a Eureka server listens."""

    host: str
    port: int
    log_path: Path
    process: PeerProcess

    @property
    def url(self) -> str:
        """Base URL of the server (``http://host:port``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def eureka_url(self) -> str:
        """The service URL that Eureka clients take (``http://host:port/eureka/``)."""
        return f"{self.url}/eureka/"


@contextmanager
def start_eureka(
    base: Path, host: str | None = None, properties: Mapping[str, str] | None = None
) -> Iterator[EurekaServer]:
    """Start the Eureka server and yield once ``GET /eureka/apps`` answers 200.

    ``properties`` are extra Spring properties passed as ``--key=value`` arguments (they win over
    ``application.properties`` without changing the jar), e.g.
    ``{"eureka.server.remote-region-urls-with-name.us-west": "http://127.0.0.9:8761/eureka/"}``.
    """
    java = require_binary(
        Path(shutil.which("java") or "/nonexistent/java"), "java", "java", "eureka"
    )
    jar = require_binary(eureka_jar_path(), "Eureka server jar", "java", "eureka")
    host = host or loopback_host()
    port = free_port(host)
    workdir = base / f"eureka-{port}"
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        java,
        "-Xms64m",
        "-Xmx384m",
        "-XX:TieredStopAtLevel=1",
        "-XX:+UseSerialGC",
        "-Djava.security.egd=file:/dev/./urandom",
        "-jar",
        jar,
        f"--server.port={port}",
        f"--server.address={host}",
        f"--eureka.instance.hostname={host}",
        f"--eureka.client.service-url.defaultZone=http://{host}:{port}/eureka/",
        *(f"--{key}={value}" for key, value in (properties or {}).items()),
    ]
    proc = PeerProcess(f"eureka@{host}:{port}", argv, workdir / "eureka.log", cwd=workdir)
    proc.start()
    server = EurekaServer(host, port, proc.log_path, proc)

    def ready() -> bool:
        status, _ = get(
            f"{server.url}/eureka/apps", headers={"Accept": "application/json"}, timeout=2.0
        )
        return status == 200

    try:
        proc.wait_until(ready, "for GET /eureka/apps", START_TIMEOUT, interval=0.5)
        yield server
    finally:
        proc.stop()
