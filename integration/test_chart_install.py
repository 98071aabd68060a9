"""The chart against the suite's real kube-apiserver (no kubelet: objects, not running pods).

- ``helm template`` output, applied server-side, is accepted object by object, with the CRDs'
  schemas in force (``kubectl`` refuses a ServiceEntry whose protocol is ``HTTPX``);
- ``helm install`` creates the control plane, its RBAC is least privilege as the API server's
  own authorizer answers (``kubectl auth can-i``), and ``helm uninstall`` removes it.

Each test uses its own release namespace (cluster-scoped names carry it) and removes what it
created, so the rest of the session's API server is untouched; the webhook configuration,
whose name is fixed, is always deleted.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from integration.chart_helpers import CHART, documents, run_helm
from integration.chart_helpers import render as render_chart
from integration.peers.kube import KubeAPIServer
from meshfed.adapters.kubernetes.testing import create_namespace, install_crds, kubectl

WEBHOOK = "meshfed-sidecar-injector"
ROOT_CONFIGMAP = "meshfed-ca-root-cert"
EVERYTHING = [
    "mixer.enabled=true",
    "registries.consul.enabled=true",
    "registries.consul.addresses={10.0.0.11:8500}",
    "registries.eureka.enabled=true",
    "registries.eureka.servers={http://10.0.0.10:8761/eureka}",
]


def _ns(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def _delete_templates(kube: KubeAPIServer, docs: list[dict[str, Any]], path: Path) -> None:
    """Delete every non-CRD object of ``docs`` (the CRDs are shared by the session)."""
    others = [d for d in docs if d["kind"] != "CustomResourceDefinition"]
    path.write_text(yaml.safe_dump_all(others))
    kubectl(
        kube.kubectl(),
        kube.kubeconfig,
        "delete",
        "-f",
        str(path),
        "--ignore-not-found",
        "--wait=false",
    )


def test_helm_template_applied_server_side_is_accepted_object_by_object(
    kube_apiserver: KubeAPIServer, tmp_path: Path
) -> None:
    binary, kubeconfig = kube_apiserver.kubectl(), kube_apiserver.kubeconfig
    ns = _ns("chart-ssa")
    rendered = render_chart(ns, ["createNamespace=true", *EVERYTHING])
    docs = documents(rendered)
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(rendered)
    try:
        done = kubectl(
            binary,
            kubeconfig,
            "apply",
            "--server-side",
            "--field-manager=meshfed-chart-test",
            "--force-conflicts",
            "-f",
            str(manifest),
        )
        assert done.returncode == 0, done.stderr
        # One line per object, each applied (created or unchanged), none refused.
        applied = [line for line in done.stdout.splitlines() if line.strip()]
        assert len(applied) == len(docs), done.stdout
        assert all(line.endswith("serverside-applied") for line in applied), done.stdout
        listed = kubectl(binary, kubeconfig, "get", "-f", str(manifest), "-o", "json")
        assert listed.returncode == 0, listed.stderr
        items = json.loads(listed.stdout)["items"]
        expected = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
        assert sorted((i["kind"], i["metadata"]["name"]) for i in items) == expected
        kinds = {kind for kind, _ in expected}
        assert {
            "CustomResourceDefinition",
            "Namespace",
            "ServiceAccount",
            "ConfigMap",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Service",
            "Deployment",
            "MutatingWebhookConfiguration",
        } <= kinds
        # The server's own view of what it accepted (defaults filled in, nothing dropped).
        by_name = {(i["kind"], i["metadata"]["name"]): i for i in items}
        hub = by_name[("Deployment", "meshfed-hub")]["spec"]["template"]["spec"]
        assert hub["serviceAccountName"] == "meshfed-hub"
        (container,) = hub["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == "/healthz/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz/live"
        webhook = by_name[("MutatingWebhookConfiguration", WEBHOOK)]
        assert [w["clientConfig"]["service"]["namespace"] for w in webhook["webhooks"]] == [ns] * 3
        entry = by_name[("CustomResourceDefinition", "serviceentries.networking.meshfed.io")]
        assert entry["spec"]["names"]["shortNames"] == ["mse"]
        # Applying the same rendering again changes nothing the server stores.
        versions = {k: i["metadata"]["resourceVersion"] for k, i in by_name.items()}
        again = kubectl(
            binary,
            kubeconfig,
            "apply",
            "--server-side",
            "--field-manager=meshfed-chart-test",
            "-f",
            str(manifest),
        )
        assert again.returncode == 0, again.stderr
        relisted = json.loads(
            kubectl(binary, kubeconfig, "get", "-f", str(manifest), "-o", "json").stdout
        )["items"]
        assert {
            (i["kind"], i["metadata"]["name"]): i["metadata"]["resourceVersion"] for i in relisted
        } == versions
    finally:
        _delete_templates(kube_apiserver, docs, tmp_path / "delete.yaml")


def _service_entry(ns: str, protocol: str) -> str:
    return (
        "apiVersion: networking.meshfed.io/v1alpha1\nkind: ServiceEntry\n"
        f"metadata: {{name: billing-{protocol.lower()}, namespace: {ns}}}\n"
        "spec:\n  hosts: [billing.example.com]\n"
        f"  ports: [{{number: 80, name: http, protocol: {protocol}}}]\n"
    )


def test_kubectl_refuses_a_service_entry_with_protocol_httpx(
    kube_apiserver: KubeAPIServer,
) -> None:
    binary, kubeconfig = kube_apiserver.kubectl(), kube_apiserver.kubeconfig
    install_crds(binary, kubeconfig)
    core = k8s.CoreV1Api(kube_apiserver.api_client())
    ns = _ns("chart-crd")
    create_namespace(core, ns)
    try:
        refused = kubectl(binary, kubeconfig, "apply", "-f", "-", stdin=_service_entry(ns, "HTTPX"))
        assert refused.returncode != 0
        assert "spec.ports[0].protocol" in refused.stderr, refused.stderr
        assert 'Unsupported value: "HTTPX"' in refused.stderr, refused.stderr
        for protocol in ("HTTP", "grpc"):
            done = kubectl(
                binary, kubeconfig, "apply", "-f", "-", stdin=_service_entry(ns, protocol)
            )
            assert done.returncode == 0, done.stderr
        listed = kubectl(binary, kubeconfig, "get", "mse", "-n", ns, "-o", "name")
        assert sorted(listed.stdout.split()) == [
            "serviceentry.networking.meshfed.io/billing-grpc",
            "serviceentry.networking.meshfed.io/billing-http",
        ]
    finally:
        core.delete_namespace(ns)


@pytest.fixture
def release(kube_apiserver: KubeAPIServer) -> Iterator[list[str]]:
    """Collects (namespace) of releases a test installs; uninstalls them and their namespace."""
    installed: list[str] = []
    yield installed
    core = k8s.CoreV1Api(kube_apiserver.api_client())
    for ns in installed:
        run_helm("uninstall", "meshfed", "-n", ns, "--wait", kubeconfig=kube_apiserver.kubeconfig)
        try:
            core.delete_namespace(ns)
        except ApiException as exc:
            if exc.status != 404:
                raise
    if installed:  # cluster-scoped with a fixed name: never left for the next test
        try:
            k8s.AdmissionregistrationV1Api(
                kube_apiserver.api_client()
            ).delete_mutating_webhook_configuration(WEBHOOK)
        except ApiException as exc:
            if exc.status != 404:
                raise


def _install(kube: KubeAPIServer, ns: str, *values: str) -> None:
    argv = ["install", "meshfed", str(CHART), "-n", ns, "--create-namespace"]
    for value in values:
        argv += ["--set", value]
    done = run_helm(*argv, kubeconfig=kube.kubeconfig)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "STATUS: deployed" in done.stdout, done.stdout


def test_helm_install_creates_the_control_plane_with_least_privilege(
    kube_apiserver: KubeAPIServer, release: list[str]
) -> None:
    binary, kubeconfig = kube_apiserver.kubectl(), kube_apiserver.kubeconfig
    api = kube_apiserver.api_client()
    ns = _ns("chart-helm")
    release.append(ns)
    _install(kube_apiserver, ns, "mixer.enabled=true", "injector.failurePolicy=Ignore")
    status = run_helm("status", "meshfed", "-n", ns, "-o", "json", kubeconfig=kubeconfig)
    assert json.loads(status.stdout)["info"]["status"] == "deployed"

    apps = k8s.AppsV1Api(api)
    for name, account in (("meshfed-hub", "meshfed-hub"), ("meshfed-ca", "meshfed-ca")):
        deployment = apps.read_namespaced_deployment(name, ns)
        spec = deployment.spec.template.spec
        assert spec.service_account_name == account
        (container,) = spec.containers
        assert container.image == "ghcr.io/meshfed/meshfed:0.1.0"
        assert container.readiness_probe.http_get.path == "/healthz/ready"
        assert container.liveness_probe.http_get.path == "/healthz/live"
        assert container.security_context.read_only_root_filesystem is True
        assert deployment.metadata.annotations["meta.helm.sh/release-namespace"] == ns
    webhook = k8s.AdmissionregistrationV1Api(api).read_mutating_webhook_configuration(WEBHOOK)
    assert [w.failure_policy for w in webhook.webhooks] == ["Ignore"] * 3
    assert {w.client_config.service.path for w in webhook.webhooks} == {"/inject"}
    template = k8s.CoreV1Api(api).read_namespaced_config_map(WEBHOOK, ns)
    assert not template.data  # no template given: the hub's built-in one is injected

    def can(account: str, verb: str, resource: str, *extra: str) -> bool:
        done = kubectl(
            binary,
            kubeconfig,
            "auth",
            "can-i",
            verb,
            resource,
            "--as",
            f"system:serviceaccount:{ns}:{account}",
            *extra,
        )
        return done.stdout.strip() == "yes"

    hub_may = [
        ("watch", "services", "-A"),
        ("watch", "endpointslices.discovery.k8s.io", "-A"),
        ("watch", "pods", "-A"),
        ("watch", "nodes", "-A"),
        ("watch", "namespaces", "-A"),
        ("watch", "serviceentries.networking.meshfed.io", "-A"),
        ("watch", "routerules.config.istio.io", "-A"),
        ("watch", "gateways.config.meshfed.io", "-A"),
        ("watch", "ingresses.networking.k8s.io", "-A"),
        ("watch", "rules.config.istio.io", "-A"),
        ("watch", "prometheuses.config.istio.io", "-A"),
        ("create", "events", "-n", "default"),
        ("patch", f"mutatingwebhookconfigurations.admissionregistration.k8s.io/{WEBHOOK}"),
        ("get", f"configmaps/{WEBHOOK}", "-n", ns),
        ("watch", f"configmaps/{WEBHOOK}", "-n", ns),
        # the trust bundle the sidecars mount, in the namespaces it injects into
        ("create", "configmaps", "-n", "default"),
        ("get", f"configmaps/{ROOT_CONFIGMAP}", "-n", "default"),
        ("patch", f"configmaps/{ROOT_CONFIGMAP}", "-n", "default"),
        ("get", "namespaces/default"),
        ("list", "pods", "-n", "default"),
    ]
    hub_may_not = [
        ("create", "services", "-A"),
        ("delete", "pods", "-A"),
        ("update", "routerules.config.istio.io", "-A"),
        ("create", "serviceentries.networking.meshfed.io", "-A"),
        ("get", "secrets", "-n", ns),
        ("get", "secrets/meshfed-ca", "-n", ns),
        ("patch", "mutatingwebhookconfigurations.admissionregistration.k8s.io/other"),
        ("create", "mutatingwebhookconfigurations.admissionregistration.k8s.io"),
        ("get", "configmaps/meshfed-mesh", "-n", ns),
        ("create", "tokenreviews.authentication.k8s.io"),
        ("patch", "configmaps/other", "-n", "default"),
        ("delete", f"configmaps/{ROOT_CONFIGMAP}", "-n", "default"),
        ("patch", f"configmaps/{WEBHOOK}", "-n", ns),
    ]
    ca_may = [
        ("get", "secrets/meshfed-ca", "-n", ns),
        ("update", "secrets/meshfed-ca", "-n", ns),
        ("create", "secrets", "-n", ns),
        ("create", "tokenreviews.authentication.k8s.io"),
        # the trust bundle the hub mounts to authenticate the CA
        ("create", "configmaps", "-n", ns),
        ("patch", f"configmaps/{ROOT_CONFIGMAP}", "-n", ns),
    ]
    ca_may_not = [
        ("get", "secrets/other", "-n", ns),
        ("list", "secrets", "-n", ns),
        ("delete", "secrets/meshfed-ca", "-n", ns),
        ("create", "secrets", "-n", "default"),
        ("get", "secrets/meshfed-ca", "-n", "default"),
        ("list", "pods", "-A"),
        ("patch", "configmaps/meshfed-mesh", "-n", ns),
        ("create", "configmaps", "-n", "default"),
    ]
    for account, may, may_not in (
        ("meshfed-hub", hub_may, hub_may_not),
        ("meshfed-ca", ca_may, ca_may_not),
    ):
        for verb, resource, *extra in may:
            assert can(account, verb, resource, *extra), (account, verb, resource)
        for verb, resource, *extra in may_not:
            assert not can(account, verb, resource, *extra), (account, verb, resource)

    done = run_helm("uninstall", "meshfed", "-n", ns, "--wait", kubeconfig=kubeconfig)
    assert done.returncode == 0, done.stderr
    with pytest.raises(ApiException) as gone:
        apps.read_namespaced_deployment("meshfed-hub", ns)
    assert gone.value.status == 404
    with pytest.raises(ApiException) as gone:
        k8s.AdmissionregistrationV1Api(api).read_mutating_webhook_configuration(WEBHOOK)
    assert gone.value.status == 404
    roles = k8s.RbacAuthorizationV1Api(api).list_cluster_role(
        label_selector="app.kubernetes.io/part-of=meshfed"
    )
    assert [r.metadata.name for r in roles.items if r.metadata.name.endswith(ns)] == []
