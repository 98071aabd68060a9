"""A hub with Mixer in the data path, real Envoy sidecars and a gateway, each with its
node-local Mixer client, and real backends on distinct loopback addresses.

The hub is the real one (``meshfed.hub.Hub`` with ``default_components``): a static registry
from a file, Pilot with the Mixer listener plugin, Mixer with its config folder; only the
listen addresses are port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from integration.routing_helpers import VersionBackend
from meshfed.config import MeshConfig, RegistryConfig
from meshfed.core.tracing import DISABLED, TracingSettings, tracer_provider
from meshfed.hub import Hub, default_components
from meshfed.mixer.component import Mixer
from meshfed.mixer.settings import DataPathSettings, MixerSettings
from meshfed.nodeagent.mixerclient.server import MixerClient
from meshfed.pilot.mixer_plugin import MixerPlugin
from meshfed.pilot.server import PilotServer
from meshfed.proxy import EnvoyProcess, ProxySpec, wait_ready


def workload(name: str, host: str, address: str, port: int, protocol: str = "HTTP") -> str:
    """A ServiceEntry with one endpoint: the sidecar's inbound ``port`` at ``address``."""
    return f"""---
apiVersion: networking.meshfed.io/v1alpha1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{host}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {port}, name: {protocol.lower()}, protocol: {protocol}}}]
  endpoints:
  - address: {address}
    ports: {{{protocol.lower()}: {port}}}
    labels: {{app: {name}, version: v1}}
"""


class DataPathMesh:
    """The hub, and the sidecars / gateway / backends a test starts (all stopped by stop())."""

    def __init__(
        self,
        folder: Path,
        services: str,
        policy: str,
        data_path: DataPathSettings,
        cache_entries: int = 10_000,
        pilot: dict[str, Any] | None = None,
        mixer_listen: str = "127.0.0.1:0",
        tracing: TracingSettings = DISABLED,
    ):
        self.folder = folder
        self.cache_entries = cache_entries
        (folder / "registry").mkdir(parents=True)
        (folder / "mixer").mkdir()
        (folder / "registry" / "services.yaml").write_text(services)
        self.write_policy(policy)
        self.mesh = MeshConfig(
            monitoring_address="127.0.0.1:0",
            discovery_address="127.0.0.1:0",
            registries=(RegistryConfig("files", "static", {"paths": [str(folder / "registry")]}),),
            config_paths=(str(folder / "registry"),),
            pilot={"debounceQuiet": 0.02, "debounceMax": 0.2, **(pilot or {})},
            mixer=MixerSettings(
                enabled=True,
                listen=mixer_listen,
                config_paths=(str(folder / "mixer"),),
                kubernetes=False,
                data_path=data_path,
            ),
            tracing=tracing,
        )
        self.hub = Hub(self.mesh, default_components(self.mesh))
        self.envoys: list[EnvoyProcess] = []
        self.clients: list[MixerClient] = []
        self.backends: list[Any] = []
        self._restarted: list[Mixer] = []
        # the clients' own Check spans, as `meshfed proxy --mixer-trace-collector` makes them
        self.client_traces = tracer_provider(tracing, "mixer-client") if tracing.enabled else None

    def write_policy(self, text: str) -> None:
        tmp = self.folder / "mixer" / ".policy.tmp"
        tmp.write_text(text)
        tmp.rename(self.folder / "mixer" / "policy.yaml")

    @property
    def pilot(self) -> PilotServer:
        return next(c for c in self.hub.components if isinstance(c, PilotServer))

    async def restart_mixer(self) -> Mixer:
        """A new Mixer component on the old one's address (the old one already stopped)."""
        old = self.mixer
        new = Mixer(self.mesh.mixer, tracing=self.mesh.tracing)
        await new.start(self.hub)
        # the hub's lifecycle stops the component it started, so this one is stopped by stop()
        self.hub.components[self.hub.components.index(old)] = new
        self._restarted.append(new)
        return new

    @property
    def mixer(self) -> Mixer:
        return next(c for c in self.hub.components if isinstance(c, Mixer))

    @property
    def plugin(self) -> MixerPlugin:
        assert self.pilot.plugins is not None
        return next(p for p in self.pilot.plugins if isinstance(p, MixerPlugin))

    @property
    def hub_url(self) -> str:
        return f"http://127.0.0.1:{self.hub.monitoring_port}"

    async def start(self) -> None:
        await self.hub.start()
        await eventually(self._mixer_loaded, 15, "Mixer to load its config")

    async def _mixer_loaded(self) -> bool:
        return not self.mixer.not_ready() and self.mixer.problems() == []

    async def proxy(
        self,
        ip: str,
        workload: str,
        app_ports: str = "",
        gateway_port: int = 0,
        mixer_client: bool = True,
    ) -> EnvoyProcess:
        """A sidecar (or, with ``gateway_port``, an ingress gateway) with its Mixer client."""
        socket = self.folder / f"mixer-{ip}" / "mixer.sock"
        if mixer_client:
            client = MixerClient(
                socket,
                f"127.0.0.1:{self.mixer.port}",
                cache_entries=self.cache_entries,
                report_delay=0.1,
                tracer=self.client_traces.get_tracer("meshfed.mixerclient")
                if self.client_traces is not None
                else None,
            )
            await client.start()
            self.clients.append(client)
        spec = ProxySpec(
            ip=ip,
            workload=workload,
            app_ports=app_ports,
            pilot=f"127.0.0.1:{self.pilot.port}",
            mixer_socket=str(socket) if mixer_client else "",
            role="router" if gateway_port else "sidecar",
            outbound_http_port=gateway_port or 15001,
        )
        envoy = EnvoyProcess(spec)
        self.envoys.append(envoy)
        await envoy.start()
        await wait_ready(envoy, self.hub_url, timeout=30)
        return envoy

    async def backend(self, name: str, address: str, port: int) -> VersionBackend:
        b = VersionBackend(name, address, port)
        await b.start()
        self.backends.append(b)
        return b

    async def stop(self) -> None:
        for envoy in self.envoys:
            with contextlib.suppress(Exception):
                await envoy.stop()
        for client in self.clients:
            with contextlib.suppress(Exception):
                await client.stop()
        for b in self.backends:
            with contextlib.suppress(Exception):
                await b.stop()
        for mixer in self._restarted:
            with contextlib.suppress(Exception):
                await mixer.stop()
        await self.hub.stop()
        if self.client_traces is not None:
            await asyncio.to_thread(self.client_traces.shutdown)

    async def problems(self, envoy: EnvoyProcess) -> list[str]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{self.hub_url}/debug/syncz", params={"proxy": envoy.spec.node_id}
            ) as response,
        ):
            (entry,) = (await response.json())["proxies"]
        return list(entry.get("problems", []))

    async def metrics(self) -> str:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.hub_url}/metrics") as response,
        ):
            return await response.text()


@contextlib.asynccontextmanager
async def datapath_mesh(
    folder: Path,
    services: str,
    policy: str,
    data_path: DataPathSettings | None = None,
    cache_entries: int = 10_000,
    mixer_listen: str = "127.0.0.1:0",
    tracing: TracingSettings = DISABLED,
) -> AsyncIterator[DataPathMesh]:
    mesh = DataPathMesh(
        folder,
        services,
        policy,
        data_path or DataPathSettings(),
        cache_entries,
        mixer_listen=mixer_listen,
        tracing=tracing,
    )
    try:
        await mesh.start()
        yield mesh
    finally:
        await mesh.stop()


async def eventually(
    probe: Callable[[], Awaitable[bool]], timeout: float, what: str, every: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
            if await probe():
                return
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(every)


async def call(
    url: str, host: str, path: str = "/", headers: dict[str, str] | None = None
) -> tuple[int, str]:
    """One request on a new connection (a replaced listener drains the old ones)."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(
            url + path,
            headers={"Host": host, **(headers or {})},
            timeout=aiohttp.ClientTimeout(total=10),
        ) as response,
    ):
        return response.status, await response.text()
