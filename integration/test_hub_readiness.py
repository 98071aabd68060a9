"""A registry that is down when the hub starts cannot hold the control plane hostage.

``meshfed up`` federates the static registry and a real Consul that is not running yet. Until
``spec.initialSyncTimeout`` passes the hub says not ready (Consul has not synced); after it the
hub is ready (HTTP ``/healthz/ready`` 200, Pilot's gRPC health SERVING) and serves the static
registry, with Consul listed as degraded and late in ``/healthz/ready``, ``/debug/registryz``,
``/metrics`` and ``meshfed registry list``. When Consul starts, its services are merged in and
the degraded reason is withdrawn. Hosts: 127.<run>.88.x; Consul instances 127.0.88.x (data).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from integration.peers.consul import ConsulAgent, reserve_dev_agent, start_dev_agent
from integration.pilot_helpers import addr
from meshfed.sidecar import wait_hub_ready

ROOT = Path(__file__).resolve().parents[1]
HOST = addr(88, 1)
SERVICES = ROOT / "meshfed" / "defaults" / "services.yaml"
TIMEOUT_S = 6.0
WEB = "web.service.consul"
STATIC_HOST = "reviews.default.svc.cluster.local"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _mesh(tmp_path: Path, consul: ConsulAgent, monitoring: int, discovery: int) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    path = tmp_path / "mesh.yaml"
    path.write_text(
        "apiVersion: meshfed.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: m}\nspec:\n"
        f"  initialSyncTimeout: {TIMEOUT_S:g}s\n"
        f"  listen: {{monitoring: '{HOST}:{monitoring}', discovery: '{HOST}:{discovery}'}}\n"
        f"  configPaths: [{rules}]\n"
        "  registries:\n"
        f"    - {{name: vms, kind: static, paths: [{SERVICES}]}}\n"
        f"    - {{name: consul, kind: consul, addresses: ['{consul.http_addr}'], wait: 5s}}\n"
    )
    return path


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as response:
        text = await response.text()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text


async def _until(check: Any, what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, OSError):
            value = await check()
            if value:
                return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def _grpc_health(discovery: int) -> int:
    async with grpc.aio.insecure_channel(f"{HOST}:{discovery}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        return int(reply.status)


async def _cli(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshfed.cli", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _register(agent: ConsulAgent) -> None:
    body = {
        "Node": "vm-web-1",
        "Address": "127.0.88.1",
        "Service": {"Service": "web", "ID": "web-1", "Port": 8080},
    }
    agent.client().catalog.register(body["Node"], body["Address"], service=body["Service"])


async def test_the_hub_serves_without_a_late_consul_and_merges_it_when_it_arrives(
    tmp_path: Path,
) -> None:
    consul = reserve_dev_agent(tmp_path / "consul")  # ports chosen, nothing listening yet
    monitoring, discovery = _free_port(), _free_port()
    env = {**os.environ, "MESHFED_WORKLOAD_STATE": ""}
    started = time.monotonic()
    hub_log = (tmp_path / "hub.log").open("wb")  # a file: a pipe nobody reads could fill
    hub = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshfed.cli", "up", "--config",
        str(_mesh(tmp_path, consul, monitoring, discovery)),
        stdout=asyncio.subprocess.DEVNULL, stderr=hub_log, env=env,
    )  # fmt: skip
    base = f"http://{HOST}:{monitoring}"
    consul_running = contextlib.ExitStack()
    proxy_stop = threading.Event()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:

            async def first_answer() -> tuple[int, Any] | None:
                return await _get(session, f"{base}/healthz/ready")

            status, body = await _until(first_answer, "the monitoring port", 30)
            # What `meshfed proxy` does before waiting for its own config.
            proxy_waits = asyncio.create_task(
                asyncio.to_thread(wait_hub_ready, base, 60, proxy_stop)
            )
            if time.monotonic() - started < TIMEOUT_S - 1:  # still inside the timeout
                assert status == 503, body
                assert "registry consul has not synced" in body["not_ready"], body
                await asyncio.sleep(0.5)
                assert not proxy_waits.done()

            async def ready() -> Any:
                status, body = await _get(session, f"{base}/healthz/ready")
                return body if status == 200 else None

            body = await _until(ready, "readiness after the initial-sync timeout", 60)
            assert time.monotonic() - started >= TIMEOUT_S - 0.5
            await asyncio.wait_for(proxy_waits, 5)  # the proxy is let go with the hub
            assert any("registry consul degraded" in r for r in body["degraded"]), body
            assert any("registry consul initial sync late" in r for r in body["degraded"]), body
            assert await _grpc_health(discovery) == health_pb2.HealthCheckResponse.SERVING

            _, view = await _get(session, f"{base}/debug/registryz")
            members = {m["name"]: m for m in view["members"]}
            assert members["consul"]["late"] and not members["consul"]["synced"]
            assert members["consul"]["degraded"]  # the adapter's reason: connection refused
            assert members["vms"]["synced"] and not members["vms"]["late"]
            hosts = {s["hostname"] for s in view["services"]}
            assert STATIC_HOST in hosts and WEB not in hosts
            _, metrics = await _get(session, f"{base}/metrics")
            assert 'meshfed_registry_degraded{kind="consul",registry="consul"} 1.0' in metrics
            assert 'meshfed_registry_synced{kind="consul",registry="consul"} 0.0' in metrics
            assert 'meshfed_registry_initial_sync_timeouts_total{registry="consul"} 1.0' in metrics
            code, out, err = await _cli("registry", "list", "--hub", base)
            assert code == 0 and STATIC_HOST in out, (out, err)
            assert "registry consul degraded (late: not synced yet)" in err, err

            # Consul arrives: its services are merged in, the lateness is withdrawn.
            await asyncio.to_thread(
                consul_running.enter_context, start_dev_agent(tmp_path / "consul", agent=consul)
            )
            await asyncio.to_thread(_register, consul)

            async def merged() -> Any:
                _, view = await _get(session, f"{base}/debug/registryz")
                web = [s for s in view["services"] if s["hostname"] == WEB]
                member = next(m for m in view["members"] if m["name"] == "consul")
                if web and member["synced"] and member["degraded"] is None:
                    return web[0]
                return None

            web = await _until(merged, "Consul's services in the merged view", 90)
            assert [e["address"] for e in web["endpoints"]] == ["127.0.88.1"]
            assert web["endpoints"][0]["registry"] == "consul"
            status, body = await _get(session, f"{base}/healthz/ready")
            assert status == 200 and body["degraded"] == [], body
            code, out, err = await _cli("registry", "list", "--hub", base)
            assert code == 0 and WEB in out and "degraded" not in err, (out, err)
    finally:
        proxy_stop.set()
        if hub.returncode is None:
            hub.send_signal(signal.SIGTERM)
        await asyncio.wait_for(hub.wait(), 40)
        hub_log.close()
        await asyncio.to_thread(consul_running.close)
    log = (tmp_path / "hub.log").read_text()
    assert hub.returncode == 0, log
    assert "Traceback" not in log, log


async def test_an_unreachable_kubernetes_cluster_holds_readiness_only_until_the_timeout(
    tmp_path: Path,
) -> None:
    """A dead cluster is a registry and a CRD config store: neither keeps the hub out of
    service past ``initialSyncTimeout``."""
    import yaml

    from meshfed.config import MeshConfig, RegistryConfig
    from meshfed.configstores import kube_config_components
    from meshfed.hub import Hub

    server = f"https://{HOST}:{_free_port()}"  # nothing listens there
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "gone",
                        "cluster": {"server": server, "insecure-skip-tls-verify": True},
                    }
                ],
                "users": [{"name": "u", "user": {"token": "x"}}],
                "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u"}}],
                "current-context": "gone",
            }
        )
    )
    mesh = MeshConfig(
        monitoring_address=f"{HOST}:0",
        initial_sync_timeout=3.0,
        registries=(
            RegistryConfig("vms", "static", {"paths": [str(SERVICES)]}),
            RegistryConfig("gone", "kubernetes", {"kubeconfig": str(kubeconfig)}),
        ),
    )
    hub = Hub(mesh, list(kube_config_components(mesh)))
    started = time.monotonic()
    await hub.start()
    try:
        base = f"http://{HOST}:{hub.monitoring_port}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            status, body = await _get(session, f"{base}/healthz/ready")
            assert time.monotonic() - started < 2.5  # still inside the timeout
            assert status == 503, body
            assert "registry gone has not synced" in body["not_ready"], body
            assert "config store gone has not synced" in body["not_ready"], body

            async def ready() -> Any:
                status, body = await _get(session, f"{base}/healthz/ready")
                return body if status == 200 else None

            body = await _until(ready, "readiness after the initial-sync timeout", 20)
            assert time.monotonic() - started >= 2.9
            assert any("registry gone" in r for r in body["degraded"]), body
            _, view = await _get(session, f"{base}/debug/registryz")
            assert STATIC_HOST in {s["hostname"] for s in view["services"]}
            _, configz = await _get(session, f"{base}/debug/configz/gone")
            assert configz["synced"] is False
    finally:
        await hub.stop()
