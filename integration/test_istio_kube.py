"""Today's Istio routing kinds with ``kubectl``: the shipped CRDs serve VirtualService and
DestinationRule in v1alpha3, v1beta1 and v1 on a real API server, and the CRD-backed store gives
the same snapshot the file store gives for the same documents; a field meshfed does not
implement passes the schema but is refused by the store, named in an Event on the object.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import attrs
from kubernetes import client as k8s

from integration.peers.kube import KubeAPIServer
from meshfed.adapters.kubernetes.namespaces import NamespaceFilter
from meshfed.adapters.kubernetes.testing import create_namespace, install_crds, kubectl, until
from meshfed.configstores import routing_kube_store
from meshfed.pilot.config.store import ConfigSnapshot, parse_config_file

BOOKINFO = """apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 50}
    - {destination: {host: reviews, subset: v3}, weight: 50}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
"""


def _mine(snapshot: ConfigSnapshot, ns: str) -> list[str]:
    every = [*snapshot.route_rules, *snapshot.destination_policies]
    return sorted(o.ref for o in every if o.namespace == ns)


async def test_virtual_services_from_kubectl_as_from_files(
    kube_apiserver: KubeAPIServer, tmp_path: Path
) -> None:
    binary, kubeconfig = kube_apiserver.kubectl(), kube_apiserver.kubeconfig
    await asyncio.to_thread(install_crds, binary, kubeconfig)
    names = kubectl(binary, kubeconfig, "get", "crd", "-o", "name").stdout.split()
    for plural in ("virtualservices", "destinationrules"):
        assert f"customresourcedefinition.apiextensions.k8s.io/{plural}.networking.istio.io" in (
            names
        )
    api = kube_apiserver.api_client()
    core = k8s.CoreV1Api(api)
    ns = f"istio-{uuid.uuid4().hex[:6]}"
    create_namespace(core, ns)
    store = routing_kube_store(api, NamespaceFilter(names=[ns]))
    task = asyncio.create_task(store.run())
    try:
        await store.wait_synced(30)
        manifest = tmp_path / "bookinfo.yaml"
        manifest.write_text(BOOKINFO)
        done = kubectl(binary, kubeconfig, "apply", "-n", ns, "-f", str(manifest))
        assert done.returncode == 0, done.stderr
        # Every served version gives the same object.
        for version in ("v1alpha3", "v1beta1", "v1"):
            got = kubectl(
                binary,
                kubeconfig,
                "get",
                f"virtualservices.{version}.networking.istio.io",
                "-n",
                ns,
                "-o",
                "name",
            )
            assert got.stdout.split() == ["virtualservice.networking.istio.io/reviews"], version
        expected = [
            f"DestinationRule {ns}/reviews",
            f"VirtualService {ns}/reviews.http[0]",
            f"VirtualService {ns}/reviews.http[1]",
        ]
        await until(lambda: _mine(store.snapshot, ns) == expected, "the converted rules", 20)
        assert store.errors == []
        by_file_objects, file_errors = parse_config_file(_namespaced(tmp_path, BOOKINFO, ns))
        assert file_errors == [] and by_file_objects is not None
        by_file = ConfigSnapshot.of(by_file_objects)
        from_kube = [r for r in store.snapshot.route_rules if r.namespace == ns]
        assert [(r.name, r.precedence, r.match, r.route) for r in from_kube] == [
            (r.name, r.precedence, r.match, r.route) for r in by_file.route_rules
        ]
        assert [n for n in store.snapshot.notes if ns in n] == []

        # The schema lets a TCP route through; the store refuses it and says where.
        manifest.write_text(BOOKINFO.replace("  http:\n", "  tcp: [{route: []}]\n  http:\n", 1))
        done = kubectl(binary, kubeconfig, "apply", "-n", ns, "-f", str(manifest))
        assert done.returncode == 0, done.stderr
        await until(lambda: len(store.errors) == 1, "the error", 20)
        (error,) = store.errors
        assert error.field == "spec.tcp" and "not supported by meshfed" in error.message
        assert (
            error.file
            == f"apis/networking.istio.io/v1beta1/namespaces/{ns}/virtualservices/reviews"
        )

        def warning() -> str:
            listed = core.list_namespaced_event(
                ns, field_selector="involvedObject.name=reviews,reason=InvalidConfig"
            )
            return listed.items[0].message if listed.items else ""

        await until(lambda: "spec.tcp" in warning(), "InvalidConfig event", 20)
        # The last good version stays in force.
        assert _mine(store.snapshot, ns) == expected
        assert kubectl(binary, kubeconfig, "delete", "-n", ns, "-f", str(manifest)).returncode == 0
        await until(lambda: _mine(store.snapshot, ns) == [], "deleted", 20)
    finally:
        store.stop()
        await asyncio.wait_for(task, 15)


def _namespaced(tmp_path: Path, text: str, ns: str) -> Path:
    path = tmp_path / "file.yaml"
    path.write_text(
        text.replace("metadata: {name: reviews}", f"metadata: {{name: reviews, namespace: {ns}}}")
    )
    return path


SECURITY = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]}]
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  egress: [{hosts: ["./*", "istio-system/*"]}]
"""


async def test_security_kinds_and_sidecar_from_kubectl_as_from_files(
    kube_apiserver: KubeAPIServer, tmp_path: Path
) -> None:
    binary, kubeconfig = kube_apiserver.kubectl(), kube_apiserver.kubeconfig
    await asyncio.to_thread(install_crds, binary, kubeconfig)
    api = kube_apiserver.api_client()
    core = k8s.CoreV1Api(api)
    ns = f"istio-{uuid.uuid4().hex[:6]}"
    create_namespace(core, ns)
    store = routing_kube_store(api, NamespaceFilter(names=[ns]))
    task = asyncio.create_task(store.run())
    try:
        await store.wait_synced(30)
        manifest = tmp_path / "security.yaml"
        manifest.write_text(SECURITY)
        done = kubectl(binary, kubeconfig, "apply", "-n", ns, "-f", str(manifest))
        assert done.returncode == 0, done.stderr

        def mine() -> tuple[int, int, int]:
            snap = store.snapshot
            return (
                sum(p.namespace == ns for p in snap.peer_authentications),
                sum(p.namespace == ns for p in snap.authorization_policies),
                sum(s.namespace == ns for s in snap.sidecars),
            )

        await until(lambda: mine() == (1, 1, 1), "the security objects and the Sidecar", 20)
        assert store.errors == []
        text = SECURITY.replace(
            "metadata: {name: default}", f"metadata: {{name: default, namespace: {ns}}}"
        )
        text = text.replace("metadata: {name: web}", f"metadata: {{name: web, namespace: {ns}}}")
        path = tmp_path / "file.yaml"
        path.write_text(text)
        by_file, errors = parse_config_file(path)
        assert errors == [] and by_file is not None
        files = ConfigSnapshot.of(by_file)
        kube = store.snapshot

        def strip(objs: tuple[Any, ...]) -> list[Any]:
            return [attrs.evolve(o, file="") for o in objs if o.namespace == ns]

        assert strip(kube.peer_authentications) == strip(files.peer_authentications)
        assert strip(kube.authorization_policies) == strip(files.authorization_policies)
        assert strip(kube.sidecars) == strip(files.sidecars)
        # A field meshfed does not implement passes the schema and is refused by the store.
        manifest.write_text(
            SECURITY.replace("spec: {mtls: {mode: STRICT}}", "spec: {mtls: {mode: STRICTER}}")
        )
        done = kubectl(binary, kubeconfig, "apply", "-n", ns, "-f", str(manifest))
        assert done.returncode == 0, done.stderr
        await until(lambda: len(store.errors) == 1, "the error", 20)
        assert store.errors[0].field == "spec.mtls.mode"
        assert mine() == (1, 1, 1)  # the last good version stays in force
    finally:
        store.stop()
        await asyncio.wait_for(task, 15)
