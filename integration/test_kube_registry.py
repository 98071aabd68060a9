"""The Kubernetes registry adapter against a real API server: slices, legacy Endpoints, nodes,
ExternalName, namespace selection, custom resources, a forced 410 relist and an API-server restart.

EndpointSlices written here hold RFC 5737 documentation addresses (the API server refuses
loopback ones); nothing dials them. Each test uses its own namespaces.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import yaml
from kubernetes import client as k8s

from integration.peers.kube import KubeAPIServer
from meshfed.adapters.kubernetes.configstore import error_text
from meshfed.adapters.kubernetes.testing import (
    create_namespace,
    create_pod,
    endpoint_slice,
    install_crds,
    kubectl,
    running_registry,
    service,
    slice_endpoint,
    until,
)
from meshfed.adapters.static.kinds import parse_service_entry
from meshfed.core.resources import parse_documents
from meshfed.registry.aggregate import AggregateRegistry
from meshfed.registry.model import Locality, Location, Resolution

HTTP = [{"name": "http", "port": 80, "targetPort": 8080}]
SLICE_PORTS = [{"name": "http", "port": 8080}]


def _ns(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def test_slices_legacy_endpoints_nodes_and_external_names(
    kube_apiserver: KubeAPIServer,
) -> None:
    api = kube_apiserver.api_client()
    core, discovery = k8s.CoreV1Api(api), k8s.DiscoveryV1Api(api)
    ns = _ns("reg")
    create_namespace(core, ns)
    node = f"node-{ns}"
    core.create_node(
        {
            "metadata": {
                "name": node,
                "labels": {
                    "topology.kubernetes.io/region": "eu-1",
                    "topology.kubernetes.io/zone": "eu-1b",
                },
            }
        }
    )
    core.create_namespaced_service(ns, service("api", HTTP))
    create_pod(core, ns, "api-1", "127.0.89.2", {"app": "api", "v": "1"}, service_account="api")
    discovery.create_namespaced_endpoint_slice(
        ns,
        endpoint_slice(
            "api-a",
            "api",
            SLICE_PORTS,
            [
                slice_endpoint("192.0.2.1", pod="api-1", namespace=ns, node=node),
                slice_endpoint("192.0.2.2", ready=False),
            ],
        ),
    )
    core.create_namespaced_service(ns, service("old", HTTP))
    core.create_namespaced_endpoints(
        ns,
        {
            "metadata": {"name": "old"},
            "subsets": [
                {"addresses": [{"ip": "192.0.2.9"}], "ports": [{"name": "http", "port": 8080}]}
            ],
        },
    )
    core.create_namespaced_service(
        ns,
        {
            "metadata": {"name": "pay"},
            "spec": {"type": "ExternalName", "externalName": "pay.example.com", "ports": HTTP},
        },
    )
    core.create_namespaced_service(ns, service("db", HTTP, headless=True))
    discovery.create_namespaced_endpoint_slice(
        ns,
        endpoint_slice(
            "db-a",
            "db",
            SLICE_PORTS,
            [
                slice_endpoint("192.0.2.20", hostname="db-0"),
                slice_endpoint("192.0.2.21", hostname="db-1"),
            ],
        ),
    )
    aggregate = AggregateRegistry()
    member = aggregate.add_member("k8s")
    api_host = f"api.{ns}.svc.cluster.local"
    try:
        async with running_registry(member, kube_apiserver.kubeconfig, "example.org") as reg:
            ready, unready = aggregate.endpoints(api_host)
            assert (ready.address, ready.healthy, unready.healthy) == ("192.0.2.1", True, False)
            assert ready.identity == f"spiffe://example.org/ns/{ns}/sa/api"
            assert dict(ready.labels) == {"app": "api", "v": "1"}
            assert ready.locality == Locality("eu-1", "eu-1b")
            assert aggregate.service(api_host).address.startswith("10.0.0.")
            (legacy,) = aggregate.endpoints(f"old.{ns}.svc.cluster.local")
            assert legacy.address == "192.0.2.9"
            pay = aggregate.service(f"pay.{ns}.svc.cluster.local")
            assert (pay.resolution, pay.location) == (Resolution.DNS, Location.MESH_EXTERNAL)
            assert [e.address for e in aggregate.endpoints(pay.hostname)] == ["pay.example.com"]
            assert aggregate.service(f"db-1.db.{ns}.svc.cluster.local").headless
            assert [e.address for e in aggregate.endpoints(f"db-1.db.{ns}.svc.cluster.local")] == [
                "192.0.2.21"
            ]

            # A heartbeat-like node update (nothing the mapping reads) recomputes nothing.
            flushes = reg.flushes
            core.patch_node(node, {"metadata": {"annotations": {"heartbeat": "1"}}})
            await until(lambda: reg.watchers["nodes"].events >= 1, "the node event")
            await asyncio.sleep(0.3)
            assert reg.flushes == flushes
            # A node's labels change: the endpoints on it move to the new zone.
            core.patch_node(
                node, {"metadata": {"labels": {"topology.kubernetes.io/zone": "eu-1c"}}}
            )
            await until(
                lambda: aggregate.endpoints(api_host)[0].locality.zone == "eu-1c", "zone change"
            )
            # A pod's labels change: its endpoint's labels follow.
            core.patch_namespaced_pod("api-1", ns, {"metadata": {"labels": {"v": "2"}}})
            await until(lambda: aggregate.endpoints(api_host)[0].labels.get("v") == "2", "labels")
            # A second slice adds an endpoint; the slice's deletion removes it.
            discovery.create_namespaced_endpoint_slice(
                ns, endpoint_slice("api-b", "api", SLICE_PORTS, [slice_endpoint("192.0.2.3")])
            )
            await until(lambda: len(aggregate.endpoints(api_host)) == 3, "second slice")
            discovery.delete_namespaced_endpoint_slice("api-b", ns)
            await until(lambda: len(aggregate.endpoints(api_host)) == 2, "slice deleted")
            # A headless pod's hostname disappears with its endpoint.
            discovery.patch_namespaced_endpoint_slice(
                "db-a", ns, {"endpoints": [slice_endpoint("192.0.2.20", hostname="db-0")]}
            )
            await until(
                lambda: aggregate.service(f"db-1.db.{ns}.svc.cluster.local") is None,
                "per-pod hostname removed",
            )
            assert reg.describe()["synced"]
    finally:
        core.delete_node(node)


async def test_namespace_selector_and_system_namespace(kube_apiserver: KubeAPIServer) -> None:
    core = k8s.CoreV1Api(kube_apiserver.api_client())
    inside, outside, system = _ns("in"), _ns("out"), _ns("sys")
    label = f"mesh-{uuid.uuid4().hex[:4]}"
    create_namespace(core, inside, {label: "on"})
    create_namespace(core, outside)
    create_namespace(core, system)
    for ns in (inside, outside, system):
        core.create_namespaced_service(ns, service("app", HTTP))
    aggregate = AggregateRegistry()
    member = aggregate.add_member("k8s")
    async with running_registry(
        member,
        kube_apiserver.kubeconfig,
        namespaceSelector=f"{label}=on",
        systemNamespace=system,
    ):
        namespaces = {s.namespace for s in aggregate.services().values()}
        assert namespaces == {inside, system}
        core.patch_namespace(outside, {"metadata": {"labels": {label: "on"}}})
        await until(
            lambda: aggregate.service(f"app.{outside}.svc.cluster.local") is not None, "join"
        )
        core.patch_namespace(inside, {"metadata": {"labels": {label: None}}})
        await until(lambda: aggregate.service(f"app.{inside}.svc.cluster.local") is None, "leave")


async def test_invalid_service_entry_gets_an_event_and_the_last_good_version_stays(
    kube_apiserver: KubeAPIServer, tmp_path: Path
) -> None:
    binary, kubeconfig = kube_apiserver.kubectl(), kube_apiserver.kubeconfig
    await asyncio.to_thread(install_crds, binary, kubeconfig)
    core = k8s.CoreV1Api(kube_apiserver.api_client())
    ns = _ns("bad")
    create_namespace(core, ns)
    host = "ledger.example.internal"

    def entry(ports: str) -> str:
        return f"""apiVersion: networking.meshfed.io/v1alpha1
kind: ServiceEntry
metadata:
  name: ledger
  namespace: {ns}
spec:
  hosts: [{host}]
  location: MESH_EXTERNAL
  resolution: DNS
  ports:
{ports}
"""

    good = entry("    - {number: 443, name: tls, protocol: TLS}")
    # Well-formed for the schema, wrong for the parser: two ports named alike.
    bad = entry("    - {number: 443, name: tls, protocol: TLS}\n    - {number: 8443, name: tls}")
    aggregate = AggregateRegistry()
    member = aggregate.add_member("k8s")
    async with running_registry(member, kubeconfig) as reg:
        manifest = tmp_path / "ledger.yaml"
        manifest.write_text(good)
        assert kubectl(binary, kubeconfig, "apply", "-f", str(manifest)).returncode == 0
        await until(lambda: aggregate.service(host) is not None, "ServiceEntry")
        assert [p.number for p in aggregate.service(host).ports] == [443]
        manifest.write_text(bad)
        done = kubectl(binary, kubeconfig, "apply", "-f", str(manifest))
        assert done.returncode == 0, done.stderr
        # The file store's text for the same document, field by field.
        (doc,), _ = parse_documents(str(manifest), [yaml.safe_load(bad)])
        _, file_errors = parse_service_entry(doc)
        expected = error_text(file_errors)
        assert "spec.ports[1].name" in expected

        def warning() -> str | None:
            listed = core.list_namespaced_event(
                ns, field_selector="involvedObject.name=ledger,reason=InvalidConfig"
            )
            return listed.items[0].message if listed.items else None

        await until(lambda: warning() is not None, "InvalidConfig event")
        assert warning() == expected
        assert reg.custom is not None
        assert [e.message for e in reg.custom.errors] == [e.message for e in file_errors]
        # The last good version stays in force.
        assert [p.number for p in aggregate.service(host).ports] == [443]
        # Deleting the object removes the service and its error.
        assert kubectl(binary, kubeconfig, "delete", "-f", str(manifest)).returncode == 0
        await until(lambda: aggregate.service(host) is None, "ServiceEntry deleted")
        assert reg.custom.errors == []


async def test_workload_entries_join_service_entries_and_services_win_a_shared_host(
    kube_apiserver: KubeAPIServer,
) -> None:
    await asyncio.to_thread(install_crds, kube_apiserver.kubectl(), kube_apiserver.kubeconfig)
    api = kube_apiserver.api_client()
    core, custom = k8s.CoreV1Api(api), k8s.CustomObjectsApi(api)
    ns = _ns("we")
    create_namespace(core, ns)
    group, version = "networking.meshfed.io", "v1alpha1"

    def create(plural: str, kind: str, name: str, spec: dict[str, object]) -> None:
        body = {"apiVersion": f"{group}/{version}", "kind": kind, "metadata": {"name": name}}
        custom.create_namespaced_custom_object(group, version, ns, plural, {**body, "spec": spec})

    vm_host = f"legacy.{ns}.example.internal"
    create(
        "serviceentries",
        "ServiceEntry",
        "legacy",
        {
            "hosts": [vm_host],
            "location": "MESH_INTERNAL",
            "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
            "workloadSelector": {"labels": {"app": "legacy"}},
        },
    )
    create(
        "workloadentries",
        "WorkloadEntry",
        "vm-1",
        {"address": "192.0.2.50", "labels": {"app": "legacy"}, "serviceAccount": "legacy"},
    )
    # A ServiceEntry claiming a Kubernetes Service's own hostname.
    svc_host = f"api.{ns}.svc.cluster.local"
    create(
        "serviceentries",
        "ServiceEntry",
        "shadow",
        {
            "hosts": [svc_host],
            "location": "MESH_EXTERNAL",
            "resolution": "DNS",
            "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
        },
    )
    core.create_namespaced_service(ns, service("api", HTTP))
    aggregate = AggregateRegistry()
    member = aggregate.add_member("k8s")
    async with running_registry(member, kube_apiserver.kubeconfig, "example.org"):
        (vm,) = aggregate.endpoints(vm_host)
        assert (vm.address, vm.identity) == (
            "192.0.2.50",
            f"spiffe://example.org/ns/{ns}/sa/legacy",
        )
        # The Service wins its own hostname ...
        assert [p.number for p in aggregate.service(svc_host).ports] == [80]
        # ... and the entry takes over once the Service is gone.
        core.delete_namespaced_service("api", ns)
        await until(lambda: [p.number for p in aggregate.service(svc_host).ports] == [443], "entry")
        # A second WorkloadEntry joins the selecting ServiceEntry live.
        create(
            "workloadentries",
            "WorkloadEntry",
            "vm-2",
            {"address": "192.0.2.51", "labels": {"app": "legacy"}},
        )
        await until(lambda: len(aggregate.endpoints(vm_host)) == 2, "second VM")
