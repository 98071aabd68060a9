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
config Pilot (in the hub that injected it) sends. Two such pods, ``client-0`` and ``web-0``
(behind a Service selecting it), then carry a request: client's sidecar -> mutual TLS ->
web's sidecar -> web's app, which sees the client's SPIFFE ID in ``x-forwarded-client-cert``.

Not done here: the init container (``meshfed iptables`` needs the pod's own network namespace;
the pods opt for ``interceptionMode: NONE`` so their sidecars bind their own IPs instead of
0.0.0.0:15001, which the machine's other tests share). A pod's loopback (the template's
``--app-address=127.0.0.1``) is the machine's here, so the app port is a free one.

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
from integration.routing_helpers import VersionBackend
from meshfed.adapters.kubernetes.testing import service
from meshfed.config import MeshConfig, RegistryConfig
from meshfed.injection import annotations as A
from meshfed.pilot.server import PilotServer
from meshfed.security.service import CAServer, KubernetesTokenReviewer, SigningService

pytestmark = pytest.mark.timeout(240)

HUB_IP, CA_IP, WEB_IP, CLIENT_IP = "127.0.141.1", "127.0.141.2", "127.0.141.10", "127.0.141.11"
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


def xfcc(request: dict[str, Any]) -> str:
    found = [v for k, v in request["headers"].items() if k.lower() == "x-forwarded-client-cert"]
    return found[0] if found else ""


async def eventually_ok(session: aiohttp.ClientSession, url: str, host: str) -> str:
    """The first 200's body: the sidecars may still be taking the new endpoint."""
    last: object = None
    for _ in range(150):
        try:
            async with session.get(
                url, headers={"Host": host}, timeout=aiohttp.ClientTimeout(total=5)
            ) as r:
                last = (r.status, await r.text())
                if r.status == 200:
                    return str(last[1])
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            last = exc
        await asyncio.sleep(0.2)
    raise AssertionError(f"no 200 from {url} (Host {host}); last: {last!r}")


class Pod:
    """One injected pod as this test's kubelet runs it: the sidecar container as a process."""

    def __init__(self, core: k8s.CoreV1Api, ns: str, name: str, sa: str, ip: str, port: int):
        self.core, self.ns, self.name, self.sa, self.ip, self.port = core, ns, name, sa, ip, port
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []

    def create(self) -> dict[str, Any]:
        created = self.core.create_namespaced_pod(
            self.ns,
            {
                "metadata": {
                    "name": self.name,
                    "labels": {"app": self.sa},
                    "annotations": {A.INTERCEPTION_MODE: "NONE"},
                },
                "spec": {
                    "serviceAccountName": self.sa,
                    "containers": [
                        {"name": "app", "image": "app:1", "ports": [{"containerPort": self.port}]}
                    ],
                },
            },
        )
        self.core.patch_namespaced_pod_status(
            self.name,
            self.ns,
            {
                "status": {
                    "phase": "Running",
                    "podIP": self.ip,
                    "podIPs": [{"ip": self.ip}],
                    "conditions": [{"type": "Ready", "status": "True"}],
                }
            },
        )
        return dict(self.core.api_client.sanitize_for_serialization(created))

    async def run_sidecar(self, pod: dict[str, Any], volumes: Path) -> None:
        argv, env, folders = kubelet_command(pod, "meshfed-proxy", self.ip, volumes)
        assert fill_volumes(self.core, pod, folders, pod["metadata"]["uid"]) == ["meshfed-ca"]
        assert argv[:2] == ["meshfed", "proxy"]
        assert f"--ip={self.ip}" in argv and f"--workload={self.name}" in argv
        argv[0] = str(Path(sys.executable).with_name("meshfed"))
        self.proc = await asyncio.create_subprocess_exec(
            *argv,
            env={**os.environ, **env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        async with asyncio.timeout(90):
            while not any(line.startswith("ready:") for line in self.lines):
                line = (await self.proc.stdout.readline()).decode()
                if not line:
                    err = await self.proc.stderr.read() if self.proc.stderr else b""
                    raise AssertionError(f"sidecar exited: {self.lines} {err.decode()[-3000:]}")
                self.lines.append(line)

    @property
    def admin(self) -> str:
        (url,) = [
            m.group(1) for line in self.lines if (m := re.search(r"admin (http://\S+?)[,)]", line))
        ]
        return url

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()


async def test_injected_pods_get_identities_config_and_talk_over_mutual_tls(
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
    for sa in ("web", "client"):
        core.create_namespaced_service_account(ns, {"metadata": {"name": sa}})

    # The CA checks service-account tokens with TokenReview, for the template's audience.
    ca = mesh_ca(tmp_path / "ca", TD)
    ca_server = CAServer(
        SigningService(ca, kubernetes=KubernetesTokenReviewer(api_client, ["meshfed-ca"])),
        f"{CA_IP}:0",
        f"{CA_IP}:0",
    )
    await ca_server.start()
    webhook_port, monitoring_port, discovery_port = free_ports(3, HUB_IP)
    app_port, client_port = free_ports(2, "127.0.0.1")
    mesh = MeshConfig(
        trust_domain=TD,
        monitoring_address=f"{HUB_IP}:{monitoring_port}",
        discovery_address=f"{HUB_IP}:{discovery_port}",
        # STRICT: web-0's sidecar takes nothing but mutual TLS, so the request below is proof.
        pilot={"mtls": {"mode": "STRICT"}},
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
    web_pod = Pod(core, ns, "web-0", "web", WEB_IP, app_port)
    client_pod = Pod(core, ns, "client-0", "client", CLIENT_IP, client_port)
    app = VersionBackend("web-app", "127.0.0.1", app_port)  # web-0's app container
    try:
        await app.start()
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
            # The Service web; no endpoint controller runs, so the hub reads its selector's
            # pods directly (the pod's IP is loopback, which an EndpointSlice may not hold).
            core.create_namespaced_service(
                ns,
                service(
                    "web",
                    [{"name": "http", "port": 80, "targetPort": app_port}],
                    selector={"app": "web"},
                ),
            )
            # Off the event loop: the API server calls this process's webhook while it waits.
            pods = {p.name: (p, await asyncio.to_thread(p.create)) for p in (web_pod, client_pod)}
            for p, spec in pods.values():
                assert [c["name"] for c in spec["spec"]["containers"]] == ["app", "meshfed-proxy"]
                await p.run_sidecar(spec, tmp_path / p.name)
                identity = f"spiffe://{TD}/ns/{ns}/sa/{p.sa}"
                # Its identity from the CA (the token checked by TokenReview)...
                assert any(line.startswith(f"identity {identity} from") for line in p.lines)
                # ...held by its Envoy, issued by the mesh CA...
                async with aiohttp.ClientSession() as session, session.get(f"{p.admin}/certs") as r:
                    certs = await r.json()
                sans = [
                    san.get("uri")
                    for entry in certs["certificates"]
                    for chain in entry.get("cert_chain") or []
                    for san in chain.get("subject_alt_names") or []
                ]
                assert identity in sans, certs
                # ...and the config of the hub that injected it, ACKed.
                assert "ACKed" in p.lines[-1] and p.name in p.lines[-1], p.lines

            # client-0 -> its sidecar -> mutual TLS -> web-0's sidecar -> web-0's app.
            host = f"web.{ns}.svc.cluster.local"
            url = f"http://{CLIENT_IP}:15001/hello"
            async with aiohttp.ClientSession() as session:
                body = await eventually_ok(session, url, host)
            assert body == "web-app"
            seen = [xfcc(r) for r in app.requests if r["path"] == "/hello"]
            assert seen and f"URI=spiffe://{TD}/ns/{ns}/sa/client" in seen[-1], seen
    finally:
        await client_pod.stop()
        await web_pod.stop()
        await app.stop()
        await ca_server.stop()
        try:
            admission.delete_mutating_webhook_configuration(WEBHOOK)
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise
