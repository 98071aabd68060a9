"""Smoke tests proving each peer is the real server, driven by real third-party clients.

py-consul, py-eureka-client, the kubernetes client, kubectl, redis-py and plain HTTP
talk to the servers the fixtures start; no mocks, no stand-ins. If one of these fails,
the harness (not meshfed) is broken.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import consul
import httpx
import py_eureka_client.eureka_client as eureka_client
import pytest
import redis
from kubernetes import client as k8s
from kubernetes import watch

from integration.peers.artifacts import KUBERNETES_VERSION
from integration.peers.consul import ConsulAgent, ConsulCluster
from integration.peers.envoy import EnvoyProxy
from integration.peers.eureka import EurekaServer
from integration.peers.jaeger import JaegerServer
from integration.peers.kube import KubeAPIServer
from integration.peers.redis import RedisServer


def eventually(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.25) -> Any:
    """Poll until ``check`` returns a truthy value; fail with its last result/error."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as exc:
            last = exc
        time.sleep(interval)
    pytest.fail(f"condition not met within {timeout}s; last: {last!r}")


@pytest.fixture
def tcp_listener() -> Iterator[tuple[str, int]]:
    """A real TCP listener on loopback that accepts and closes, for health checks."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    stop = threading.Event()

    def serve() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()
    stop.set()
    thread.join(2)
    sock.close()


# --- Consul -------------------------------------------------------------------------


def _register_and_read_back(c: consul.Consul, tcp: tuple[str, int]) -> None:
    name = f"web-{uuid.uuid4().hex[:6]}"
    c.agent.service.register(
        name,
        service_id=f"{name}-1",
        address="127.0.0.1",
        port=tcp[1],
        tags=["v1", "smoke"],
        check=consul.Check.tcp(tcp[0], tcp[1], "1s", timeout="1s"),
    )
    c.agent.service.register(
        name,
        service_id=f"{name}-2",
        address="127.0.0.2",
        port=9090,
        tags=["v2"],
        check=consul.Check.ttl("60s"),
    )
    _, nodes = c.catalog.service(name)
    assert {n["ServiceID"] for n in nodes} == {f"{name}-1", f"{name}-2"}
    assert {n["ServiceAddress"] for n in nodes} == {"127.0.0.1", "127.0.0.2"}

    # The TCP check passes against a real listener; the TTL check starts critical.
    passing = eventually(
        lambda: [e["Service"]["ID"] for e in c.health.service(name, passing=True)[1]]
    )
    assert passing == [f"{name}-1"]
    c.agent.check.ttl_pass(f"service:{name}-2", notes="smoke")
    eventually(lambda: len(c.health.service(name, passing=True)[1]) == 2)
    c.agent.check.ttl_fail(f"service:{name}-2")
    eventually(
        lambda: (
            [e["Service"]["ID"] for e in c.health.service(name, passing=True)[1]] == [f"{name}-1"]
        )
    )


def test_consul_dev_agent_registers_and_reads_back(
    consul_agent: ConsulAgent, tcp_listener: tuple[str, int]
) -> None:
    c = consul.Consul(host=consul_agent.host, port=consul_agent.http_port)
    assert c.status.leader() == consul_agent.server_addr
    _register_and_read_back(c, tcp_listener)


def test_consul_cluster_survives_leader_loss(
    consul_cluster: ConsulCluster, tcp_listener: tuple[str, int]
) -> None:
    assert len(consul_cluster.agents) == 3
    assert len({a.host for a in consul_cluster.agents}) == 3
    leader = consul_cluster.leader()
    clients = [consul.Consul(host=a.host, port=a.http_port) for a in consul_cluster.agents]
    assert sorted(clients[0].status.peers()) == sorted(a.server_addr for a in consul_cluster.agents)
    _register_and_read_back(clients[0], tcp_listener)

    # Data written through one server is visible through every other (Raft replication).
    clients[1].kv.put("meshfed/smoke", "before")
    for c in clients:
        eventually(lambda c=c: c.kv.get("meshfed/smoke")[1]["Value"] == b"before")

    consul_cluster.stop_member(leader, hard=True)
    new_leader = consul_cluster.leader(timeout=60, exclude=leader)
    assert new_leader is not leader and new_leader.running()
    survivor = consul.Consul(host=new_leader.host, port=new_leader.http_port)
    survivor.kv.put("meshfed/smoke", "after")
    assert survivor.kv.get("meshfed/smoke")[1]["Value"] == b"after"

    # The old leader comes back on its data dir, rejoins and catches up.
    consul_cluster.start_member(leader)
    back = consul.Consul(host=leader.host, port=leader.http_port)
    eventually(
        lambda: back.kv.get("meshfed/smoke", consistency="stale")[1]["Value"] == b"after", 60
    )
    assert consul_cluster.leader().running()


# --- Eureka -------------------------------------------------------------------------


async def test_eureka_client_registers_and_fetches(eureka_server: EurekaServer) -> None:
    app = f"SMOKE-{uuid.uuid4().hex[:6].upper()}"
    client = eureka_client.EurekaClient(
        eureka_server=eureka_server.eureka_url,
        app_name=app,
        instance_host="127.0.0.1",
        instance_ip="127.0.0.1",
        instance_port=18080,
        renewal_interval_in_secs=1,
        duration_in_secs=5,
        should_discover=False,
    )
    await client.start()
    try:
        application = None
        for _ in range(60):
            try:
                application = await eureka_client.get_application(eureka_server.eureka_url, app)
                if application.instances:
                    break
            except Exception:
                pass
            await asyncio.sleep(0.5)
        assert application is not None, f"{app} never appeared in Eureka"
        [instance] = application.instances
        assert instance.ipAddr == "127.0.0.1"
        assert instance.port.port == 18080
        assert instance.status == "UP"

        # The same registration through Eureka's plain REST API.
        async with httpx.AsyncClient(headers={"Accept": "application/json"}) as http:
            resp = await http.get(f"{eureka_server.url}/eureka/apps/{app}")
            assert resp.status_code == 200
            body = resp.json()
            assert body["application"]["name"] == app
            assert body["application"]["instance"][0]["port"]["$"] == 18080
    finally:
        await client.stop()

    async with httpx.AsyncClient() as http:
        for _ in range(60):
            resp = await http.get(f"{eureka_server.url}/eureka/apps/{app}")
            if resp.status_code == 404:
                break
            await asyncio.sleep(0.5)
        assert resp.status_code == 404, "instance still registered after the client stopped"


def test_eureka_plain_rest_register_and_fetch(eureka_server: EurekaServer) -> None:
    app = f"REST-{uuid.uuid4().hex[:6].upper()}"
    instance = {
        "instance": {
            "instanceId": f"{app.lower()}-1",
            "hostName": "127.0.0.3",
            "app": app,
            "ipAddr": "127.0.0.3",
            "vipAddress": app.lower(),
            "status": "UP",
            "port": {"$": 8081, "@enabled": "true"},
            "securePort": {"$": 443, "@enabled": "false"},
            "dataCenterInfo": {
                "@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo",
                "name": "MyOwn",
            },
        }
    }
    with httpx.Client(base_url=eureka_server.url, headers={"Accept": "application/json"}) as http:
        resp = http.post(f"/eureka/apps/{app}", json=instance)
        assert resp.status_code == 204
        got = http.get(f"/eureka/apps/{app}/{app.lower()}-1").json()["instance"]
        assert got["ipAddr"] == "127.0.0.3"
        assert got["port"]["$"] == 8081
        vips = eventually(lambda: http.get(f"/eureka/vips/{app.lower()}").json())
        assert vips["applications"]["application"][0]["name"] == app
        assert http.delete(f"/eureka/apps/{app}/{app.lower()}-1").status_code == 200
        assert http.get(f"/eureka/apps/{app}").status_code == 404


# --- Kubernetes ---------------------------------------------------------------------


def test_kube_client_creates_and_watches_service_and_endpointslice(
    kube_apiserver: KubeAPIServer,
) -> None:
    api_client = kube_apiserver.api_client()
    core = k8s.CoreV1Api(api_client)
    discovery = k8s.DiscoveryV1Api(api_client)
    assert k8s.VersionApi(api_client).get_code().git_version == f"v{KUBERNETES_VERSION}"
    ns = f"smoke-{uuid.uuid4().hex[:6]}"
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=ns)))

    svc = core.create_namespaced_service(
        ns,
        k8s.V1Service(
            metadata=k8s.V1ObjectMeta(name="reviews", labels={"app": "reviews"}),
            spec=k8s.V1ServiceSpec(
                selector={"app": "reviews"},
                ports=[k8s.V1ServicePort(name="http", port=9080, protocol="TCP")],
            ),
        ),
    )
    assert svc.spec.cluster_ip.startswith("10.0.0.")

    events: list[tuple[str, str]] = []
    start_rv = discovery.list_namespaced_endpoint_slice(ns).metadata.resource_version

    def watch_slices() -> None:
        w = watch.Watch()
        for ev in w.stream(
            discovery.list_namespaced_endpoint_slice,
            ns,
            resource_version=start_rv,
            timeout_seconds=20,
        ):
            events.append((ev["type"], ev["object"].metadata.name))
            if ev["type"] == "DELETED":
                w.stop()

    watcher = threading.Thread(target=watch_slices, daemon=True)
    watcher.start()
    time.sleep(0.5)

    def endpoint_slice(*addresses: str) -> k8s.V1EndpointSlice:
        return k8s.V1EndpointSlice(
            metadata=k8s.V1ObjectMeta(
                name="reviews-abc", labels={"kubernetes.io/service-name": "reviews"}
            ),
            address_type="IPv4",
            endpoints=[
                k8s.V1Endpoint(addresses=[a], conditions=k8s.V1EndpointConditions(ready=True))
                for a in addresses
            ],
            ports=[k8s.DiscoveryV1EndpointPort(name="http", port=9080, protocol="TCP")],
        )

    # Real API-server validation: EndpointSlices may not hold loopback addresses (so tests
    # use RFC 5737 documentation addresses there and never send traffic to them) ...
    with pytest.raises(k8s.ApiException) as rejected:
        discovery.create_namespaced_endpoint_slice(ns, endpoint_slice("127.0.0.21"))
    assert rejected.value.status == 422
    assert "loopback" in rejected.value.body

    slice_ = endpoint_slice("192.0.2.21")
    discovery.create_namespaced_endpoint_slice(ns, slice_)
    slice_.endpoints.append(
        k8s.V1Endpoint(addresses=["192.0.2.22"], conditions=k8s.V1EndpointConditions(ready=False))
    )
    discovery.replace_namespaced_endpoint_slice("reviews-abc", ns, slice_)
    discovery.delete_namespaced_endpoint_slice("reviews-abc", ns)
    watcher.join(25)
    assert events == [
        ("ADDED", "reviews-abc"),
        ("MODIFIED", "reviews-abc"),
        ("DELETED", "reviews-abc"),
    ]

    # ... while a Pod's status may carry a loopback IP: objects can point at local processes.
    core.create_namespaced_pod(
        ns,
        k8s.V1Pod(
            metadata=k8s.V1ObjectMeta(name="reviews-v1", labels={"app": "reviews"}),
            spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="app", image="reviews:v1")]),
        ),
    )
    core.patch_namespaced_pod_status(
        "reviews-v1", ns, {"status": {"podIP": "127.0.0.21", "podIPs": [{"ip": "127.0.0.21"}]}}
    )
    assert core.read_namespaced_pod("reviews-v1", ns).status.pod_ip == "127.0.0.21"

    # A watch on Services sees the one we created.
    w = watch.Watch()
    seen = []
    for ev in w.stream(core.list_namespaced_service, ns, timeout_seconds=5):
        seen.append((ev["type"], ev["object"].metadata.name))
        w.stop()
    assert seen == [("ADDED", "reviews")]
    core.delete_namespace(ns)


def test_kubectl_applies_manifest(kube_apiserver: KubeAPIServer, tmp_path: Any) -> None:
    ns = f"kubectl-{uuid.uuid4().hex[:6]}"
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(
        f"""\
apiVersion: v1
kind: Namespace
metadata:
  name: {ns}
---
apiVersion: v1
kind: Service
metadata:
  name: ratings
  namespace: {ns}
spec:
  selector:
    app: ratings
  ports:
  - name: grpc
    port: 9090
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: ratings-1
  namespace: {ns}
  labels:
    kubernetes.io/service-name: ratings
addressType: IPv4
endpoints:
- addresses: ["192.0.2.31"]
  conditions:
    ready: true
ports:
- name: grpc
  port: 9090
  protocol: TCP
---
apiVersion: v1
kind: Pod
metadata:
  name: ratings-v1
  namespace: {ns}
  labels:
    app: ratings
spec:
  containers:
  - name: app
    image: example.invalid/ratings:v1
"""
    )
    kubectl = str(kube_apiserver.kubectl())
    env_args = ["--kubeconfig", str(kube_apiserver.kubeconfig)]
    out = subprocess.run(
        [kubectl, *env_args, "apply", "-f", str(manifest)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert f"namespace/{ns} created" in out.stdout
    assert "endpointslice.discovery.k8s.io/ratings-1 created" in out.stdout

    got = subprocess.run(
        [
            kubectl,
            *env_args,
            "--context",
            "meshfed-test-token",
            "-n",
            ns,
            "get",
            "all,endpointslices",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert got.returncode == 0, got.stderr
    kinds = {(i["kind"], i["metadata"]["name"]) for i in json.loads(got.stdout)["items"]}
    assert {("Service", "ratings"), ("Pod", "ratings-v1"), ("EndpointSlice", "ratings-1")} <= kinds

    # Re-applying the same manifest is a no-op, as users expect of kubectl apply.
    again = subprocess.run(
        [kubectl, *env_args, "apply", "-f", str(manifest)], capture_output=True, text=True
    )
    assert again.returncode == 0 and "unchanged" in again.stdout

    core = k8s.CoreV1Api(kube_apiserver.api_client())
    pod = core.read_namespaced_pod("ratings-v1", ns)
    assert pod.status.phase == "Pending"  # no kubelet: the object exists, nothing runs it
    core.delete_namespace(ns)


# --- Redis --------------------------------------------------------------------------


def test_redis_set_get(redis_server: RedisServer) -> None:
    r = redis.Redis.from_url(redis_server.url)
    assert r.ping() is True
    assert r.set("meshfed:quota", 5, ex=60) is True
    assert r.incrby("meshfed:quota", 2) == 7
    assert r.get("meshfed:quota") == b"7"
    assert 0 < r.ttl("meshfed:quota") <= 60
    info = r.info("server")
    assert info["tcp_port"] == redis_server.port


# --- Jaeger -------------------------------------------------------------------------


def test_jaeger_zipkin_span_is_queryable(jaeger_server: JaegerServer) -> None:
    trace_id = uuid.uuid4().hex
    span = {
        "traceId": trace_id,
        "id": trace_id[:16],
        "name": "smoke-op",
        "kind": "SERVER",
        "timestamp": int(time.time() * 1_000_000),
        "duration": 1500,
        "localEndpoint": {"serviceName": "smoke-service"},
        "tags": {"peer": "jaeger"},
    }
    with httpx.Client(timeout=5) as http:
        posted = http.post(f"http://{jaeger_server.zipkin}/api/v2/spans", json=[span])
        assert posted.status_code == 202, posted.text
    trace = eventually(lambda: jaeger_server.trace(trace_id), timeout=15)
    (got,) = trace["spans"]
    assert got["operationName"] == "smoke-op"
    assert trace["processes"][got["processID"]]["serviceName"] == "smoke-service"
    assert {"key": "peer", "type": "string", "value": "jaeger"} in got["tags"]
    assert "smoke-service" in jaeger_server.services()
    assert [t["traceID"] for t in jaeger_server.traces("smoke-service")] == [trace_id]


# --- Envoy --------------------------------------------------------------------------


def test_envoy_static_bootstrap_serves(envoy_static: tuple[EnvoyProxy, int]) -> None:
    envoy, listener_port = envoy_static
    with httpx.Client(timeout=5) as http:
        assert http.get(f"{envoy.admin_url}/ready").text.strip() == "LIVE"
        info = http.get(f"{envoy.admin_url}/server_info").json()
        assert info["state"] == "LIVE"
        assert info["command_line_options"]["config_path"] == str(envoy.bootstrap_path)
        listeners = http.get(f"{envoy.admin_url}/listeners?format=json").json()
        assert [ls["name"] for ls in listeners["listener_statuses"]] == ["smoke"]
        resp = http.get(f"http://{envoy.host}:{listener_port}/anything")
        assert resp.status_code == 200
        assert resp.text == "meshfed-envoy-ok"
        stats = http.get(f"{envoy.admin_url}/stats?filter=^http\\.smoke\\.downstream_rq_2xx$")
        assert "http.smoke.downstream_rq_2xx: 1" in stats.text
