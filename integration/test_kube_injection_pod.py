"""The injected pod runs: the test plays kubelet for the pod the real kube-apiserver stored.

There is no kubelet here (and no container engine), so the test does what a kubelet would do
with the injected sidecar container, and nothing more: it gives the pod an IP (a loopback
address, written into the pod's status), resolves the container's ``env`` (``fieldRef``s to the
pod's name, namespace and IP), mounts its volumes as folders (the projected service-account
token minted by the API server's TokenRequest with the volume's audience and bound to the pod;
the ``meshfed-ca-root-cert`` ConfigMap the hub published), expands ``$(VAR)`` in the arguments
and starts the container's command as a local process. The sidecar then proves it joined the
mesh by itself: the CA (checking the token with TokenReview against the same API server) gives
it ``spiffe://cluster.local/ns/<ns>/sa/<sa>``, which its Envoy holds, and its Envoy ACKs the
config Pilot (in the hub that injected it) sends.

Not done here: the init container (``meshfed iptables`` needs the pod's own network namespace;
the pod opts for ``interceptionMode: NONE`` so its sidecar binds its own IP instead of
0.0.0.0:15001, which the machine's other tests share), and traffic between two such pods.

Hosts: 127.0.141.x.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
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
from meshfed.config import MeshConfig, RegistryConfig
from meshfed.injection import annotations as A
from meshfed.pilot.server import PilotServer
from meshfed.security.service import CAServer, KubernetesTokenReviewer, SigningService

pytestmark = pytest.mark.timeout(240)

HUB_IP, CA_IP, POD_IP = "127.0.141.1", "127.0.141.2", "127.0.141.10"
TD = "cluster.local"


def kubelet_command(
    pod: dict[str, Any], container: str, pod_ip: str, volumes_dir: Path
) -> tuple[list[str], dict[str, str], dict[str, Path]]:
    """What a kubelet runs for ``container``: argv, env, and each volume mount's folder here.

    Mount paths are mapped to folders under ``volumes_dir`` (the process has no mount
    namespace), and every argument naming a mount path is rewritten to the folder."""
    spec = pod["spec"]
    (c,) = [c for c in spec["containers"] if c["name"] == container]
    fields = {
        "metadata.name": pod["metadata"]["name"],
        "metadata.namespace": pod["metadata"]["namespace"],
        "status.podIP": pod_ip,
    }
    env: dict[str, str] = {}
    for var in c.get("env") or []:
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
    mounts = {m["mountPath"]: volumes_dir / m["name"] for m in c.get("volumeMounts") or []}

    def expand(arg: str) -> str:
        arg = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), arg)
        for path, folder in mounts.items():
            arg = arg.replace(path.rstrip("/") + "/", f"{folder}/")
        return arg

    argv = [expand(a) for a in [*(c.get("command") or []), *(c.get("args") or [])]]
    by_volume = {m["name"]: volumes_dir / m["name"] for m in c.get("volumeMounts") or []}
    return argv, env, by_volume


def fill_volumes(
    core: k8s.CoreV1Api, pod: dict[str, Any], folders: dict[str, Path], uid: str
) -> list[str]:
    """Fill each mounted volume as a kubelet would; return the token audiences requested."""
    ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    audiences = []
    for volume in pod["spec"]["volumes"]:
        folder = folders.get(volume["name"])
        if folder is None:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        for source in (volume.get("projected") or {}).get("sources") or []:
            sat = source.get("serviceAccountToken")
            if sat is None:
                continue
            request = k8s.AuthenticationV1TokenRequest(
                spec=k8s.V1TokenRequestSpec(
                    audiences=[sat["audience"]],
                    expiration_seconds=sat.get("expirationSeconds", 3600),
                    bound_object_ref=k8s.V1BoundObjectReference(
                        api_version="v1", kind="Pod", name=name, uid=uid
                    ),
                )
            )
            token = core.create_namespaced_service_account_token(
                pod["spec"]["serviceAccountName"], ns, request
            )
            (folder / sat["path"]).write_text(token.status.token)
            audiences.append(sat["audience"])
        if "configMap" in volume:
            cm = core.read_namespaced_config_map(volume["configMap"]["name"], ns)
            for key, value in (cm.data or {}).items():
                (folder / key).write_text(value)
    return audiences


async def test_injected_sidecar_gets_its_identity_from_the_ca_and_config_from_the_hub(
    kube_apiserver: KubeAPIServer, tmp_path: Path
) -> None:
    api_client = kube_apiserver.api_client()
    core = k8s.CoreV1Api(api_client)
    admission = k8s.AdmissionregistrationV1Api(api_client)
    run = uuid.uuid4().hex[:6]
    ns = f"inj-pod-{run}"
    core.create_namespace(
        {
            "metadata": {
                "name": ns,
                "labels": {"istio-injection": "enabled", "meshfed-test-run": run},
            }
        }
    )
    core.create_namespaced_service_account(ns, {"metadata": {"name": "web"}})

    # The CA checks service-account tokens with TokenReview, for the template's audience.
    ca = mesh_ca(tmp_path / "ca", TD)
    ca_server = CAServer(
        SigningService(ca, kubernetes=KubernetesTokenReviewer(api_client, ["meshfed-ca"])),
        f"{CA_IP}:0",
        f"{CA_IP}:0",
    )
    await ca_server.start()
    webhook_port, monitoring_port, discovery_port = free_ports(3, HUB_IP)
    mesh = MeshConfig(
        trust_domain=TD,
        monitoring_address=f"{HUB_IP}:{monitoring_port}",
        discovery_address=f"{HUB_IP}:{discovery_port}",
        registries=(
            RegistryConfig(
                "k8s",
                "kubernetes",
                {"kubeconfig": str(kube_apiserver.kubeconfig), "namespaces": [ns]},
            ),
        ),
    )
    admission.create_mutating_webhook_configuration(
        webhook_configuration(f"https://{HUB_IP}:{webhook_port}/inject", "Fail", run)
    )
    proc: asyncio.subprocess.Process | None = None
    try:
        async with injector_hub(
            kube_apiserver,
            tmp_path / "ca",
            HUB_IP,
            webhook_port,
            mesh=mesh,
            components=[PilotServer()],
        ) as hub:
            await eventually(lambda: ca_bundle_written(kube_apiserver, ca.root_pem), 20, "caBundle")
            # The template is the built-in one with this mesh's addresses: what an operator
            # puts in the ConfigMap for a cluster whose hub and CA live elsewhere.
            text = resources.files("meshfed.injection").joinpath("default-template.yaml")
            template = yaml.safe_load(text.read_text())
            template["version"] = f"pod-runs-{run}"
            template["values"].update(
                pilot=f"{HUB_IP}:{discovery_port}",
                hub=f"http://{HUB_IP}:{monitoring_port}",
                ca=ca_server.bootstrap_target,
                caRenewal=ca_server.renewal_target,
                trustDomain=TD,
            )
            core.create_namespaced_config_map(
                hub.system_namespace,
                {
                    "metadata": {"name": "meshfed-sidecar-injector"},
                    "data": {"config": yaml.safe_dump(template)},
                },
            )
            await eventually(
                lambda: hub.webhook.template.version == template["version"], 10, "template"
            )

            created = core.create_namespaced_pod(
                ns,
                {
                    "metadata": {
                        "name": "web-0",
                        "labels": {"app": "web"},
                        "annotations": {A.INTERCEPTION_MODE: "NONE"},
                    },
                    "spec": {
                        "serviceAccountName": "web",
                        "containers": [
                            {"name": "app", "image": "app:1", "ports": [{"containerPort": 8080}]}
                        ],
                    },
                },
            )
            pod = api_client.sanitize_for_serialization(created)
            assert [c["name"] for c in pod["spec"]["containers"]] == ["app", "meshfed-proxy"]
            core.patch_namespaced_pod_status(
                "web-0", ns, {"status": {"podIP": POD_IP, "podIPs": [{"ip": POD_IP}]}}
            )

            # Playing kubelet for the sidecar container.
            argv, env, folders = kubelet_command(pod, "meshfed-proxy", POD_IP, tmp_path / "vol")
            audiences = fill_volumes(core, pod, folders, pod["metadata"]["uid"])
            assert audiences == ["meshfed-ca"]
            assert argv[:2] == ["meshfed", "proxy"]
            assert f"--ip={POD_IP}" in argv and "--workload=web-0" in argv
            argv[0] = str(Path(sys.executable).with_name("meshfed"))
            proc = await asyncio.create_subprocess_exec(
                *argv,
                env={**os.environ, **env},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
            assert proc.stdout is not None
            lines: list[str] = []
            async with asyncio.timeout(90):
                while not any(line.startswith("ready:") for line in lines):
                    line = (await proc.stdout.readline()).decode()
                    if not line:
                        err = await proc.stderr.read() if proc.stderr else b""
                        raise AssertionError(f"sidecar exited: {lines} {err.decode()[-3000:]}")
                    lines.append(line)
            identity = f"spiffe://{TD}/ns/{ns}/sa/web"
            assert any(line.startswith(f"identity {identity} from") for line in lines), lines

            # Its Envoy holds a certificate for that identity, issued by the mesh CA...
            (admin,) = [
                m.group(1) for line in lines if (m := re.search(r"admin (http://\S+?)[,)]", line))
            ]
            async with aiohttp.ClientSession() as session, session.get(f"{admin}/certs") as r:
                certs = await r.json()
            sans = [
                san.get("uri")
                for entry in certs["certificates"]
                for chain in entry.get("cert_chain") or []
                for san in chain.get("subject_alt_names") or []
            ]
            assert identity in sans, certs
            # ...and ACKed the config of the hub that injected it.
            assert "ACKed" in lines[-1] and "web-0" in lines[-1]
    finally:
        if proc is not None and proc.returncode is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        await ca_server.stop()
        try:
            admission.delete_mutating_webhook_configuration(WEBHOOK)
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise
