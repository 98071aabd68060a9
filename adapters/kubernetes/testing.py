"""Helpers for tests and benchmarks that drive a real API server (no kubelet, no controllers).

With no kubelet, a "pod" is an object whose ``status.podIP`` (loopback, set through the status
subresource, as a kubelet would) names a process the test started; with no controller-manager,
nothing writes EndpointSlices, so a test either writes them itself or lets the adapter read the
pods of a selector Service (:func:`~adapters.kubernetes.mapping.selector_endpoints`). The API
server rejects loopback addresses in EndpointSlices and Endpoints, so slices written by tests use
RFC 5737 documentation addresses and are never dialed.

Nothing here imitates the API server: every helper calls the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from meshfed.adapters.kubernetes.registry import KubernetesRegistry, parse_params
from meshfed.registry.aggregate import Member

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
CRD_DIR = MANIFESTS / "crds"


def kubectl(
    binary: Path | str, kubeconfig: Path | str, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run kubectl against ``kubeconfig``; the result is returned, never raised."""
    return subprocess.run(
        [str(binary), "--kubeconfig", str(kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def install_crds(binary: Path | str, kubeconfig: Path | str) -> None:
    """``kubectl apply`` the shipped CRDs and wait until the API server serves them."""
    done = kubectl(binary, kubeconfig, "apply", "-f", str(CRD_DIR))
    if done.returncode != 0:
        raise RuntimeError(f"kubectl apply of the CRDs failed: {done.stderr}")
    waited = kubectl(
        binary,
        kubeconfig,
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "-f",
        str(CRD_DIR),
    )
    if waited.returncode != 0:
        raise RuntimeError(f"CRDs not established: {waited.stderr}")


def create_namespace(core: k8s.CoreV1Api, name: str, labels: Mapping[str, str] = {}) -> None:
    core.create_namespace({"metadata": {"name": name, "labels": dict(labels)}})


def service(
    name: str,
    ports: Sequence[Mapping[str, Any]],
    selector: Mapping[str, str] | None = None,
    headless: bool = False,
    labels: Mapping[str, str] = {},
) -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": [dict(p) for p in ports]}
    if selector is not None:
        spec["selector"] = dict(selector)
    if headless:
        spec["clusterIP"] = "None"
    return {"metadata": {"name": name, "labels": dict(labels)}, "spec": spec}


def create_pod(
    core: k8s.CoreV1Api,
    namespace: str,
    name: str,
    ip: str,
    labels: Mapping[str, str],
    *,
    ready: bool = True,
    service_account: str = "default",
    hostname: str = "",
    subdomain: str = "",
    node: str = "",
    container_ports: Sequence[Mapping[str, Any]] = (),
) -> None:
    """A pod object plus the status a kubelet would report (IP, Ready condition)."""
    spec: dict[str, Any] = {
        "serviceAccountName": service_account,
        "containers": [
            {"name": "app", "image": "none", "ports": [dict(p) for p in container_ports]}
        ],
    }
    if hostname:
        spec["hostname"] = hostname
    if subdomain:
        spec["subdomain"] = subdomain
    if node:
        spec["nodeName"] = node
    core.create_namespaced_pod(
        namespace, {"metadata": {"name": name, "labels": dict(labels)}, "spec": spec}
    )
    core.patch_namespaced_pod_status(
        name,
        namespace,
        {
            "status": {
                "phase": "Running",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            }
        },
    )


def set_pod_ready(core: k8s.CoreV1Api, namespace: str, name: str, ready: bool) -> None:
    core.patch_namespaced_pod_status(
        name,
        namespace,
        {"status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}},
    )


def endpoint_slice(
    name: str,
    service_name: str,
    ports: Sequence[Mapping[str, Any]],
    endpoints: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service_name}},
        "addressType": "IPv4",
        "ports": [dict(p) for p in ports],
        "endpoints": [dict(e) for e in endpoints],
    }


def slice_endpoint(
    address: str,
    ready: bool = True,
    pod: str = "",
    namespace: str = "",
    hostname: str = "",
    node: str = "",
) -> dict[str, Any]:
    out: dict[str, Any] = {"addresses": [address], "conditions": {"ready": ready}}
    if pod:
        out["targetRef"] = {"kind": "Pod", "name": pod, "namespace": namespace}
    if hostname:
        out["hostname"] = hostname
    if node:
        out["nodeName"] = node
    return out


@contextlib.asynccontextmanager
async def running_registry(
    member: Member,
    kubeconfig: Path | str,
    trust_domain: str = "cluster.local",
    sync_timeout: float = 30.0,
    **params: Any,
) -> AsyncIterator[KubernetesRegistry]:
    """Run a KubernetesRegistry for ``member`` until the block ends; yields once synced."""
    registry = KubernetesRegistry(
        member, parse_params({"kubeconfig": str(kubeconfig), **params}), trust_domain
    )
    task = asyncio.create_task(registry.run())
    try:
        deadline = time.monotonic() + sync_timeout
        while not member.synced:
            if task.done():
                task.result()
            if time.monotonic() > deadline:
                raise TimeoutError(f"kubernetes registry not synced after {sync_timeout}s")
            await asyncio.sleep(0.05)
        yield registry
    finally:
        await registry.stop()
        await asyncio.wait_for(task, 15)


async def until(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Poll ``check`` on the loop until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
