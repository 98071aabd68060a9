"""Ingress class and pathType from a real Kubernetes API server (``kubectl apply``).

The CRD-backed config store reads ``networking.k8s.io/v1`` Ingresses; which of them the gateway
serves depends on ``spec.ingressClassName`` or the legacy ``kubernetes.io/ingress.class``
annotation, so the annotation must survive the trip through the API server into the parser.
No traffic here (test_routing_gateway.py and test_gateway_mtls.py drive a real gateway).
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from kubernetes import client as k8s

from integration.peers.kube import KubeAPIServer
from meshfed.adapters.kubernetes.namespaces import NamespaceFilter
from meshfed.adapters.kubernetes.testing import create_namespace, install_crds, kubectl, until
from meshfed.configstores import routing_kube_store
from meshfed.pilot.config.model import PathType

INGRESSES = """apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {name}
  annotations: {annotations}
spec:
  {spec_class}
  rules:
  - host: {name}.example.com
    http:
      paths:
      - {{path: /exactpath, pathType: Exact,
         backend: {{service: {{name: web, port: {{number: 80}}}}}}}}
      - {{path: /foo, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}
"""


def ingress(name: str, annotation: str = "", spec_class: str = "") -> str:
    return INGRESSES.format(
        name=name,
        annotations=f"{{kubernetes.io/ingress.class: {annotation}}}" if annotation else "{}",
        spec_class=f"ingressClassName: {spec_class}" if spec_class else "",
    )


async def test_kubectl_applied_ingresses_are_served_by_class_with_path_types(
    kube_apiserver: KubeAPIServer, tmp_path: Path
) -> None:
    binary, kubeconfig = kube_apiserver.kubectl(), kube_apiserver.kubeconfig
    await asyncio.to_thread(install_crds, binary, kubeconfig)
    api = kube_apiserver.api_client()
    ns = f"ingress-{uuid.uuid4().hex[:6]}"
    create_namespace(k8s.CoreV1Api(api), ns)
    store = routing_kube_store(api, NamespaceFilter(names=[ns]))
    task = asyncio.create_task(store.run())
    try:
        await store.wait_synced(30)
        manifest = tmp_path / "ingresses.yaml"
        manifest.write_text(
            "---\n".join(
                [
                    ingress("legacy-istio", annotation="istio"),  # Istio 0.2's way
                    ingress("legacy-nginx", annotation="nginx"),  # another controller's
                    ingress("spec-meshfed", spec_class="meshfed"),
                    ingress("spec-nginx", spec_class="nginx"),
                    ingress("unclassed"),
                ]
            )
        )
        done = kubectl(binary, kubeconfig, "apply", "-n", ns, "-f", str(manifest))
        assert done.returncode == 0, done.stderr

        def served() -> list[str]:
            return sorted(g.name for g in store.snapshot.gateways if g.namespace == ns)

        expected = ["legacy-istio", "spec-meshfed", "unclassed"]
        await until(lambda: served() == expected, f"{expected} (got {served()})", 20)
        assert store.errors == []
        # Another controller's Ingress is not ours to judge: no Event on it either.
        core = k8s.CoreV1Api(api)
        await asyncio.sleep(0.5)
        for name in ("legacy-nginx", "spec-nginx"):
            events = core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}")
            assert events.items == [], [e.message for e in events.items]
        legacy = next(g for g in store.snapshot.gateways if g.name == "legacy-istio")
        assert [(p.path, p.path_type) for p in legacy.paths] == [
            ("/exactpath", PathType.EXACT),
            ("/foo", PathType.PREFIX),
        ]
        # Re-classing an Ingress away from meshfed withdraws it; back again restores it.
        manifest.write_text(ingress("legacy-istio", annotation="traefik"))
        assert kubectl(binary, kubeconfig, "apply", "-n", ns, "-f", str(manifest)).returncode == 0
        await until(lambda: "legacy-istio" not in served(), "legacy-istio withdrawn", 20)
        manifest.write_text(ingress("legacy-istio", annotation="istio"))
        assert kubectl(binary, kubeconfig, "apply", "-n", ns, "-f", str(manifest)).returncode == 0
        await until(lambda: "legacy-istio" in served(), "legacy-istio served again", 20)
        assert store.errors == []
    finally:
        store.stop()
        await asyncio.wait_for(task, 15)
