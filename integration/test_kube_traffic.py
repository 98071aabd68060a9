"""Kubernetes services carry real traffic through Pilot and a real Envoy sidecar.

A real API server (no kubelet, no controllers) holds Services and Pods whose ``podIP`` is a
loopback address where a test backend listens; the Kubernetes registry adapter follows them into
an aggregate that Pilot serves to a client sidecar; requests go through that sidecar's outbound
listener by Host header and the backends count what arrives.

Hosts: 127.0.88.x (pods, VMs, the client sidecar).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
from kubernetes import client as k8s

from integration.peers.kube import KubeAPIServer
from integration.pilot_helpers import Mesh, eventually, get, running_mesh
from meshfed.adapters.kubernetes.testing import (
    create_namespace,
    create_pod,
    install_crds,
    kubectl,
    running_registry,
    service,
    set_pod_ready,
)
from meshfed.adapters.static.registry import StaticRegistry

CLIENT_IP = "127.0.88.2"
HTTP_PORT = [{"name": "http", "port": 80, "targetPort": 8080}]


def _ns(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def _spread(session: aiohttp.ClientSession, url: str, host: str, n: int = 24) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(n):
        status, body = await get(session, url + "/", host)
        seen[body if status == 200 else f"status {status}"] += 1
    return seen


async def _wait_backends(
    session: aiohttp.ClientSession, url: str, host: str, expected: set[str], what: str
) -> None:
    async def check() -> bool:
        return set(await _spread(session, url, host, 16)) == expected

    await eventually(check, 20, what, interval=0.2)


async def test_service_with_pods_follows_scaling_readiness_and_deletion(
    kube_apiserver: KubeAPIServer,
) -> None:
    core = k8s.CoreV1Api(kube_apiserver.api_client())
    ns = _ns("traffic")
    create_namespace(core, ns)
    host = f"web.{ns}.svc.cluster.local"
    async with running_mesh() as mesh:
        member = mesh.aggregate.add_member("kubernetes")
        pods = {name: f"127.0.88.{i}" for i, name in ((10, "web-a"), (11, "web-b"), (12, "web-c"))}
        for name, ip in pods.items():
            await mesh.backend(name, ip, 8080)
        core.create_namespaced_service(ns, service("web", HTTP_PORT, selector={"app": "web"}))
        create_pod(core, ns, "web-a", pods["web-a"], {"app": "web"}, service_account="web")
        create_pod(core, ns, "web-b", pods["web-b"], {"app": "web"}, service_account="web")
        async with running_registry(member, kube_apiserver.kubeconfig):
            eps = mesh.aggregate.endpoints(host)
            assert {e.address for e in eps} == {pods["web-a"], pods["web-b"]}
            assert {e.identity for e in eps} == {f"spiffe://cluster.local/ns/{ns}/sa/web"}
            client = await mesh.sidecar(CLIENT_IP, "client")
            url = client.outbound_url
            async with aiohttp.ClientSession() as session:
                await _wait_backends(session, url, host, {"web-a", "web-b"}, "two pods serving")

                # Scaling up: a third pod joins the rotation.
                create_pod(core, ns, "web-c", pods["web-c"], {"app": "web"})
                await _wait_backends(session, url, host, {"web-a", "web-b", "web-c"}, "scale up")

                # A pod turning not-ready leaves rotation; the registry keeps it as unhealthy.
                set_pod_ready(core, ns, "web-b", False)
                await _wait_backends(session, url, host, {"web-a", "web-c"}, "web-b not ready")
                healthy = {e.address: e.healthy for e in mesh.aggregate.endpoints(host)}
                assert healthy == {pods["web-a"]: True, pods["web-b"]: False, pods["web-c"]: True}
                hits_b = next(b for b in mesh.backends if b.name == "web-b").hits
                assert Counter(await _spread(session, url, host, 30)).keys() == {"web-a", "web-c"}
                assert next(b for b in mesh.backends if b.name == "web-b").hits == hits_b

                # Scaling down: a deleted pod is gone from the registry and from Envoy.
                core.delete_namespaced_pod("web-a", ns, grace_period_seconds=0)
                await _wait_backends(session, url, host, {"web-c"}, "web-a deleted")
                set_pod_ready(core, ns, "web-b", True)
                await _wait_backends(session, url, host, {"web-b", "web-c"}, "web-b ready again")

                # Deleting the Service removes it from the mesh: the Host no longer routes.
                core.delete_namespaced_service("web", ns)
                await _wait_backends(session, url, host, {"status 404"}, "service deleted")
                assert mesh.aggregate.service(host) is None


async def test_headless_statefulset_pod_hostname_reaches_that_pod(
    kube_apiserver: KubeAPIServer,
) -> None:
    core = k8s.CoreV1Api(kube_apiserver.api_client())
    ns = _ns("sts")
    create_namespace(core, ns)
    async with running_mesh() as mesh:
        member = mesh.aggregate.add_member("kubernetes")
        core.create_namespaced_service(
            ns,
            service(
                "db",
                [{"name": "http", "port": 80, "targetPort": "web"}],
                selector={"app": "db"},
                headless=True,
            ),
        )
        for i in range(3):
            ip = f"127.0.88.{20 + i}"
            await mesh.backend(f"db-{i}", ip, 8080 + i)
            create_pod(
                core,
                ns,
                f"db-{i}",
                ip,
                {"app": "db"},
                hostname=f"db-{i}",
                subdomain="db",
                # Named targetPort: each pod exposes "web" on its own number.
                container_ports=[{"name": "web", "containerPort": 8080 + i}],
            )
        async with running_registry(member, kube_apiserver.kubeconfig):
            svc = mesh.aggregate.service(f"db.{ns}.svc.cluster.local")
            assert svc is not None and svc.address is None and svc.headless
            client = await mesh.sidecar(CLIENT_IP, "client")
            async with aiohttp.ClientSession() as session:
                for i in range(3):
                    pod_host = f"db-{i}.db.{ns}.svc.cluster.local"
                    await _wait_backends(
                        session, client.outbound_url, pod_host, {f"db-{i}"}, pod_host
                    )
                # The service name itself spreads over every pod.
                await _wait_backends(
                    session,
                    client.outbound_url,
                    f"db.{ns}.svc.cluster.local",
                    {"db-0", "db-1", "db-2"},
                    "headless service name",
                )


async def test_kubectl_apply_and_delete_of_a_service_entry(
    kube_apiserver: KubeAPIServer, tmp_path: Path
) -> None:
    binary, kubeconfig = kube_apiserver.kubectl(), kube_apiserver.kubeconfig
    await asyncio.to_thread(install_crds, binary, kubeconfig)
    core = k8s.CoreV1Api(kube_apiserver.api_client())
    ns = _ns("se")
    create_namespace(core, ns)
    host = "billing.vm.example.internal"
    manifest = tmp_path / "billing.yaml"
    manifest.write_text(
        f"""apiVersion: networking.meshfed.io/v1alpha1
kind: ServiceEntry
metadata:
  name: billing
  namespace: {ns}
spec:
  hosts: [{host}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
    - number: 80
      name: http
      protocol: HTTP
  endpoints:
    - address: 127.0.88.30
      ports: {{http: 8080}}
      serviceAccount: billing
"""
    )
    async with running_mesh() as mesh:
        member = mesh.aggregate.add_member("kubernetes")
        await mesh.backend("billing-vm", "127.0.88.30", 8080)
        async with running_registry(member, kubeconfig):
            client = await mesh.sidecar(CLIENT_IP, "client")
            assert mesh.aggregate.service(host) is None
            done = kubectl(binary, kubeconfig, "apply", "-f", str(manifest))
            assert done.returncode == 0, done.stderr
            async with aiohttp.ClientSession() as session:
                await _wait_backends(
                    session, client.outbound_url, host, {"billing-vm"}, "ServiceEntry applied"
                )
                (ep,) = mesh.aggregate.endpoints(host)
                assert ep.identity == f"spiffe://cluster.local/ns/{ns}/sa/billing"
                assert mesh.aggregate.service(host).registries == ("kubernetes",)
                done = kubectl(binary, kubeconfig, "delete", "-f", str(manifest))
                assert done.returncode == 0, done.stderr
                await _wait_backends(
                    session, client.outbound_url, host, {"status 404"}, "ServiceEntry deleted"
                )
                assert mesh.aggregate.service(host) is None


async def test_one_service_spans_pods_and_a_static_vm(
    kube_apiserver: KubeAPIServer, tmp_path: Path
) -> None:
    """Mesh expansion: the same hostname from Kubernetes (a pod) and the static registry (a VM)."""
    core = k8s.CoreV1Api(kube_apiserver.api_client())
    ns = _ns("expand")
    create_namespace(core, ns)
    host = f"reviews.{ns}.svc.cluster.local"
    vm_file = tmp_path / "vm.yaml"
    vm_file.write_text(
        f"""apiVersion: networking.meshfed.io/v1alpha1
kind: ServiceEntry
metadata:
  name: reviews-vm
  namespace: {ns}
spec:
  hosts: [{host}]
  location: MESH_INTERNAL
  ports:
    - number: 80
      name: http
      protocol: HTTP
  endpoints:
    - address: 127.0.88.41
      ports: {{http: 9080}}
      labels: {{version: vm}}
"""
    )
    mesh = Mesh()
    kube_member = mesh.aggregate.add_member("kubernetes")
    static = StaticRegistry(mesh.aggregate.add_member("vms"), [vm_file], "cluster.local")
    async with _started(mesh):
        static.reload()
        await mesh.backend("reviews-pod", "127.0.88.40", 8080)
        await mesh.backend("reviews-vm", "127.0.88.41", 9080)
        core.create_namespaced_service(ns, service("reviews", HTTP_PORT, selector={"app": "rv"}))
        create_pod(core, ns, "reviews-1", "127.0.88.40", {"app": "rv", "version": "v1"})
        async with running_registry(kube_member, kube_apiserver.kubeconfig):
            merged = mesh.aggregate.service(host)
            assert merged is not None and merged.registries == ("kubernetes", "vms")
            sources = {e.address: e.registry for e in mesh.aggregate.endpoints(host)}
            assert sources == {"127.0.88.40": "kubernetes", "127.0.88.41": "vms"}
            client = await mesh.sidecar(CLIENT_IP, "client")
            async with aiohttp.ClientSession() as session:
                await _wait_backends(
                    session, client.outbound_url, host, {"reviews-pod", "reviews-vm"}, "both"
                )


class _started:
    """``running_mesh`` for a Mesh built (and given members) beforehand."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh

    async def __aenter__(self) -> Mesh:
        await self.mesh.start()
        return self.mesh

    async def __aexit__(self, *exc: object) -> None:
        await self.mesh.stop()


async def test_kubectl_apply_and_delete_of_a_route_rule_moves_traffic(
    kube_apiserver: KubeAPIServer, tmp_path: Path
) -> None:
    """Istio 0.2's RouteRule, as written, through kubectl: Envoy follows apply and delete."""
    from integration.pilot_helpers import Mesh
    from meshfed.configstores import routing_store_from_params

    binary, kubeconfig = kube_apiserver.kubectl(), kube_apiserver.kubeconfig
    await asyncio.to_thread(install_crds, binary, kubeconfig)
    core = k8s.CoreV1Api(kube_apiserver.api_client())
    ns = _ns("rr")
    create_namespace(core, ns)
    host = f"reviews.{ns}.svc.cluster.local"
    manifest = tmp_path / "rule.yaml"
    manifest.write_text(
        f"""apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata:
  name: reviews-v2
  namespace: {ns}
spec:
  destination:
    name: reviews
  precedence: 1
  route:
    - labels:
        version: v2
"""
    )
    store = routing_store_from_params({"kubeconfig": str(kubeconfig), "namespaces": [ns]})
    store_task = asyncio.create_task(store.run())
    mesh = Mesh()
    mesh.pilot.config_stores.append(store)
    try:
        await store.wait_synced(30)
        await mesh.start()
        member = mesh.aggregate.add_member("kubernetes")
        for version, ip in (("v1", "127.0.88.40"), ("v2", "127.0.88.41")):
            await mesh.backend(f"reviews-{version}", ip, 8080)
            create_pod(core, ns, f"reviews-{version}", ip, {"app": "reviews", "version": version})
        core.create_namespaced_service(
            ns, service("reviews", HTTP_PORT, selector={"app": "reviews"})
        )
        async with running_registry(member, kubeconfig):
            client = await mesh.sidecar(CLIENT_IP, "client")
            url = client.outbound_url
            async with aiohttp.ClientSession() as session:
                both = {"reviews-v1", "reviews-v2"}
                await _wait_backends(session, url, host, both, "both versions")
                done = kubectl(binary, kubeconfig, "apply", "-f", str(manifest))
                assert done.returncode == 0, done.stderr
                await _wait_backends(session, url, host, {"reviews-v2"}, "RouteRule applied")
                assert set(await _spread(session, url, host, 30)) == {"reviews-v2"}
                done = kubectl(binary, kubeconfig, "delete", "-f", str(manifest))
                assert done.returncode == 0, done.stderr
                await _wait_backends(session, url, host, both, "RouteRule deleted")
    finally:
        store.stop()
        await asyncio.wait_for(store_task, 10)
        await mesh.stop()
