"""Today's Istio ``Gateway`` with ``kubectl``: the shipped CRD serves it in v1alpha3, v1beta1 and
v1 on a real API server; the CRD-backed store gives the object the file store gives for the same
document; a TLS mode meshfed does not implement passes the schema, is refused by the store with
the field named, and the last good Gateway stays in force.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import attrs
from kubernetes import client as k8s

from integration.peers.kube import KubeAPIServer
from meshfed.adapters.kubernetes.namespaces import NamespaceFilter
from meshfed.adapters.kubernetes.testing import create_namespace, install_crds, kubectl, until
from meshfed.configstores import routing_kube_store
from meshfed.pilot.config.store import ConfigSnapshot, parse_config_file

GATEWAY = """apiVersion: networking.istio.io/{version}
kind: Gateway
metadata: {{name: front{version}, namespace: {ns}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 443, name: https, protocol: HTTPS}}
    hosts: [shop.example.com]
    tls: {{mode: SIMPLE, credentialName: shop-cert}}
"""
VERSIONS = ("v1alpha3", "v1beta1", "v1")


async def test_istio_gateways_from_kubectl_as_from_files(
    kube_apiserver: KubeAPIServer, tmp_path: Path
) -> None:
    binary, kubeconfig = kube_apiserver.kubectl(), kube_apiserver.kubeconfig
    await asyncio.to_thread(install_crds, binary, kubeconfig)
    names = kubectl(binary, kubeconfig, "get", "crd", "-o", "name").stdout.split()
    assert "customresourcedefinition.apiextensions.k8s.io/gateways.networking.istio.io" in names
    api = kube_apiserver.api_client()
    core = k8s.CoreV1Api(api)
    ns = f"gw-{uuid.uuid4().hex[:6]}"
    create_namespace(core, ns)
    store = routing_kube_store(api, NamespaceFilter(names=[ns]))
    task = asyncio.create_task(store.run())
    try:
        await store.wait_synced(30)
        text = "---\n".join(GATEWAY.format(version=v, ns=ns) for v in VERSIONS)
        manifest = tmp_path / "gateways.yaml"
        manifest.write_text(text)
        done = kubectl(binary, kubeconfig, "apply", "-f", str(manifest))
        assert done.returncode == 0, done.stderr

        def mine() -> list[str]:
            return sorted(g.ref for g in store.snapshot.istio_gateways if g.namespace == ns)

        expected = [f"Gateway {ns}/front{v}" for v in sorted(VERSIONS)]
        await until(lambda: mine() == expected, "the three Gateways", 20)
        assert store.errors == []
        by_file, errors = parse_config_file(manifest)
        assert errors == [] and by_file is not None
        files = ConfigSnapshot.of(by_file).istio_gateways
        kube = [g for g in store.snapshot.istio_gateways if g.namespace == ns]
        assert [attrs.evolve(g, file="") for g in kube] == [attrs.evolve(g, file="") for g in files]

        # The schema lets ISTIO_MUTUAL through; the store refuses it and says where.
        manifest.write_text(GATEWAY.format(version="v1", ns=ns).replace("SIMPLE", "ISTIO_MUTUAL"))
        done = kubectl(binary, kubeconfig, "apply", "-f", str(manifest))
        assert done.returncode == 0, done.stderr
        await until(lambda: len(store.errors) == 1, "the error", 20)
        (error,) = store.errors
        assert error.field == "spec.servers[0].tls.mode"
        assert "not supported by meshfed" in error.message
        assert error.file == f"apis/networking.istio.io/v1beta1/namespaces/{ns}/gateways/frontv1"
        # The last good version stays in force.
        assert mine() == expected
        (good,) = [g for g in kube if g.name == "frontv1"]
        assert good in store.snapshot.istio_gateways
    finally:
        store.stop()
        await asyncio.wait_for(task, 15)
