"""Sidecar injection by the hub's webhook, called by the real kube-apiserver over HTTPS.

The API server dials the hub on loopback, verifies its certificate (issued by the mesh CA,
with the loopback IP as a SAN) against the ``caBundle`` the hub wrote into the
``MutatingWebhookConfiguration``, and applies the JSON Patch. Pods are read back from the API
server: what a kubelet would be told to run.
"""

from __future__ import annotations

import asyncio
import copy
import json
import subprocess
import sys
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes import client as k8s

from integration.injection_helpers import (
    WEBHOOK,
    ca_bundle_written,
    eventually,
    injector_hub,
    mesh_ca,
    webhook_configuration,
)
from integration.peers.kube import KubeAPIServer
from integration.peers.ports import free_ports
from meshfed.injection import annotations as A
from meshfed.injection.template import default_template
from meshfed.injection.workloads import TEMPLATE_PATHS

HOST = "127.0.140.10"
HOST_DOWN = "127.0.140.11"


def _pod(name: str, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, **meta},
        "spec": {
            "serviceAccountName": "web",
            "containers": [{"name": "app", "image": "app:1", "ports": [{"containerPort": 8080}]}],
        },
    }


def _names(pod: k8s.V1Pod) -> tuple[list[str], list[str]]:
    return (
        [c.name for c in pod.spec.containers],
        [c.name for c in pod.spec.init_containers or []],
    )


def _namespaces(core: k8s.CoreV1Api, run: str) -> tuple[str, str]:
    on, off = f"inj-on-{run}", f"inj-off-{run}"
    core.create_namespace(
        {
            "metadata": {
                "name": on,
                "labels": {"istio-injection": "enabled", "meshfed-test-run": run},
            }
        }
    )
    core.create_namespace({"metadata": {"name": off, "labels": {"meshfed-test-run": run}}})
    return on, off


@pytest.fixture
def admission(kube_apiserver: KubeAPIServer):
    api = k8s.AdmissionregistrationV1Api(kube_apiserver.api_client())

    def remove() -> None:
        try:
            api.delete_mutating_webhook_configuration(WEBHOOK)
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise

    remove()  # the session's API server is shared: no earlier test's configuration in the way
    yield api
    remove()


def _plain(api: k8s.ApiClient, pod: k8s.V1Pod) -> dict[str, Any]:
    return api.sanitize_for_serialization(pod)


async def test_labelled_namespaces_get_sidecars_others_do_not_and_reinjection_is_a_no_op(
    kube_apiserver: KubeAPIServer, admission: k8s.AdmissionregistrationV1Api, tmp_path: Path
) -> None:
    api_client = kube_apiserver.api_client()
    core = k8s.CoreV1Api(api_client)
    run = uuid.uuid4().hex[:6]
    on, off = _namespaces(core, run)
    ca = mesh_ca(tmp_path / "ca")
    (port,) = free_ports(1, HOST)
    admission.create_mutating_webhook_configuration(
        webhook_configuration(f"https://{HOST}:{port}/inject", "Fail", run)
    )
    async with injector_hub(kube_apiserver, tmp_path / "ca", HOST, port) as hub:
        await eventually(lambda: ca_bundle_written(kube_apiserver, ca.root_pem), 20, "caBundle")

        # Labelled namespace: the pod read back has the sidecar, the init container, the
        # volumes and the status annotation.
        await asyncio.to_thread(core.create_namespaced_pod, on, _pod("web"))
        web = core.read_namespaced_pod("web", on)
        assert _names(web) == (["app", "meshfed-proxy"], ["meshfed-init"])
        assert {"meshfed-token", "meshfed-ca-root"} <= {v.name for v in web.spec.volumes}
        status = json.loads(web.metadata.annotations[A.STATUS])
        assert status["containers"] == ["meshfed-proxy"]
        assert status["template"] == default_template().digest
        proxy = web.spec.containers[1]
        assert f"--identity=spiffe://cluster.local/ns/{on}/sa/web" in proxy.args
        assert web.metadata.labels["security.meshfed.io/tlsMode"] == "mtls"
        # The trust bundle the sidecar mounts was published into the namespace.
        root = core.read_namespaced_config_map("meshfed-ca-root-cert", on)
        assert root.data["root-cert.pem"] == ca.root_pem.decode()

        # Opt-out annotation and label; unlabelled namespace: no sidecar.
        await asyncio.to_thread(
            core.create_namespaced_pod, on, _pod("out", annotations={A.INJECT: "false"})
        )
        await asyncio.to_thread(
            core.create_namespaced_pod, on, _pod("out-label", labels={A.INJECT: "false"})
        )
        await asyncio.to_thread(core.create_namespaced_pod, off, _pod("plain"))
        for ns, name in ((on, "out"), (on, "out-label"), (off, "plain")):
            pod = core.read_namespaced_pod(name, ns)
            assert _names(pod) == (["app"], []), (ns, name)
            assert A.STATUS not in (pod.metadata.annotations or {})
        # Opt-in where the namespace is not labelled.
        await asyncio.to_thread(
            core.create_namespaced_pod, off, _pod("in", labels={A.INJECT: "true"})
        )
        assert _names(core.read_namespaced_pod("in", off)) == (
            ["app", "meshfed-proxy"],
            ["meshfed-init"],
        )
        # Host-network pods are left alone.
        host = _pod("host")
        host["spec"]["hostNetwork"] = True
        await asyncio.to_thread(core.create_namespaced_pod, on, host)
        assert _names(core.read_namespaced_pod("host", on)) == (["app"], [])

        # Re-injecting: the injected pod, submitted again, comes back unchanged.
        again = _plain(api_client, web)
        again["metadata"] = {
            "name": "web-again",
            "labels": again["metadata"]["labels"],
            "annotations": again["metadata"]["annotations"],
        }
        again.pop("status", None)
        created = await asyncio.to_thread(core.create_namespaced_pod, on, again)
        assert (
            _plain(api_client, created)["spec"]["containers"]
            == _plain(api_client, web)["spec"]["containers"]
        )
        assert (
            _plain(api_client, created)["spec"]["initContainers"]
            == _plain(api_client, web)["spec"]["initContainers"]
        )

        # The template is mesh config: a ConfigMap in the system namespace changes what the
        # next pod gets, and a broken one keeps the last good template in force.
        custom = (
            "version: custom-7\nvalues: {image: 'proxy:7'}\n"
            "containers:\n- name: meshfed-proxy\n  image: '{{image}}'\n"
            "  args: ['--namespace={{namespace}}']\n"
        )
        core.create_namespaced_config_map(
            hub.system_namespace,
            {"metadata": {"name": "meshfed-sidecar-injector"}, "data": {"config": custom}},
        )
        await eventually(lambda: hub.webhook.template.version == "custom-7", 10, "template read")
        await asyncio.to_thread(core.create_namespaced_pod, on, _pod("custom"))
        pod = core.read_namespaced_pod("custom", on)
        assert _names(pod) == (["app", "meshfed-proxy"], [])
        assert pod.spec.containers[1].image == "proxy:7"
        assert json.loads(pod.metadata.annotations[A.STATUS])["version"] == "custom-7"
        core.patch_namespaced_config_map(
            "meshfed-sidecar-injector", hub.system_namespace, {"data": {"config": "version: 1\n"}}
        )
        await eventually(lambda: hub.webhook.template_error, 10, "template error seen")
        assert hub.webhook.template.version == "custom-7"
        debug = json.loads(await _get(f"{hub.monitoring}/debug/injectz"))
        assert "expected at least one container" in debug["template"]["error"]
        assert any(e["pod"] == "web" and e["result"] == "injected" for e in debug["recent"])
        core.delete_namespaced_config_map("meshfed-sidecar-injector", hub.system_namespace)
        await eventually(lambda: hub.webhook.template.version == "meshfed-default-1", 10, "default")

        # A pod of the wrong shape for injection is refused with the field named.
        bad = _pod("bad", annotations={A.EXCLUDE_INBOUND_PORTS: "80,http"})
        with pytest.raises(k8s.ApiException) as refused:
            await asyncio.to_thread(core.create_namespaced_pod, on, bad)
        assert (
            "excludeInboundPorts" in refused.value.body and "ports 1..65535" in refused.value.body
        )


WORKLOADS = {
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "DaemonSet": "apps/v1",
    "ReplicaSet": "apps/v1",
    "Job": "batch/v1",
    "Pod": "v1",
}


def _workload(kind: str, ns: str) -> dict[str, Any]:
    template = {"metadata": {"labels": {"app": "web"}}, "spec": _pod("x")["spec"]}
    if kind == "Job":
        template["spec"]["restartPolicy"] = "Never"
    if kind == "Pod":
        return {
            **_pod("web"),
            "metadata": {"name": "web", "namespace": ns, "labels": {"app": "web"}},
        }
    return {
        "apiVersion": WORKLOADS[kind],
        "kind": kind,
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": template},
    }


async def test_kube_inject_equals_the_webhook_for_every_kind(
    kube_apiserver: KubeAPIServer, admission: k8s.AdmissionregistrationV1Api, tmp_path: Path
) -> None:
    """One manifest with every kind, through ``meshfed kube-inject --kubeconfig`` (the real CLI,
    reading the template ConfigMap the webhook follows); for each kind its pod template is
    then created as a pod twice in a labelled namespace: as written (the webhook injects it)
    and as kube-inject wrote it (the webhook leaves it alone). The API server stores the same
    pod, defaults and all."""
    api_client = kube_apiserver.api_client()
    core = k8s.CoreV1Api(api_client)
    run = uuid.uuid4().hex[:6]
    on, _ = _namespaces(core, run)
    (port,) = free_ports(1, HOST)
    admission.create_mutating_webhook_configuration(
        webhook_configuration(f"https://{HOST}:{port}/inject", "Fail", run)
    )
    ca = mesh_ca(tmp_path / "ca")
    async with injector_hub(kube_apiserver, tmp_path / "ca", HOST, port) as hub:
        await eventually(lambda: ca_bundle_written(kube_apiserver, ca.root_pem), 20, "caBundle")
        # Not the built-in template: both sides must have read the cluster's.
        text = resources.files("meshfed.injection").joinpath("default-template.yaml").read_text()
        template = yaml.safe_load(text)
        template["version"] = f"equal-{run}"
        template["values"]["image"] = "registry.example/meshfed:equal"
        core.create_namespaced_config_map(
            hub.system_namespace,
            {
                "metadata": {"name": "meshfed-sidecar-injector"},
                "data": {"config": yaml.safe_dump(template)},
            },
        )
        await eventually(lambda: hub.webhook.template.version == f"equal-{run}", 10, "template")

        docs = [_workload(kind, on) for kind in WORKLOADS]
        manifest = tmp_path / "workloads.yaml"
        manifest.write_text(yaml.safe_dump_all(docs))
        meshfed = str(Path(sys.executable).with_name("meshfed"))
        argv = [meshfed, "kube-inject", "-f", str(manifest)]
        argv += ["--kubeconfig", str(kube_apiserver.kubeconfig)]
        argv += ["--system-namespace", hub.system_namespace]
        done = await asyncio.to_thread(
            subprocess.run, argv, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        offline = list(yaml.safe_load_all(done.stdout))
        assert [d["kind"] for d in offline] == list(WORKLOADS)

        def as_pod(tpl: dict[str, Any], name: str) -> dict[str, Any]:
            meta = copy.deepcopy(tpl.get("metadata") or {})
            meta["name"] = name
            meta.pop("namespace", None)
            return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": tpl["spec"]}

        for i, (kind, doc, injected) in enumerate(zip(WORKLOADS, docs, offline, strict=True)):
            pod_tpl, offline_tpl = doc, injected
            for part in TEMPLATE_PATHS[kind]:
                pod_tpl, offline_tpl = pod_tpl[part], offline_tpl[part]
            by_webhook = await asyncio.to_thread(
                core.create_namespaced_pod, on, as_pod(pod_tpl, f"hook-{i}")
            )
            by_cli = await asyncio.to_thread(
                core.create_namespaced_pod, on, as_pod(offline_tpl, f"cli-{i}")
            )
            hook, cli = _plain(api_client, by_webhook), _plain(api_client, by_cli)
            assert [c["name"] for c in hook["spec"]["containers"]] == ["app", "meshfed-proxy"]
            assert hook["spec"]["containers"][1]["image"] == "registry.example/meshfed:equal"
            assert hook["spec"] == cli["spec"], kind
            assert hook["metadata"]["annotations"] == cli["metadata"]["annotations"], kind
            assert hook["metadata"]["labels"] == cli["metadata"]["labels"], kind
        # The workloads themselves are accepted by the API server as kube-inject wrote them.
        apps = k8s.AppsV1Api(api_client)
        apps.create_namespaced_deployment(on, offline[0], dry_run="All")


async def _get(url: str) -> str:
    """GET off the event loop's blocking paths: the hub serving it runs on this loop."""
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        assert r.status == 200, (url, r.status)
        return await r.text()


async def _metric(base: str, name: str) -> float:
    for line in (await _get(f"{base}/metrics")).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_webhook_down_fail_refuses_only_injected_namespaces_ignore_is_reported(
    kube_apiserver: KubeAPIServer, admission: k8s.AdmissionregistrationV1Api, tmp_path: Path
) -> None:
    core = k8s.CoreV1Api(kube_apiserver.api_client())
    run = uuid.uuid4().hex[:6]
    on, off = _namespaces(core, run)
    ca = mesh_ca(tmp_path / "ca")
    (port,) = free_ports(1, HOST_DOWN)
    url = f"https://{HOST_DOWN}:{port}/inject"
    admission.create_mutating_webhook_configuration(webhook_configuration(url, "Fail", run))
    # The hub writes the caBundle once, then goes away.
    async with injector_hub(kube_apiserver, tmp_path / "ca", HOST_DOWN, port):
        await eventually(lambda: ca_bundle_written(kube_apiserver, ca.root_pem), 20, "caBundle")

    # failurePolicy Fail, webhook down: refused in the injected namespace only.
    with pytest.raises(k8s.ApiException) as refused:
        await asyncio.to_thread(core.create_namespaced_pod, on, _pod("refused"))
    assert refused.value.status == 500 and "sidecar-injector.meshfed.io" in refused.value.body
    await asyncio.to_thread(core.create_namespaced_pod, off, _pod("fine"))
    assert _names(core.read_namespaced_pod("fine", off)) == (["app"], [])

    # failurePolicy Ignore: created without a sidecar...
    config = admission.read_mutating_webhook_configuration(WEBHOOK)
    ops = [
        {"op": "replace", "path": f"/webhooks/{i}/failurePolicy", "value": "Ignore"}
        for i in range(len(config.webhooks))
    ]
    admission.patch_mutating_webhook_configuration(WEBHOOK, ops)
    await asyncio.to_thread(core.create_namespaced_pod, on, _pod("bare"))
    assert _names(core.read_namespaced_pod("bare", on)) == (["app"], [])
    # ...and reported by the hub once it is back: /debug/injectz and the metric.
    async with injector_hub(kube_apiserver, tmp_path / "ca", HOST_DOWN, port) as hub:
        await eventually(lambda: f"{on}/bare" in hub.webhook.outside, 20, "pod reported outside")
        debug = json.loads(await _get(f"{hub.monitoring}/debug/injectz"))
        assert f"{on}/bare" in debug["outsideMesh"]
        assert f"{off}/fine" not in debug["outsideMesh"]
        assert await _metric(hub.monitoring, "meshfed_pods_outside_mesh") >= 1
        # With the hub up again, the next pod gets its sidecar.
        await asyncio.to_thread(core.create_namespaced_pod, on, _pod("late"))
        assert _names(core.read_namespaced_pod("late", on)) == (
            ["app", "meshfed-proxy"],
            ["meshfed-init"],
        )
        # Deleting the pod outside the mesh clears it from the report.
        core.delete_namespaced_pod("bare", on, grace_period_seconds=0)
        await eventually(lambda: f"{on}/bare" not in hub.webhook.outside, 20, "report cleared")
    await asyncio.sleep(0)
