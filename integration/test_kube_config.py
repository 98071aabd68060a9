"""Mesh config with ``kubectl``: the shipped CRDs and hub manifests against a real API server, and
the CRD-backed config store following ``kubectl apply`` / ``kubectl delete``.

Istio 0.2's documents (``config.istio.io/v1alpha2``) are applied exactly as that release wrote
them; the store must parse them as the file store does, report what the schema cannot catch as an
Event with the file store's error text, and keep the last good version.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from kubernetes import client as k8s

from integration.peers.kube import KubeAPIServer
from meshfed.adapters.kubernetes.configstore import error_text
from meshfed.adapters.kubernetes.namespaces import NamespaceFilter
from meshfed.adapters.kubernetes.testing import (
    MANIFESTS,
    create_namespace,
    install_crds,
    kubectl,
    until,
)
from meshfed.configstores import routing_kube_store
from meshfed.pilot.config.store import ConfigSnapshot, parse_config_file

ISTIO_02 = """apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {name: reviews-jason}
spec:
  destination: {name: reviews}
  precedence: 2
  match:
    source: {name: productpage, labels: {version: v1}}
    request:
      headers:
        cookie: {regex: "^(.*?;)?(user=jason)(;.*)?$"}
  route:
  - labels: {version: v2}
---
apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {name: reviews-split}
spec:
  destination: {name: reviews}
  precedence: 1
  route:
  - {labels: {version: v1}, weight: 75}
  - {labels: {version: v3}, weight: 25}
  httpReqTimeout: {simpleTimeout: {timeout: 1.5s}}
  httpReqRetries: {simpleRetry: {attempts: 3, perTryTimeout: 200ms}}
  httpFault: {delay: {percent: 10, fixedDelay: 5s}, abort: {percent: 20, httpStatus: 503}}
---
apiVersion: config.istio.io/v1alpha2
kind: DestinationPolicy
metadata: {name: reviews-cb}
spec:
  destination: {name: reviews, labels: {version: v1}}
  loadBalancing: {name: LEAST_CONN}
  circuitBreaker:
    simpleCb: {maxConnections: 100, httpMaxPendingRequests: 10, sleepWindow: 15m,
               httpConsecutiveErrors: 7, httpDetectionInterval: 5m, httpMaxEjectionPercent: 50}
---
apiVersion: config.istio.io/v1alpha2
kind: EgressRule
metadata: {name: google}
spec:
  destination: {service: "*.googleapis.com"}
  ports:
  - {port: 443, protocol: https}
"""


def _ns(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _refs(snapshot: ConfigSnapshot, ns: str) -> list[str]:
    every = [
        *snapshot.route_rules,
        *snapshot.destination_policies,
        *snapshot.egress_rules,
        *snapshot.gateways,
    ]
    return [o.ref for o in every if o.namespace == ns]


def test_crds_apply_and_kubectl_rejects_structurally_wrong_objects(
    kube_apiserver: KubeAPIServer, tmp_path: Path
) -> None:
    binary, kubeconfig = kube_apiserver.kubectl(), kube_apiserver.kubeconfig
    install_crds(binary, kubeconfig)
    names = kubectl(binary, kubeconfig, "get", "crd", "-o", "name").stdout.split()
    prefix = "customresourcedefinition.apiextensions.k8s.io/"
    for plural in ("serviceentries", "workloadentries"):
        assert f"{prefix}{plural}.networking.meshfed.io" in names
    for group in ("config.meshfed.io", "config.istio.io"):
        for plural in ("routerules", "destinationpolicies", "egressrules", "gateways"):
            assert f"{prefix}{plural}.{group}" in names
    ns = _ns("crd")
    create_namespace(k8s.CoreV1Api(kube_apiserver.api_client()), ns)
    cases = {
        "hosts is a string": ("hosts: billing.example.com", "spec.hosts"),
        "port number is text": (
            "hosts: [b.example.com]\n  ports: [{number: eighty, name: http}]",
            "spec.ports[0].number",
        ),
        "unknown field": (
            "hosts: [b.example.com]\n  ports: [{number: 80, name: http}]\n  hostz: x",
            "hostz",
        ),
        "bad resolution": (
            "hosts: [b.example.com]\n  ports: [{number: 80, name: http}]\n"
            "  resolution: ROUND_ROBIN",
            "spec.resolution",
        ),
    }
    for what, (spec, field) in cases.items():
        manifest = tmp_path / "bad.yaml"
        manifest.write_text(
            "apiVersion: networking.meshfed.io/v1alpha1\nkind: ServiceEntry\n"
            f"metadata: {{name: bad, namespace: {ns}}}\nspec:\n  {spec}\n"
        )
        done = kubectl(binary, kubeconfig, "apply", "-f", str(manifest))
        assert done.returncode != 0, what
        assert field in done.stderr, (what, done.stderr)
    # Istio 0.2's documents apply as written (the strict field validation of kubectl passes).
    manifest = tmp_path / "istio.yaml"
    manifest.write_text(ISTIO_02)
    done = kubectl(binary, kubeconfig, "apply", "-n", ns, "-f", str(manifest))
    assert done.returncode == 0, done.stderr
    listed = kubectl(
        binary, kubeconfig, "get", "routerules.config.istio.io", "-n", ns, "-o", "name"
    )
    assert sorted(listed.stdout.split()) == [
        "routerule.config.istio.io/reviews-jason",
        "routerule.config.istio.io/reviews-split",
    ]


def test_hub_manifests_apply_with_least_privilege(kube_apiserver: KubeAPIServer) -> None:
    binary, kubeconfig = kube_apiserver.kubectl(), kube_apiserver.kubeconfig
    done = kubectl(binary, kubeconfig, "apply", "-f", str(MANIFESTS / "hub"))
    assert done.returncode == 0, done.stderr
    deployment = k8s.AppsV1Api(kube_apiserver.api_client()).read_namespaced_deployment(
        "meshfed-hub", "meshfed-system"
    )
    probe = deployment.spec.template.spec.containers[0].readiness_probe
    assert probe.http_get.path == "/healthz/ready"
    assert deployment.spec.template.spec.service_account_name == "meshfed-hub"
    account = "system:serviceaccount:meshfed-system:meshfed-hub"

    def can(verb: str, resource: str, *extra: str) -> bool:
        done = kubectl(binary, kubeconfig, "auth", "can-i", verb, resource, "--as", account, *extra)
        return done.stdout.strip() == "yes"

    for resource in (
        "services",
        "endpointslices.discovery.k8s.io",
        "pods",
        "nodes",
        "namespaces",
        "serviceentries.networking.meshfed.io",
        "routerules.config.istio.io",
        "gateways.config.meshfed.io",
        "ingresses.networking.k8s.io",
    ):
        assert can("watch", resource, "-A"), resource
    assert can("create", "events", "-n", "default")
    for verb, resource in (
        ("create", "services"),
        ("delete", "pods"),
        ("update", "routerules.config.istio.io"),
        ("get", "secrets"),
        ("create", "serviceentries.networking.meshfed.io"),
    ):
        assert not can(verb, resource, "-A"), (verb, resource)


async def test_config_store_follows_kubectl_with_errors_as_events(
    kube_apiserver: KubeAPIServer, tmp_path: Path
) -> None:
    binary, kubeconfig = kube_apiserver.kubectl(), kube_apiserver.kubeconfig
    await asyncio.to_thread(install_crds, binary, kubeconfig)
    api = kube_apiserver.api_client()
    core = k8s.CoreV1Api(api)
    ns = _ns("cfg")
    create_namespace(core, ns)
    store = routing_kube_store(api, NamespaceFilter(names=[ns]))
    snapshots: list[ConfigSnapshot] = []
    store.subscribe(snapshots.append)
    task = asyncio.create_task(store.run())
    try:
        await store.wait_synced(30)
        assert _refs(store.snapshot, ns) == []
        manifest = tmp_path / "istio.yaml"
        manifest.write_text(ISTIO_02)
        assert kubectl(binary, kubeconfig, "apply", "-n", ns, "-f", str(manifest)).returncode == 0
        expected = [
            f"RouteRule {ns}/reviews-jason",
            f"RouteRule {ns}/reviews-split",
            f"DestinationPolicy {ns}/reviews-cb",
            f"EgressRule {ns}/google",
        ]
        await until(lambda: _refs(store.snapshot, ns) == expected, "the four objects", 20)
        assert store.errors == []
        # Parsed as the file store parses the same documents (rule order included).
        file_objects, file_errors = parse_config_file(manifest)
        assert file_errors == [] and file_objects is not None
        by_file = ConfigSnapshot.of(file_objects)
        assert [r.name for r in store.snapshot.route_rules if r.namespace == ns] == [
            r.name for r in by_file.route_rules
        ]
        split = next(r for r in store.snapshot.route_rules if r.name == "reviews-split")
        split_file = next(r for r in by_file.route_rules if r.name == "reviews-split")
        assert split.route == split_file.route and split.fault == split_file.fault

        # Re-applying the same manifest changes nothing and tells no one.
        count = len(snapshots)
        assert kubectl(binary, kubeconfig, "apply", "-n", ns, "-f", str(manifest)).returncode == 0
        await asyncio.sleep(1.0)
        assert len(snapshots) == count

        # Valid for the schema, invalid for the parser: weights summing to 90.
        broken = ISTIO_02.replace("weight: 25", "weight: 15")
        manifest.write_text(broken)
        assert kubectl(binary, kubeconfig, "apply", "-n", ns, "-f", str(manifest)).returncode == 0
        await until(lambda: len(store.errors) == 1, "the error", 20)
        (error,) = store.errors
        broken_file = tmp_path / "broken.yaml"
        broken_file.write_text(broken)
        _, file_errors = parse_config_file(broken_file)
        # The file store's own field path and message for the same document.
        assert [(e.field, e.message) for e in file_errors] == [(error.field, error.message)]
        assert (
            error.file == f"apis/config.istio.io/v1alpha2/namespaces/{ns}/routerules/reviews-split"
        )

        def warning() -> str | None:
            listed = core.list_namespaced_event(
                ns, field_selector="involvedObject.name=reviews-split,reason=InvalidConfig"
            )
            return listed.items[0].message if listed.items else None

        await until(lambda: warning() is not None, "InvalidConfig event", 20)
        assert warning() == error_text(file_errors)
        # The last good version stays in force.
        split_now = next(r for r in store.snapshot.route_rules if r.name == "reviews-split")
        assert split_now == split

        # Fixing the object applies it again and says so on the object.
        manifest.write_text(ISTIO_02)
        assert kubectl(binary, kubeconfig, "apply", "-n", ns, "-f", str(manifest)).returncode == 0
        await until(lambda: store.errors == [], "the fix", 20)

        def valid_event() -> bool:
            listed = core.list_namespaced_event(
                ns, field_selector="involvedObject.name=reviews-split,reason=Valid"
            )
            return bool(listed.items) and listed.items[0].type == "Normal"

        await until(valid_event, "Valid event", 20)

        # kubectl delete undoes it.
        assert kubectl(binary, kubeconfig, "delete", "-n", ns, "-f", str(manifest)).returncode == 0
        await until(lambda: _refs(store.snapshot, ns) == [], "deleted", 20)
        assert store.errors == []
        assert store.describe()["synced"] is True
    finally:
        store.stop()
        await asyncio.wait_for(task, 15)
