"""A hub whose injection webhook the real kube-apiserver calls over HTTPS on loopback.

The chart registers the ``MutatingWebhookConfiguration`` with a Service reference; the tests'
API server has no Services that route, so here it names the webhook by URL
(``https://<loopback>:<port>/inject``), with the same selectors and policies, and no
``caBundle``: the hub writes that, as it does in a cluster.

Hosts: 127.0.140.x (webhooks), 127.0.141.x (pods, in the "pod runs" test).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
from kubernetes import client as k8s

from integration.peers.kube import KubeAPIServer
from integration.peers.ports import free_ports
from meshfed.config import MeshConfig
from meshfed.core.component import HubComponent
from meshfed.hub import Hub
from meshfed.injection.settings import InjectionSettings
from meshfed.injection.webhook import InjectionWebhook
from meshfed.security.ca import CertificateAuthority
from meshfed.security.storage import FileStorage

WEBHOOK = "meshfed-sidecar-injector"
HOOK_NAMESPACE = "sidecar-injector.meshfed.io"
HOOK_OPT_IN = "opt-in.sidecar-injector.meshfed.io"


def mesh_ca(state_dir: Path, trust_domain: str = "cluster.local") -> CertificateAuthority:
    """The mesh CA's material in ``state_dir``, as ``meshfed ca serve`` creates it."""
    return CertificateAuthority.load_or_create(FileStorage(state_dir), trust_domain)


def webhook_configuration(url: str, failure_policy: str = "Fail", run: str = "") -> dict[str, Any]:
    """The chart's two webhooks: pods of labelled namespaces, and opt-in pods elsewhere.

    ``run`` narrows both to namespaces labelled ``meshfed-test-run=<run>``, so a webhook left
    by one test never touches another test's namespaces in the shared API server."""
    scope = [{"key": "meshfed-test-run", "operator": "In", "values": [run]}] if run else []

    def hook(name: str, namespace_expr: list[dict[str, Any]], object_selector: Any) -> Any:
        return {
            "name": name,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": failure_policy,
            "reinvocationPolicy": "IfNeeded",
            "timeoutSeconds": 5,
            "clientConfig": {"url": url},
            "rules": [
                {
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "operations": ["CREATE"],
                    "resources": ["pods"],
                }
            ],
            "namespaceSelector": {"matchExpressions": [*namespace_expr, *scope]},
            "objectSelector": object_selector,
        }

    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK},
        "webhooks": [
            hook(
                HOOK_NAMESPACE,
                [{"key": "istio-injection", "operator": "In", "values": ["enabled"]}],
                {
                    "matchExpressions": [
                        {"key": "sidecar.istio.io/inject", "operator": "NotIn", "values": ["false"]}
                    ]
                },
            ),
            hook(
                HOOK_OPT_IN,
                [{"key": "istio-injection", "operator": "DoesNotExist"}],
                {"matchLabels": {"sidecar.istio.io/inject": "true"}},
            ),
        ],
    }


@attrs.define
class InjectorHub:
    hub: Hub
    webhook: InjectionWebhook
    url: str
    system_namespace: str

    @property
    def monitoring(self) -> str:
        host = self.hub.mesh.monitoring_address.rpartition(":")[0]
        return f"http://{host}:{self.hub.monitoring_port}"


async def eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(check)
        if last:
            return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not true after {timeout}s (last: {last!r})")


@contextlib.asynccontextmanager
async def injector_hub(
    kube: KubeAPIServer,
    ca_dir: Path,
    host: str,
    port: int = 0,
    system_namespace: str = "",
    mesh: MeshConfig | None = None,
    components: Sequence[HubComponent] = (),
) -> AsyncIterator[InjectorHub]:
    """A hub with the injection webhook on ``host:port`` (and ``components`` before it)."""
    (port,) = (port,) if port else free_ports(1, host)
    system_namespace = system_namespace or f"mfsys-{uuid.uuid4().hex[:6]}"
    core = k8s.CoreV1Api(kube.api_client())
    with contextlib.suppress(k8s.ApiException):
        core.create_namespace({"metadata": {"name": system_namespace}})
    settings = InjectionSettings(
        listen=(host, port),
        kubeconfig=str(kube.kubeconfig),
        ca_state_dir=str(ca_dir),
        template_refresh=0.3,
        audit_interval=0.3,
    )
    base = mesh or MeshConfig(monitoring_address="127.0.0.1:0")
    mesh = attrs.evolve(base, system_namespace=system_namespace, injection=settings)
    webhook = InjectionWebhook(settings)
    hub = Hub(mesh, [*components, webhook])
    await hub.start()
    try:
        yield InjectorHub(hub, webhook, f"https://{host}:{port}/inject", system_namespace)
    finally:
        await hub.stop()


def ca_bundle_written(kube: KubeAPIServer, root_pem: bytes) -> bool:
    api = k8s.AdmissionregistrationV1Api(kube.api_client())
    config = api.read_mutating_webhook_configuration(WEBHOOK)
    expected = base64.b64encode(root_pem).decode()
    return all(h.client_config.ca_bundle == expected for h in config.webhooks)
