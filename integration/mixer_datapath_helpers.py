"""A hub with Mixer in the data path, real Envoy sidecars and a gateway, each with its
node-local Mixer client, and real backends on distinct loopback addresses.

The hub is the real one (``meshfed.hub.Hub`` with ``default_components``): a static registry
from a file, Pilot with the Mixer listener plugin, Mixer with its config folder; only the
listen addresses are port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import attrs

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
        registries: tuple[RegistryConfig, ...] = (),
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
            registries=(
                RegistryConfig("files", "static", {"paths": [str(folder / "registry")]}),
                *registries,
            ),
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
        mixer_address: str = "",
        report_batch: int = 1000,
    ) -> EnvoyProcess:
        """A sidecar (or, with ``gateway_port``, an ingress gateway) with its Mixer client,
        which calls this hub's Mixer unless ``mixer_address`` names another one."""
        socket = self.folder / f"mixer-{ip}" / "mixer.sock"
        if mixer_client:
            client = MixerClient(
                socket,
                mixer_address or f"127.0.0.1:{self.mixer.port}",
                cache_entries=self.cache_entries,
                report_batch=report_batch,
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
    registries: tuple[RegistryConfig, ...] = (),
) -> AsyncIterator[DataPathMesh]:
    mesh = DataPathMesh(
        folder,
        services,
        policy,
        data_path or DataPathSettings(),
        cache_entries,
        mixer_listen=mixer_listen,
        tracing=tracing,
        registries=registries,
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


ROOT = Path(__file__).resolve().parents[1]


async def run_cli(*args: str, timeout: float = 30) -> tuple[int, str]:
    """``meshfed ARGS`` as a user runs it: exit code and output (stderr folded in)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshfed.cli", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode()


@contextlib.asynccontextmanager
async def cli_proxy(*args: str, ready_within: float = 40) -> AsyncIterator[list[str]]:
    """A real ``meshfed proxy ARGS`` process; yields its output lines once it says ``ready:``
    and, on exit, stops it with SIGTERM and checks it ended cleanly (exit code 0)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshfed.cli", "proxy", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        async with asyncio.timeout(ready_within):
            while not (lines and lines[-1].startswith("ready:")):
                line = (await proc.stdout.readline()).decode()  # type: ignore[union-attr]
                assert line, f"meshfed proxy exited early: {''.join(lines)}"
                lines.append(line)
        yield lines
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


def request_count(text: str, source: str, destination: str, code: int) -> float:
    """The ``prometheus`` handler's ``request_count`` for one source, destination and code,
    summed over its other labels, from a ``/metrics`` scrape."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith("istio_request_count_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        if (labels.get("source_service"), labels.get("destination_service")) == (
            source,
            destination,
        ) and labels.get("response_code") == str(code):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def load(
    url: str,
    host: str,
    count: int,
    concurrency: int = 8,
    path: Callable[[int], str] = lambda i: "/",
    headers: Callable[[int], dict[str, str]] = lambda i: {},
    within: float = 120.0,
) -> list[int]:
    """``count`` requests (bounded in number and in time: ``within`` seconds) from
    ``concurrency`` workers on keep-alive connections; the status of each, in request order."""
    codes = [0] * count
    next_index = iter(range(count))
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            for i in next_index:
                async with session.get(
                    url + path(i), headers={"Host": host, **headers(i)}
                ) as response:
                    await response.read()
                    codes[i] = response.status

        async with asyncio.timeout(within):
            await asyncio.gather(*(worker() for _ in range(concurrency)))
    return codes


async def paced(url: str, host: str, rate: float, seconds: float) -> list[tuple[float, int]]:
    """Requests started at a steady ``rate`` per second for ``seconds`` (each on its own task,
    so a slow answer does not delay the next start); (start offset, status) of each."""
    count = int(rate * seconds)
    connector = aiohttp.TCPConnector(limit=64)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def one(i: int) -> tuple[float, int]:
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
            began = loop.time() - start
            async with session.get(url, headers={"Host": host}) as response:
                await response.read()
                return began, response.status

        async with asyncio.timeout(seconds + 30):
            return list(await asyncio.gather(*(one(i) for i in range(count))))


def stdio_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines a ``stdio`` handler wrote to ``path`` (none yet: an empty list)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@attrs.frozen
class HubProcess:
    """A running ``meshfed up``: its Mixer's and monitoring addresses, and its process id."""

    address: str
    monitoring: str
    pid: int

    def cpu_seconds(self) -> float:
        """User + system CPU the hub process has used so far (Linux ``/proc``)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class MixerHubProcess:
    """``meshfed up`` serving only Mixer (``policy`` its config folder) on ``host:port`` and
    its monitoring on ``host:monitoring``: started, killed and started again on the same
    addresses, as an operator's supervisor restarts a hub."""

    def __init__(self, folder: Path, host: str, policy: Path, registry: Path | None = None) -> None:
        from integration.routing_helpers import free_port

        self.folder, self.host = folder, host
        self.port, self.monitoring_port = free_port(), free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "mesh.yaml"
        self.config.write_text(
            "apiVersion: meshfed.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: m}\nspec:\n"
            f"  listen: {{monitoring: '{host}:{self.monitoring_port}', discovery: '{host}:0'}}\n"
            f"  mixer: {{enabled: true, listen: '{host}:{self.port}', configPaths: ['{policy}'],"
            " kubernetes: false}\n"
            # a registry: Mixer learns source.service and its labels from the source's address
            + (f"  registries:\n  - {{name: files, kind: static, paths: ['{registry}']}}\n"
               if registry is not None else "")
        )  # fmt: skip
        self.proc: asyncio.subprocess.Process | None = None
        self.runs = 0
        self.log_path = folder / "hub-0.log"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def info(self) -> HubProcess:
        assert self.proc is not None
        return HubProcess(self.address, f"{self.host}:{self.monitoring_port}", self.proc.pid)

    async def start(self) -> None:
        """A new process (its own log file), returning once Mixer's gRPC health is SERVING."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        self.log_path = self.folder / f"hub-{self.runs}.log"
        self.runs += 1
        with self.log_path.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "meshfed.cli", "up", "--config", str(self.config),
                cwd=ROOT, stdout=log, stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "MESHFED_WORKLOAD_STATE": ""}, start_new_session=True,
            )  # fmt: skip
        proc = self.proc
        async with grpc.aio.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service="istio.mixer.v1.Mixer")
            deadline = time.monotonic() + 30
            while True:
                assert proc.returncode is None, self.log_path.read_text()
                assert time.monotonic() < deadline, "the hub did not serve Mixer in 30 s"
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await health.Check(request, timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                await asyncio.sleep(0.2)

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and wait for the process to end; its exit code (after SIGTERM it must
        be 0 and its log free of tracebacks)."""
        assert self.proc is not None and self.proc.returncode is None
        self.proc.send_signal(sig)
        code = await asyncio.wait_for(self.proc.wait(), 15)
        if sig == signal.SIGTERM:
            text = self.log_path.read_text()
            assert code == 0, text
            assert "Traceback" not in text, text
        return code

    async def close(self) -> None:
        """Kill what is still running (a failed test's cleanup)."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()

    async def metrics(self) -> str:
        url = f"http://{self.host}:{self.monitoring_port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return await response.text()


@contextlib.asynccontextmanager
async def mixer_hub_process(folder: Path, host: str, policy: Path) -> AsyncIterator[HubProcess]:
    """Another hub, as ``meshfed up`` runs it, serving only Mixer (``policy`` its config
    folder) on ``host``; yields it once Mixer's gRPC health says SERVING, and checks on exit
    that it stopped cleanly on SIGTERM."""
    hub = MixerHubProcess(folder, host, policy)
    try:
        await hub.start()
        yield hub.info
        await hub.stop(signal.SIGTERM)
    finally:
        await hub.close()


# -- policies the data-path tests share (Istio 0.2's config kinds, as its users write them) --
WEB_HOST = "web.default.svc.cluster.local"
API_HOST = "api.default.svc.cluster.local"

# A denier on web: Checks for it answer PERMISSION_DENIED ("web is closed today").
DENY_WEB = f"""
apiVersion: config.istio.io/v1alpha2
kind: denier
metadata: {{name: closed, namespace: istio-system}}
spec:
  status: {{code: 7, message: web is closed today}}
---
apiVersion: config.istio.io/v1alpha2
kind: checknothing
metadata: {{name: nothing, namespace: istio-system}}
spec:
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {{name: deny-web, namespace: istio-system}}
spec:
  match: destination.service == "{WEB_HOST}"
  actions:
  - handler: closed.denier
    instances: [nothing.checknothing]
"""

# Istio 0.2's requestcount metric, by source, destination and response code, in the
# prometheus handler (request_count) for every HTTP request.
REQUEST_COUNT = """
apiVersion: config.istio.io/v1alpha2
kind: metric
metadata: {name: requestcount, namespace: istio-system}
spec:
  value: "1"
  dimensions:
    source_service: source.service | "unknown"
    destination_service: destination.service | "unknown"
    response_code: response.code | 200
---
apiVersion: config.istio.io/v1alpha2
kind: prometheus
metadata: {name: handler, namespace: istio-system}
spec:
  metrics:
  - name: request_count
    instance_name: requestcount.metric.istio-system
    kind: COUNTER
    label_names: [source_service, destination_service, response_code]
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: promhttp, namespace: istio-system, labels: {istio-protocol: http}}
spec:
  actions:
  - handler: handler.prometheus
    instances: [requestcount.metric]
"""

# A memquota of 10 requests a second on api (the rule's quota is asked for in each Check).
MEMQUOTA_API = f"""
apiVersion: config.istio.io/v1alpha2
kind: quota
metadata: {{name: requestcount, namespace: istio-system}}
spec:
  dimensions:
    destination: destination.service | "unknown"
---
apiVersion: config.istio.io/v1alpha2
kind: memquota
metadata: {{name: limit, namespace: istio-system}}
spec:
  quotas:
  - {{name: requestcount.quota.istio-system, maxAmount: 10, validDuration: 1s}}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {{name: quota-api, namespace: istio-system}}
spec:
  match: destination.service == "{API_HOST}"
  actions:
  - handler: limit.memquota
    instances: [requestcount.quota]
"""
