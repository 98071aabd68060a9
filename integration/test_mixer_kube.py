"""Mixer config as custom resources: Istio 0.2's telemetry config ``kubectl apply``-ed as
shipped, against a real API server with meshfed's CRDs, reaches a running Mixer; a broken rule is
reported with its API path and the last good version keeps serving."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import grpc
from kubernetes import client as k8s

from integration.peers.kube import KubeAPIServer
from meshfed.adapters.kubernetes.testing import create_namespace, install_crds, kubectl, until
from meshfed.config import MeshConfig, RegistryConfig
from meshfed.hub import Hub
from meshfed.mixer.api.service import MixerStub
from meshfed.mixer.attributes import codec
from meshfed.mixer.component import Mixer
from meshfed.mixer.settings import MixerSettings
from mixer.tests.testkinds import RecordKind, kinds

TELEMETRY = Path(__file__).parents[1] / "mixer" / "tests" / "data" / "istio-0.2-telemetry.yaml"


async def test_istio_telemetry_config_from_crds(kube_apiserver: KubeAPIServer, tmp_path: Path):
    binary, kubeconfig = kube_apiserver.kubectl(), kube_apiserver.kubeconfig
    install_crds(binary, kubeconfig)
    core = k8s.CoreV1Api(kube_apiserver.api_client())
    if "istio-system" not in [n.metadata.name for n in core.list_namespace().items]:
        create_namespace(core, "istio-system")
    done = kubectl(binary, kubeconfig, "apply", "-f", str(TELEMETRY))
    assert done.returncode == 0, done.stderr

    test_kinds = kinds()
    # Istio's prometheus and stdio handlers, served by a recording kind under those names
    test_kinds["prometheus"] = RecordKind(name="prometheus")
    test_kinds["stdio"] = RecordKind(name="stdio")
    mesh = MeshConfig(
        monitoring_address="127.0.0.1:0",
        registries=(RegistryConfig("k", "kubernetes", {"kubeconfig": str(kubeconfig)}),),
    )
    mixer = Mixer(MixerSettings(enabled=True, listen="127.0.0.1:0"), kinds=test_kinds)
    hub = Hub(mesh, [mixer])
    await hub.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{mixer.port}")
    try:
        await until(lambda: len(mixer.snapshot.config.rules) == 3, "the CRD config", 30)
        assert mixer.problems() == []
        bag = {
            "destination.service": "ratings.default.svc.cluster.local",
            "request.time": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
            "response.code": 404,
        }
        (request,) = codec.encode_batches([bag, {**bag, "response.code": 200}])
        await MixerStub(channel).Report(request)
        (prom,) = test_kinds["prometheus"].built
        codes = [
            m.dimensions["response_code"]
            for m in prom.reports[0]
            if m.name == "requestcount.metric.istio-system"
        ]
        assert codes == [404, 200]

        broken = TELEMETRY.read_text().replace(
            'match: "true" # If omitted match is true.', "match: request.sise > 3"
        )
        assert "request.sise" in broken
        done = kubectl(binary, kubeconfig, "apply", "-f", "-", stdin=broken)
        assert done.returncode == 0, done.stderr

        def reported() -> bool:
            return any("rules/stdio" in e.file for e in mixer.problems())

        await until(reported, "the broken rule reported", 30)
        (problem,) = [str(e) for e in mixer.problems() if "rules/stdio" in e.file]
        assert "apis/config.istio.io/v1alpha2/namespaces/istio-system/rules/stdio" in problem
        assert "spec.match" in problem
        assert len(mixer.snapshot.config.rules) == 3  # the last good stdio rule still serves
    finally:
        await channel.close()
        await hub.stop()
