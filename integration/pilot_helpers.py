"""Helpers for Pilot's real-Envoy tests: a Pilot on an ephemeral port, tiny HTTP backends, and
sidecars that are always stopped (process groups), even when a test fails.

Every host is a distinct 127.0.0.0/8 address; each test module picks its own third octet so
modules never collide with each other or with other suites' peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from meshfed.pilot.server import PilotServer
from meshfed.pilot.status import routes as status_routes
from meshfed.proxy import EnvoyProcess, ProxySpec, wait_ready
from meshfed.registry.aggregate import AggregateRegistry
from meshfed.registry.model import Endpoint, Port, Protocol, Service

# A per-process 127.N.0.0/16: two runs of these tests at once (two developers, or a developer
# and CI on one machine) never bind the same address. Modules pick the third octet.
RUN_OCTET = 100 + os.getpid() % 120


def addr(third: int, last: int) -> str:
    """A loopback address of this test run: ``127.<run>.<third>.<last>``."""
    return f"127.{RUN_OCTET}.{third}.{last}"


def http_service(host: str, port: int = 80, namespace: str = "default") -> Service:
    return Service(hostname=host, namespace=namespace, ports=(Port(port, "http", Protocol.HTTP),))


def endpoint(address: str, port: int = 9080, name: str = "http") -> Endpoint:
    return Endpoint(address=address, ports={name: port})


class Backend:
    """An HTTP server that answers every request with its own name."""

    def __init__(self, name: str, address: str, port: int) -> None:
        self.name, self.address, self.port = name, address, port
        self.hits = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def handle(request: web.Request) -> web.Response:
            self.hits += 1
            return web.Response(text=self.name, headers={"x-backend": self.name})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.address, self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class Mesh:
    """An aggregate, a Pilot serving it, a monitoring app, and the sidecars/backends started."""

    def __init__(self, quiet: float = 0.02, max_delay: float = 0.2, synced: bool = True) -> None:
        self.synced = synced
        self.aggregate = AggregateRegistry()
        self.member = self.aggregate.add_member("test")
        self.pilot = PilotServer(self.aggregate, "127.0.0.1:0", quiet, max_delay)
        self.envoys: list[EnvoyProcess] = []
        self.backends: list[Backend] = []
        self.monitoring: web.AppRunner | None = None
        self.hub_url = ""

    async def start(self) -> None:
        if self.synced:
            self.member.mark_synced()
        await self.pilot.start()
        app = web.Application()
        app.add_routes(status_routes(lambda: self.pilot.discovery))
        self.monitoring = web.AppRunner(app, access_log=None)
        await self.monitoring.setup()
        site = web.TCPSite(self.monitoring, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.hub_url = f"http://127.0.0.1:{port}"

    async def restart_pilot(self, down_for: float = 0.0) -> None:
        """Stop the discovery server and start a fresh one (empty cache) on the same port."""
        port = self.pilot.port
        await self.pilot.stop()
        await asyncio.sleep(down_for)
        self.pilot = PilotServer(
            self.aggregate, f"127.0.0.1:{port}", self.pilot.quiet, self.pilot.max_delay
        )
        await self.pilot.start()

    async def backend(self, name: str, address: str, port: int) -> Backend:
        b = Backend(name, address, port)
        await b.start()
        self.backends.append(b)
        return b

    async def sidecar(
        self,
        ip: str,
        workload: str,
        app_ports: str = "",
        delta: bool = False,
        namespace: str = "default",
        ready: bool = True,
        interception: str = "NONE",
        locality: str = "",
    ) -> EnvoyProcess:
        spec = ProxySpec(
            ip=ip,
            workload=workload,
            namespace=namespace,
            app_ports=app_ports,
            pilot=f"127.0.0.1:{self.pilot.port}",
            delta=delta,
            interception=interception,
            locality=locality,
        )
        envoy = EnvoyProcess(spec)
        self.envoys.append(envoy)
        await envoy.start()
        if ready:
            await wait_ready(envoy, self.hub_url, timeout=30)
        return envoy

    async def stop(self) -> None:
        for envoy in self.envoys:
            with contextlib.suppress(Exception):
                await envoy.stop()
        for b in self.backends:
            with contextlib.suppress(Exception):
                await b.stop()
        with contextlib.suppress(Exception):
            await self.pilot.stop()
        if self.monitoring is not None:
            await self.monitoring.cleanup()

    def syncz(self, proxy: str) -> dict[str, Any]:
        conn = self.pilot.discovery.find(proxy) if self.pilot.discovery else None
        return conn.describe() if conn is not None else {}


@contextlib.asynccontextmanager
async def running_mesh(**kwargs: Any) -> AsyncIterator[Mesh]:
    mesh = Mesh(**kwargs)
    try:
        await mesh.start()
        yield mesh
    finally:
        await mesh.stop()


async def get(
    session: aiohttp.ClientSession, url: str, host: str, timeout: float = 5.0
) -> tuple[int, str]:
    async with session.get(
        url, headers={"Host": host}, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as response:
        return response.status, await response.text()


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.1
) -> None:
    """Poll ``check`` until true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
            if await check():
                return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def spread(session: aiohttp.ClientSession, url: str, host: str, n: int) -> dict[str, int]:
    """Send ``n`` requests; count answers by body (backend name) or by ``HTTP <status>``."""
    counts: dict[str, int] = {}
    for _ in range(n):
        status, body = await get(session, url, host)
        key = body if status == 200 else f"HTTP {status}"
        counts[key] = counts.get(key, 0) + 1
    return counts


async def uptime_and_epoch(envoy: EnvoyProcess) -> tuple[int, int]:
    """(seconds up in this epoch, hot-restart epoch) from Envoy's admin ``/server_info``."""
    info = await envoy.server_info()
    uptime = info.get("uptime_current_epoch", "0s")
    seconds = int(float(str(uptime).rstrip("s")))
    return seconds, int(info.get("command_line_options", {}).get("restart_epoch", 0))


INTERCEPT_RANGE = "127.0.200.0/24"  # service VIPs; only these are redirected to the sidecar


async def interception_scenario() -> dict[str, Any]:
    """Run inside a fresh network namespace (``unshare --net``): iptables REDIRECTs the VIP
    range to a REDIRECT-mode sidecar; the "app" (this process) dials VIPs directly.

    Returns what happened, for ``test_pilot_interception`` to assert on.
    """
    import subprocess

    from meshfed.registry.model import Endpoint, Port, Protocol, Service

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(
        [
            *("iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", INTERCEPT_RANGE),
            *("-j", "REDIRECT", "--to-ports", "15001"),
        ],
        check=True,
    )
    out: dict[str, Any] = {}
    async with running_mesh() as mesh:
        web = Service(
            "web.default.svc.cluster.local",
            ports=(Port(80, "http", Protocol.HTTP),),
            address="127.0.200.10",
        )
        db = Service(
            "db.default.svc.cluster.local",
            ports=(Port(7379, "tcp", Protocol.TCP),),
            address="127.0.200.11",
        )
        mesh.member.replace(
            [web, db],
            {
                web.hostname: [Endpoint("127.0.0.3", ports={"http": 9080})],
                db.hostname: [Endpoint("127.0.0.4", ports={"tcp": 7379})],
            },
        )
        await mesh.backend("web-1", "127.0.0.3", 9080)

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"db:" + await reader.read(100))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.4", 7379)
        try:
            a = await mesh.sidecar("127.0.0.2", "app", interception="REDIRECT")
            out["listeners"] = sorted(
                n for n in (mesh.pilot.discovery.find(a.spec.node_id).sent[T_LISTENER])
            )
            out["status"] = {k: v["status"] for k, v in mesh.syncz(a.spec.node_id)["types"].items()}
            async with aiohttp.ClientSession() as session:
                out["http_by_vip"] = await get(session, "http://127.0.200.10/", "127.0.200.10")
                out["http_by_name"] = await get(
                    session, "http://127.0.200.10/", "web.default.svc.cluster.local"
                )
                # An HTTP port, but no service with this address: routed, and not found.
                unknown = await get(session, "http://127.0.200.99/", "127.0.200.99")
                out["http_unknown"] = unknown[0]
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.200.11", 7379), 5
            )
            writer.write(b"ping")
            await writer.drain()
            out["tcp"] = (await asyncio.wait_for(reader.read(100), 5)).decode()
            writer.close()
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.200.99", 5555), 5
                )
                writer.write(b"hello?")
                await writer.drain()
                out["unknown"] = (await asyncio.wait_for(reader.read(100), 5)).decode()
                writer.close()
            except (OSError, TimeoutError) as exc:
                out["unknown"] = f"error: {exc}"
        finally:
            server.close()
    return out


T_LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
