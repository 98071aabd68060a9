"""The hub runs the ``kubernetes`` registry kind (found through its entry point) and the CRD
config store as a component: ready only once both have synced, with their state on the debug
endpoints. This is how ``meshfed up`` runs them (``kube_config_components(mesh)``)."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import aiohttp
import yaml
from kubernetes import client as k8s

from integration.peers.kube import KubeAPIServer
from integration.peers.ports import free_ports
from meshfed.adapters.kubernetes.testing import create_namespace, install_crds, service
from meshfed.config import MeshConfig, RegistryConfig
from meshfed.configstores import kube_config_components
from meshfed.hub import Hub


async def test_hub_runs_the_kubernetes_registry_and_config_store(
    kube_apiserver: KubeAPIServer,
) -> None:
    install_crds(kube_apiserver.kubectl(), kube_apiserver.kubeconfig)
    core = k8s.CoreV1Api(kube_apiserver.api_client())
    ns = f"hub-{uuid.uuid4().hex[:6]}"
    create_namespace(core, ns)
    core.create_namespaced_service(ns, service("web", [{"name": "http-web", "port": 80}]))
    params = {"kubeconfig": str(kube_apiserver.kubeconfig), "namespaces": [ns]}
    mesh = MeshConfig(
        monitoring_address="127.0.0.1:0",
        registries=(RegistryConfig("cluster-a", "kubernetes", params),),
    )
    components = kube_config_components(mesh)
    assert len(components) == 1
    hub = Hub(mesh, list(components))
    await hub.start()
    try:
        base = f"http://127.0.0.1:{hub.monitoring_port}"
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                async with session.get(f"{base}/healthz/ready") as response:
                    return response.status == 200

            deadline = time.monotonic() + 30
            while not await ready():
                assert time.monotonic() < deadline, "hub not ready after 30s"
                await asyncio.sleep(0.1)
            async with session.get(f"{base}/debug/registryz") as response:
                view = await response.json()
            text = str(view)
            assert f"web.{ns}.svc.cluster.local" in text
            assert "resourceVersion" in text  # the adapter's describe(): its watches
            async with session.get(f"{base}/debug/configz/cluster-a") as response:
                config = await response.json()
            assert config["synced"] is True and config["namespaces"]["names"] == [ns]
            async with session.get(f"{base}/metrics") as response:
                metrics = await response.text()
            assert (
                'meshfed_kube_listed_objects{registry="cluster-a",resource="services"}' in metrics
            )
        service_view = hub.aggregate.service(f"web.{ns}.svc.cluster.local")
        assert service_view is not None and service_view.registries == ("cluster-a",)
    finally:
        await hub.stop()


async def test_hub_with_an_unreachable_cluster_is_degraded_not_crashed(tmp_path: Path) -> None:
    """Nothing listens where the kubeconfig points: the hub runs, not ready, the member degraded."""
    (port,) = free_ports(1, "127.0.89.70")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "gone",
                        "cluster": {
                            "server": f"https://127.0.89.70:{port}",
                            "insecure-skip-tls-verify": True,
                        },
                    }
                ],
                "users": [{"name": "u", "user": {"token": "x"}}],
                "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u"}}],
                "current-context": "gone",
            }
        )
    )
    mesh = MeshConfig(
        monitoring_address="127.0.0.1:0",
        registries=(RegistryConfig("gone", "kubernetes", {"kubeconfig": str(kubeconfig)}),),
    )
    hub = Hub(mesh, list(kube_config_components(mesh)))
    await hub.start()
    try:
        member = hub.aggregate.members[0]
        deadline = time.monotonic() + 20
        while member.degraded is None:
            assert time.monotonic() < deadline, "member never marked degraded"
            await asyncio.sleep(0.1)
        assert "refused" in member.degraded
        base = f"http://127.0.0.1:{hub.monitoring_port}"
        async with aiohttp.ClientSession() as session, session.get(f"{base}/healthz/ready") as r:
            body = await r.json()
        assert r.status == 503
        assert "registry gone has not synced" in body["not_ready"]
        assert "config store gone has not synced" in body["not_ready"]
        assert body["degraded"] and "refused" in body["degraded"][0]
    finally:
        await hub.stop()
