"""The chart's install runs the injection webhook: helm install, then the CA and the hub
started as processes with the installed mesh config and their own service-account tokens.

What a cluster would do and this test does by hand, and nothing more: the kubelet's part
(the mesh ConfigMap and the trust-bundle ConfigMap mounted as files, the service-account token
written where the pod reads it, ``0.0.0.0`` being the pod's own address), cluster DNS (the CA
Service's name resolving to the CA process) and the endpoints controller (the hub Service's
Endpoints naming the hub process). Every path, flag and name is otherwise taken from the
installed objects. The API server dials the webhook through the chart's Service and checks the
serving certificate against ``meshfed-hub.<ns>.svc``, so the certificate the CA issued to the
hub's token must carry the Service's DNS name.
"""

from __future__ import annotations

import base64
import os
import secrets
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from integration.chart_helpers import CHART, run_helm
from integration.peers.kube import KubeAPIServer
from meshfed.adapters.kubernetes.testing import create_namespace

CA_HOST = "127.0.142.2"
HUB_HOST = "127.0.142.3"
WEBHOOK = "meshfed-sidecar-injector"
POD_MOUNTS = ("/var/run/secrets/kubernetes.io/serviceaccount", "/var/run/meshfed/ca-root")


def _kubeconfig(kube: KubeAPIServer, path: Path, token: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {"server": kube.url, "certificate-authority": str(kube.ca_cert)},
                    }
                ],
                "users": [{"name": "u", "user": {"token": token}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    path.chmod(0o600)
    return path


def _token(core: k8s.CoreV1Api, ns: str, account: str) -> str:
    request = k8s.AuthenticationV1TokenRequest(
        spec=k8s.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
    )
    return core.create_namespaced_service_account_token(account, ns, request).status.token


def _pod_view(text: str, root: Path, host: str) -> str:
    """``text`` as seen inside the pod: mounts under ``root``, ``0.0.0.0`` as the pod's IP."""
    for mount in POD_MOUNTS:
        text = text.replace(mount, str(root / mount.lstrip("/")))
    return text.replace("0.0.0.0", host)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def _wait(check: Any, timeout: float, what: str, procs: list[subprocess.Popen[bytes]]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        for p in procs:
            assert p.poll() is None, f"{what}: a process exited with {p.returncode}"
        time.sleep(0.3)
    raise AssertionError(f"{what}: not true after {timeout}s")


@pytest.fixture
def installed(kube_apiserver: KubeAPIServer) -> Iterator[str]:
    ns = f"chart-inj-{secrets.token_hex(3)}"
    done = run_helm(
        "install",
        "meshfed",
        str(CHART),
        "-n",
        ns,
        "--create-namespace",
        kubeconfig=kube_apiserver.kubeconfig,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    yield ns
    done = run_helm(
        "uninstall", "meshfed", "-n", ns, "--wait", kubeconfig=kube_apiserver.kubeconfig
    )
    assert done.returncode == 0, done.stdout + done.stderr
    try:  # cluster-scoped with a fixed name: never left for the next test to trip over
        k8s.AdmissionregistrationV1Api(
            kube_apiserver.api_client()
        ).delete_mutating_webhook_configuration(WEBHOOK)
    except ApiException as exc:
        if exc.status != 404:
            raise
    core = k8s.CoreV1Api(kube_apiserver.api_client())
    try:
        core.delete_namespace(ns)
    except ApiException as exc:
        if exc.status != 404:
            raise


def test_the_installed_chart_runs_the_webhook_with_a_certificate_from_the_ca(
    kube_apiserver: KubeAPIServer, installed: str, tmp_path: Path
) -> None:
    ns, kube = installed, kube_apiserver
    api = kube.api_client()
    core, apps = k8s.CoreV1Api(api), k8s.AppsV1Api(api)
    mesh_text = core.read_namespaced_config_map("meshfed-mesh", ns).data["mesh.yaml"]
    mesh = yaml.safe_load(mesh_text)["spec"]
    ca_port = int(mesh["injection"]["ca"]["address"].rpartition(":")[2])
    hub_port = int(mesh["injection"]["listen"].rpartition(":")[2])

    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []

    def start(name: str, args: list[str], account: str) -> None:
        root = tmp_path / name
        sa = root / POD_MOUNTS[0].lstrip("/")
        sa.mkdir(parents=True)
        token = _token(core, ns, account)
        (sa / "token").write_text(token)
        etc = root / "etc" / "meshfed"
        etc.mkdir(parents=True)
        host = CA_HOST if name == "ca" else HUB_HOST
        text = _pod_view(mesh_text, root, host)
        # Cluster DNS: the CA Service's name is the CA process.
        text = text.replace(f"meshfed-ca.{ns}.svc:{ca_port}", f"{CA_HOST}:{ca_port}")
        (etc / "mesh.yaml").write_text(text)
        args = [a.replace("/etc/meshfed", str(etc)) for a in args]
        args = [_pod_view(a, root, host) for a in args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
        env["KUBECONFIG"] = str(_kubeconfig(kube, root / "kubeconfig", token))
        log = tmp_path / f"{name}.log"
        logs.append(log)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "meshfed.cli", *args],
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
                env=env,
            )
        )

    def deployment_args(name: str) -> list[str]:
        (container,) = apps.read_namespaced_deployment(name, ns).spec.template.spec.containers
        return list(container.args)

    try:
        ca_args = deployment_args("meshfed-ca")
        state = [a for a in ca_args if a.startswith("/var/run/meshfed/ca")]
        ca_args = [str(tmp_path / "ca-state") if a in state else a for a in ca_args]
        start("ca", ca_args, "meshfed-ca")
        mon = int(next(a for a in ca_args if a.endswith(":15016")).rpartition(":")[2])
        _wait(lambda: _ready(f"http://{CA_HOST}:{mon}/healthz/ready"), 60, "CA ready", procs)

        # The kubelet mounts the trust bundle the CA published.
        root_map = core.read_namespaced_config_map("meshfed-ca-root-cert", ns)
        root_pem = root_map.data["root-cert.pem"]
        hub_root = tmp_path / "hub" / POD_MOUNTS[1].lstrip("/")
        hub_root.mkdir(parents=True)
        (hub_root / "root-cert.pem").write_text(root_pem)
        # No cluster network here (no kube-proxy; Endpoints may not be loopback): the API
        # server is pointed at the hub process by URL, so it checks the IP SAN; the Service
        # names on the certificate are checked below by reading the served certificate.
        admission = k8s.AdmissionregistrationV1Api(api)
        config = admission.read_mutating_webhook_configuration(WEBHOOK)
        patch = []
        for i, hook in enumerate(config.webhooks):
            path = hook.client_config.service.path
            patch.append({"op": "test", "path": f"/webhooks/{i}/name", "value": hook.name})
            patch.append(
                {
                    "op": "replace",
                    "path": f"/webhooks/{i}/clientConfig",
                    "value": {"url": f"https://{HUB_HOST}:{hub_port}{path}"},
                }
            )
        admission.patch_mutating_webhook_configuration(WEBHOOK, patch)
        start("hub", deployment_args("meshfed-hub"), "meshfed-hub")
        monitoring = mesh["listen"]["monitoring"].replace("0.0.0.0", HUB_HOST)
        _wait(lambda: _ready(f"http://{monitoring}/healthz/ready"), 90, "hub ready", procs)

        bundle = base64.b64encode(root_pem.encode()).decode()
        served = x509.load_pem_x509_certificate(
            ssl.get_server_certificate((HUB_HOST, hub_port)).encode()
        )
        sans = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == [
            f"meshfed-hub.{ns}.svc",
            f"meshfed-hub.{ns}.svc.cluster.local",
        ]
        assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == [HUB_HOST]
        assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [
            f"spiffe://cluster.local/ns/{ns}/sa/meshfed-hub"
        ]

        def written() -> bool:
            hooks = admission.read_mutating_webhook_configuration(WEBHOOK).webhooks
            return all(h.client_config.ca_bundle == bundle for h in hooks)

        _wait(written, 30, "caBundle written", procs)

        app_ns = f"app-{secrets.token_hex(3)}"
        create_namespace(core, app_ns, {"istio-injection": "enabled"})
        try:
            pod = core.create_namespaced_pod(
                app_ns,
                {
                    "metadata": {"name": "web"},
                    "spec": {
                        "serviceAccountName": "default",
                        "containers": [{"name": "app", "image": "app:1"}],
                    },
                },
            )
            names = [c.name for c in pod.spec.containers]
            inits = [c.name for c in pod.spec.init_containers or []]
            assert (names, inits) == (["app", "meshfed-proxy"], ["meshfed-init"])
            assert "sidecar.istio.io/status" in (pod.metadata.annotations or {})
            back = core.read_namespaced_pod("web", app_ns)
            assert [c.name for c in back.spec.containers] == names
            # The bundle the sidecars mount, in the injected namespace.
            copied = _wait(
                lambda: _maybe_map(core, app_ns), 30, "trust bundle in the app namespace", procs
            )
            assert copied == root_pem
        finally:
            core.delete_namespace(app_ns)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        for log in logs:
            print(f"--- {log.name}\n{log.read_text()[-4000:]}")


def _maybe_map(core: k8s.CoreV1Api, ns: str) -> str | None:
    try:
        return core.read_namespaced_config_map("meshfed-ca-root-cert", ns).data["root-cert.pem"]
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
