"""Mixer inside a hub, its attributes filled from the federated registry.

(Two more tests do the same for an instance registered with a real Eureka server and for a
pod of a real Kubernetes API server.)

A real Consul agent holds one workload (an external node registered through the catalog API,
labels from its service meta) and a static file holds a VM (WorkloadEntry). A gRPC client
written against Mixer's protos sends Check with only ``source.ip``; a rule admits callers whose
``source.labels["app"]`` is ``frontend``. Both the Consul node and the VM get their labels (and
the VM its service account and namespace) from the one aggregate, and a relabelled Consul service
is denied as soon as the registry hears of it.

The same proof with the built-in ``listchecker`` as Istio 0.2 documented it: a whitelist of
``source.labels["app"]`` admits the Consul node and the VM, and refuses a Consul node labelled
otherwise (until Consul relabels it) and an address no registry knows.
"""

from __future__ import annotations

import asyncio
import ipaddress
import textwrap
from pathlib import Path

import aiohttp
import consul
import grpc

from integration.pilot_helpers import eventually
from meshfed.config import MeshConfig, RegistryConfig
from meshfed.hub import Hub
from meshfed.mixer.api.service import MixerStub
from meshfed.mixer.api.v1 import check_pb2
from meshfed.mixer.attributes import codec
from meshfed.mixer.attributes.dictionary import GLOBAL_WORDS
from meshfed.mixer.component import Mixer
from meshfed.mixer.handlers import listchecker
from meshfed.mixer.settings import MixerSettings
from mixer.tests.testkinds import kinds

CONSUL_IP, VM_IP, STRANGER_IP = "127.0.96.5", "127.0.96.6", "127.0.96.7"

SERVICES = f"""\
apiVersion: networking.meshfed.io/v1alpha1
kind: ServiceEntry
metadata: {{name: frontend, namespace: shop}}
spec:
  hosts: [frontend.shop.svc.cluster.local]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: STATIC
  workloadSelector: {{labels: {{app: frontend}}}}
---
apiVersion: networking.meshfed.io/v1alpha1
kind: WorkloadEntry
metadata: {{name: vm-1, namespace: shop}}
spec:
  address: {VM_IP}
  labels: {{app: frontend, version: v1}}
  serviceAccount: frontend-vm
"""

POLICY = """\
apiVersion: config.istio.io/v1alpha2
kind: testdeny
metadata: {name: strangers, namespace: istio-system}
spec:
  status: {code: 7, message: only frontends}
---
apiVersion: config.istio.io/v1alpha2
kind: checknothing
metadata: {name: any, namespace: istio-system}
spec:
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: frontends-only, namespace: istio-system}
spec:
  match: (source.labels["app"] | "none") != "frontend"
  actions:
  - handler: strangers.testdeny
    instances: [any.checknothing]
---
apiVersion: config.istio.io/v1alpha2
kind: testrecord
metadata: {name: seen, namespace: istio-system}
spec:
---
apiVersion: config.istio.io/v1alpha2
kind: listentry
metadata: {name: who, namespace: istio-system}
spec:
  value: source.serviceAccount | "-"
"""


RECORD = textwrap.dedent(
    """\
    ---
    apiVersion: config.istio.io/v1alpha2
    kind: rule
    metadata: {name: record, namespace: istio-system}
    spec:
      actions:
      - handler: seen.testrecord
        instances: [who.listentry]
    """
)


def register(agent, app: str) -> None:
    c = consul.Consul(host=agent.host, port=agent.http_port)
    assert c.catalog.register(
        "node-a",
        CONSUL_IP,
        service={"Service": "legacy", "ID": "legacy-1", "Port": 80, "Meta": {"app": app}},
    )


async def test_labels_from_consul_and_a_vm(consul_agent, tmp_path: Path):
    services = tmp_path / "services.yaml"
    services.write_text(SERVICES)
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "mixer.yaml").write_text(POLICY + RECORD)
    register(consul_agent, "frontend")
    mesh = MeshConfig(
        monitoring_address="127.0.0.1:0",
        registries=(
            RegistryConfig("consul", "consul", {"address": consul_agent.http_addr, "wait": "5s"}),
            RegistryConfig("vms", "static", {"paths": [str(services)]}),
        ),
    )
    settings = MixerSettings(enabled=True, listen="127.0.0.1:0", config_paths=(str(policy),))
    test_kinds = kinds()
    mixer = Mixer(settings, kinds=test_kinds)
    hub = Hub(mesh, [mixer])
    await hub.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{mixer.port}")
    stub = MixerStub(channel)

    async def check(ip: str) -> check_pb2.CheckResponse:
        attributes = codec.encode({"source.ip": ipaddress.ip_address(ip).packed})
        return await stub.Check(check_pb2.CheckRequest(attributes=attributes))

    async def code(ip: str, want: int) -> bool:
        return (await check(ip)).precondition.status.code == want

    try:
        assert mixer.problems() == [], mixer.problems()
        await eventually(lambda: code(CONSUL_IP, 0), 20, "the Consul node to be admitted")
        assert await code(VM_IP, 0)
        denied = await check(STRANGER_IP)
        assert denied.precondition.status.code == 7
        assert "only frontends" in denied.precondition.status.message

        (recorder,) = test_kinds["testrecord"].built
        seen = {e.value for e in recorder.checks}
        assert "frontend-vm" in seen  # the VM's identity -> source.serviceAccount

        # the Consul service is relabelled: denied once the registry has the change
        register(consul_agent, "backend")
        await eventually(lambda: code(CONSUL_IP, 7), 20, "the relabelled Consul node denied")
        assert await code(VM_IP, 0)

        # the hub's monitoring port serves Mixer's debug page and metrics
        base = f"http://127.0.0.1:{hub.monitoring_port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/debug/mixerz") as resp:
                body = await resp.json()
            async with session.get(f"{base}/metrics") as resp:
                text = await resp.text()
            async with session.get(f"{base}/healthz/ready") as resp:
                ready = await resp.json()
        assert [r["name"] for r in body["rules"]] == [
            "frontends-only.rule.istio-system",
            "record.rule.istio-system",
        ]
        assert body["problems"] == [] and body["failPolicy"] == "closed"
        assert 'meshfed_mixer_checks_total{code="7"}' in text
        assert "mixer has not loaded its config" not in ready["not_ready"]
    finally:
        await channel.close()
        await hub.stop()
        await asyncio.sleep(0)


async def test_labels_from_eureka(eureka_server, tmp_path: Path):
    """A Eureka instance's metadata is its labels: admitted like the Consul node and the VM."""
    from meshfed.adapters.eureka.testing import EurekaRest, instance_doc

    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "mixer.yaml").write_text(POLICY)
    mesh = MeshConfig(
        monitoring_address="127.0.0.1:0",
        registries=(
            RegistryConfig(
                "eureka",
                "eureka",
                {"servers": [eureka_server.eureka_url], "fetchInterval": "200ms"},
            ),
        ),
    )
    mixer = Mixer(
        MixerSettings(enabled=True, listen="127.0.0.1:0", config_paths=(str(policy),)),
        kinds=kinds(),
    )
    hub = Hub(mesh, [mixer])
    await hub.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{mixer.port}")
    stub = MixerStub(channel)
    eureka_ip = "127.0.96.8"

    async def code(ip: str, want: int) -> bool:
        attributes = codec.encode({"source.ip": ipaddress.ip_address(ip).packed})
        reply = await stub.Check(check_pb2.CheckRequest(attributes=attributes))
        return reply.precondition.status.code == want

    try:
        async with EurekaRest(eureka_server.eureka_url) as rest:
            doc = instance_doc("mixer-web", "w1", eureka_ip, 8080, metadata={"app": "frontend"})
            assert await rest.register(doc) == 204
            await eventually(lambda: code(eureka_ip, 0), 30, "the Eureka instance admitted")
            assert await code(STRANGER_IP, 7)
            await rest.cancel("mixer-web", "w1")
    finally:
        await channel.close()
        await hub.stop()


async def test_labels_and_identity_from_a_kubernetes_pod(kube_apiserver, tmp_path: Path):
    """A pod behind an EndpointSlice: its labels, namespace and service account."""
    import uuid

    from kubernetes import client as k8s

    from meshfed.adapters.kubernetes.testing import (
        create_namespace,
        create_pod,
        endpoint_slice,
        service,
        slice_endpoint,
    )

    ns = f"mixer-{uuid.uuid4().hex[:6]}"
    # EndpointSlices refuse loopback addresses; TEST-NET-1 is data only here (never dialled),
    # as in the Kubernetes registry's own tests
    pod_ip = "192.0.2.96"
    api = kube_apiserver.api_client()
    core, discovery = k8s.CoreV1Api(api), k8s.DiscoveryV1Api(api)
    create_namespace(core, ns)
    core.create_namespaced_service(ns, service("web", [{"name": "http", "port": 80}]))
    create_pod(core, ns, "web-1", pod_ip, {"app": "frontend"}, service_account="web-sa")
    discovery.create_namespaced_endpoint_slice(
        ns,
        endpoint_slice(
            "web-a",
            "web",
            [{"name": "http", "port": 8080, "protocol": "TCP"}],
            [slice_endpoint(pod_ip, pod="web-1", namespace=ns)],
        ),
    )
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "mixer.yaml").write_text(POLICY + RECORD)
    mesh = MeshConfig(
        monitoring_address="127.0.0.1:0",
        registries=(
            RegistryConfig("k8s", "kubernetes", {"kubeconfig": str(kube_apiserver.kubeconfig)}),
        ),
    )
    test_kinds = kinds()
    settings = MixerSettings(
        enabled=True, listen="127.0.0.1:0", config_paths=(str(policy),), kubernetes=False
    )
    mixer = Mixer(settings, kinds=test_kinds)
    hub = Hub(mesh, [mixer])
    await hub.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{mixer.port}")
    stub = MixerStub(channel)

    async def code(ip: str, want: int) -> bool:
        attributes = codec.encode({"source.ip": ipaddress.ip_address(ip).packed})
        reply = await stub.Check(check_pb2.CheckRequest(attributes=attributes))
        return reply.precondition.status.code == want

    try:
        await eventually(lambda: code(pod_ip, 0), 30, "the pod admitted by its labels")
        assert await code(STRANGER_IP, 7)
        (recorder,) = test_kinds["testrecord"].built
        assert "web-sa" in {e.value for e in recorder.checks}
        bag = mixer.dispatcher.enricher.enrich({"source.ip": ipaddress.ip_address(pod_ip).packed})
        assert bag["source.namespace"] == ns
        assert bag["source.service"] == f"web.{ns}.svc.cluster.local"
        assert bag["source.uid"] == f"k8s://web-1.{ns}"  # the pod's name, scheme the registry

        # Istio 0.2's proxy names its pod by uid: the same attributes, no address needed
        async def by_uid(uid: str) -> int:
            attributes = codec.encode({"source.uid": uid})
            reply = await stub.Check(check_pb2.CheckRequest(attributes=attributes))
            return reply.precondition.status.code

        assert await by_uid(f"kubernetes://web-1.{ns}") == 0
        assert await by_uid(f"kubernetes://web-2.{ns}") == 7  # no such pod: no labels
        bag = mixer.dispatcher.enricher.enrich({"source.uid": f"kubernetes://web-1.{ns}"})
        assert bag["source.ip"] == ipaddress.ip_address(pod_ip)
        assert bag["source.serviceAccount"] == "web-sa"
    finally:
        await channel.close()
        await hub.stop()


# Istio 0.2's whitelist example (docs "Denials and white/black listing"), on the app label, in
# the default config namespace so it applies to every request for ratings.
WHITELIST = """\
apiVersion: "config.istio.io/v1alpha2"
kind: listchecker
metadata:
  name: whitelist
  namespace: istio-system
spec:
  # providerUrl: ordinarily black and white lists are maintained
  # externally and fetched asynchronously using the providerUrl.
  overrides: ["frontend"]  # overrides provide a static list
  blacklist: false
  cachingInterval: 20s
  cachingUseCount: 50
---
apiVersion: "config.istio.io/v1alpha2"
kind: listentry
metadata:
  name: appname
  namespace: istio-system
spec:
  value: source.labels["app"] | "unknown"
---
apiVersion: "config.istio.io/v1alpha2"
kind: rule
metadata:
  name: checkapp
  namespace: istio-system
spec:
  match: destination.service == "ratings.shop.svc.cluster.local"
  actions:
  - handler: whitelist.listchecker
    instances:
    - appname.listentry
"""

BACKEND_IP = "127.0.96.9"


def register_node(agent, node: str, ip: str, app: str) -> None:
    c = consul.Consul(host=agent.host, port=agent.http_port)
    service = {"Service": f"legacy-{app}", "ID": f"{node}-1", "Port": 80, "Meta": {"app": app}}
    assert c.catalog.register(node, ip, service=service)


async def test_listchecker_whitelist_by_labels_from_consul_and_a_vm(consul_agent, tmp_path: Path):
    """The built-in ``listchecker`` (loaded by its entry point) admits the Consul node and the
    VM labelled ``app: frontend`` and refuses a Consul node labelled ``backend`` and an address
    no registry knows, each with the whitelist's status and validity."""
    services = tmp_path / "services.yaml"
    services.write_text(SERVICES)
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "mixer.yaml").write_text(WHITELIST)
    register_node(consul_agent, "node-a", CONSUL_IP, "frontend")
    register_node(consul_agent, "node-b", BACKEND_IP, "backend")
    mesh = MeshConfig(
        monitoring_address="127.0.0.1:0",
        registries=(
            RegistryConfig("consul", "consul", {"address": consul_agent.http_addr, "wait": "5s"}),
            RegistryConfig("vms", "static", {"paths": [str(services)]}),
        ),
    )
    settings = MixerSettings(
        enabled=True, listen="127.0.0.1:0", config_paths=(str(policy),), kubernetes=False
    )
    mixer = Mixer(settings)  # every installed handler kind
    hub = Hub(mesh, [mixer])
    await hub.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{mixer.port}")
    stub = MixerStub(channel)

    async def check(ip: str, service: str = "ratings") -> check_pb2.CheckResponse:
        bag = {
            "source.ip": ipaddress.ip_address(ip).packed,
            "destination.service": f"{service}.shop.svc.cluster.local",
        }
        return await stub.Check(check_pb2.CheckRequest(attributes=codec.encode(bag)))

    async def code(ip: str, want: int) -> bool:
        return (await check(ip)).precondition.status.code == want

    try:
        assert mixer.problems() == [], mixer.problems()
        handler = mixer.snapshot.handlers["whitelist.listchecker.istio-system"]
        assert isinstance(handler, listchecker.ListChecker)
        await eventually(lambda: code(CONSUL_IP, 0), 20, "the Consul frontend admitted")
        await eventually(lambda: code(BACKEND_IP, 5), 20, "the Consul backend refused")
        # the VM named by uid (its WorkloadEntry), without an address
        by_uid = codec.encode(
            {
                "source.uid": "vms://vm-1.shop",
                "destination.service": "ratings.shop.svc.cluster.local",
            }
        )
        reply = await stub.Check(check_pb2.CheckRequest(attributes=by_uid))
        assert reply.precondition.status.code == 0
        allowed = (await check(VM_IP)).precondition
        assert allowed.status.code == 0
        # the list's caching settings are the verdict's validity
        assert allowed.valid_duration.ToTimedelta().total_seconds() == 20
        assert allowed.valid_use_count == 50

        backend = (await check(BACKEND_IP)).precondition
        assert backend.status.code == 5  # NOT_FOUND, as Istio's whitelist answers
        assert backend.status.message == (
            "whitelist.listchecker.istio-system: backend is not whitelisted"
        )
        stranger = (await check(STRANGER_IP)).precondition
        assert stranger.status.code == 5
        assert "unknown is not whitelisted" in stranger.status.message
        # the label came from the registry: the client cache keys on the address
        assert refs_named(stranger.referenced_attributes) == {
            "destination.service": 2,  # EXACT: the client sent it
            "source.ip": 2,
            "source.labels": 1,  # ABSENCE: derived, not sent
            "context.protocol": 1,
        }
        # the rule's match: other destinations are not checked at all
        assert (await check(BACKEND_IP, "reviews")).precondition.status.code == 0

        # the backend node is relabelled in Consul: admitted once the registry has it
        register_node(consul_agent, "node-b", BACKEND_IP, "frontend")
        await eventually(lambda: code(BACKEND_IP, 0), 20, "the relabelled Consul node admitted")
    finally:
        await channel.close()
        await hub.stop()
        await asyncio.sleep(0)


def refs_named(ra: check_pb2.ReferencedAttributes) -> dict[str, int]:
    def word(i: int) -> str:
        return ra.words[-i - 1] if i < 0 else GLOBAL_WORDS[i]

    return {word(m.name): m.condition for m in ra.attribute_matches}
