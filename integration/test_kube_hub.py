"""The hub runs the ``kubernetes`` registry kind (found through its entry point) and the CRD
config store as a component: ready only once both have synced, with their state on the debug
endpoints. This is how ``meshfed up`` runs them (``kube_config_components(mesh)``)."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp
from kubernetes import client as k8s

from adapters.kubernetes.configstore import kube_config_components
from adapters.kubernetes.testing import create_namespace, install_crds, service
from integration.peers.kube import KubeAPIServer
from meshfed.config import MeshConfig, RegistryConfig
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
        service_view = hub.aggregate.service(f"web.{ns}.svc.cluster.local")
        assert service_view is not None and service_view.registries == ("cluster-a",)
    finally:
        await hub.stop()
