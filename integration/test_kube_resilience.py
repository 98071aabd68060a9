"""The registry's watches survive an API-server restart, and a real ``410 Gone`` relists exactly.

Both need a server this test may stop, so it starts its own (function-scoped) kube-apiserver with
etcd through the harness. A genuine 410 needs a resource version the server has forgotten: the
API server's watch cache serves old versions from memory for a long while, so the second half
restarts the API server with ``--watch-cache=false`` and compacts etcd; a watch from a version
older than the compaction then gets ``410 Gone`` from the real server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.request
from pathlib import Path

from kubernetes import client as k8s

from integration.peers.kube import KubeAPIServer, start_kube_apiserver
from integration.peers.process import PeerProcess
from meshfed.adapters.kubernetes.testing import (
    create_namespace,
    endpoint_slice,
    install_crds,
    running_registry,
    service,
    slice_endpoint,
    until,
)
from meshfed.registry.aggregate import AggregateRegistry
from meshfed.registry.events import ChangeEvent

HTTP = [{"name": "http", "port": 80, "targetPort": 8080}]
SLICE_PORTS = [{"name": "http", "port": 8080}]
NS = "resilience"
VM_HOST = "vm.resilience.example.internal"


def _etcd(server: KubeAPIServer, path: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        f"{server.etcd.client_url}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def compact_etcd(server: KubeAPIServer) -> int:
    """Compact etcd at its current revision (through etcd's own JSON gateway)."""
    head = _etcd(server, "/v3/kv/range", {"key": base64.b64encode(b"/").decode()})
    revision = int(head["header"]["revision"])  # type: ignore[index]
    _etcd(server, "/v3/kv/compaction", {"revision": str(revision), "physical": True})
    return revision


def _ready(server: KubeAPIServer, process: PeerProcess) -> None:
    def answers() -> bool:
        k8s.CoreV1Api(server.api_client()).read_namespace("default", _request_timeout=3)
        return True

    process.wait_until(answers, "for the restarted API server", 120, 0.5)


def _state(aggregate: AggregateRegistry) -> dict[str, object]:
    return {
        host: (svc, aggregate.endpoints(host))
        for host, svc in aggregate.services().items()
        if svc.namespace == NS or host == VM_HOST
    }


async def test_restart_then_a_real_410_relist(tmp_path: Path) -> None:
    with start_kube_apiserver(tmp_path / "kube", host="127.0.89.50") as server:
        core = k8s.CoreV1Api(server.api_client())
        discovery = k8s.DiscoveryV1Api(server.api_client())
        create_namespace(core, NS)
        for name in ("keep", "drop", "change"):
            core.create_namespaced_service(NS, service(name, HTTP))
            discovery.create_namespaced_endpoint_slice(
                NS, endpoint_slice(name, name, SLICE_PORTS, [slice_endpoint("192.0.2.40")])
            )
        # A ServiceEntry custom resource: after a restart the API server serves custom resources
        # only once it has re-read their CRDs; that window must not remove the entry's service.
        await asyncio.to_thread(install_crds, server.kubectl(), server.kubeconfig)
        k8s.CustomObjectsApi(server.api_client()).create_namespaced_custom_object(
            "networking.meshfed.io",
            "v1alpha1",
            NS,
            "serviceentries",
            {
                "apiVersion": "networking.meshfed.io/v1alpha1",
                "kind": "ServiceEntry",
                "metadata": {"name": "vm"},
                "spec": {
                    "hosts": [VM_HOST],
                    "location": "MESH_INTERNAL",
                    "ports": [{"number": 80, "name": "http"}],
                    "endpoints": [{"address": "127.0.89.60"}],
                },
            },
        )
        aggregate = AggregateRegistry()
        member = aggregate.add_member("k8s")
        pushed: list[str] = []
        removed: list[str] = []

        def record(event: ChangeEvent) -> None:
            pushed.extend(event.hostnames)
            removed.extend(event.services_removed)

        aggregate.subscribe(record)
        restarted: PeerProcess | None = None
        try:
            async with running_registry(member, server.kubeconfig) as reg:
                before = _state(aggregate)
                assert len(before) == 4 and VM_HOST in before

                # 1. The API server goes away: degraded, state kept.
                await asyncio.to_thread(server.process.stop)
                await until(lambda: member.degraded is not None, "degraded", 30)
                assert _state(aggregate) == before
                # ... and comes back (without its watch cache, for part 2): the watches resume.
                restarted = PeerProcess(
                    server.process.name,
                    [*server.process.argv, "--watch-cache=false"],
                    tmp_path / "kube-apiserver-restarted.log",
                ).start()
                await asyncio.to_thread(_ready, server, restarted)
                await until(lambda: member.degraded is None, "recovered", 90)
                # Headless: the restarted server's service-IP allocator may still be repairing.
                core.create_namespaced_service(NS, service("after", HTTP, headless=True))
                await until(
                    lambda: aggregate.service(f"after.{NS}.svc.cluster.local") is not None,
                    "a change after the restart",
                    30,
                )
                assert sum(w.reconnects for w in reg.watchers.values()) >= 1
                assert removed == [] and aggregate.service(VM_HOST) is not None

                # 2. A real 410: changes while nobody watches, etcd compacted past our version.
                watched = ("services", "endpointslices")
                old = {r: reg.watchers[r].resource_version for r in watched}
                for resource in watched:
                    reg.watchers[resource].pause()
                core.delete_namespaced_service("drop", NS)
                discovery.delete_namespaced_endpoint_slice("drop", NS)
                core.create_namespaced_service(NS, service("new", HTTP, headless=True))
                discovery.patch_namespaced_endpoint_slice(
                    "change", NS, {"endpoints": [slice_endpoint("192.0.2.41", ready=False)]}
                )
                compact_etcd(server)
                pushed.clear()
                for resource in watched:
                    reg.watchers[resource].resume(resource_version=old[resource])
                await until(
                    lambda: all(reg.watchers[r].relists >= 1 for r in watched), "410 relists", 30
                )
                await until(
                    lambda: aggregate.service(f"new.{NS}.svc.cluster.local") is not None, "new"
                )
                change = f"change.{NS}.svc.cluster.local"
                await until(lambda: not aggregate.endpoints(change)[0].healthy, "changed slice")
                assert aggregate.service(f"drop.{NS}.svc.cluster.local") is None
                # Exact: equal to what a registry that never lost its watch sees now.
                fresh = AggregateRegistry()
                async with running_registry(fresh.add_member("k8s"), server.kubeconfig):
                    assert _state(aggregate) == _state(fresh)
                # Quiet: unchanged objects in the relist pushed nothing.
                assert f"keep.{NS}.svc.cluster.local" not in pushed
                # And the watch carries on after the relist.
                core.delete_namespaced_service("keep", NS)
                await until(
                    lambda: aggregate.service(f"keep.{NS}.svc.cluster.local") is None, "watch"
                )
        finally:
            if restarted is not None:
                restarted.stop()
