"""Benchmark: the Kubernetes adapter on a cluster of 500 Services and 5,000 pods (not a test).

Against a real kube-apiserver + etcd (started through the integration harness, on loopback):

1. populate N Services (default 500) in 10 namespaces, each with P pods (default 10, so 5,000
   pods) and one EndpointSlice listing them (with targetRef, so every endpoint joins its pod for
   labels and identity). The harness's API server has a /24 service-IP range, so Services past
   the first 200 are headless (no address; same mapping work otherwise). Slice addresses are
   10.244.0.0/16 pod-network addresses: the API server refuses loopback ones, and nothing ever
   dials them;
2. initial sync: from ``KubernetesRegistry.run()`` to ``member.synced`` (every resource listed,
   everything mapped and applied in one ``replace``), R runs on fresh registries;
3. convergence: K EndpointSlice changes (one endpoint flips ready, alternately) made through the
   API, each timed from just before the PATCH to the ACK of the new EDS version by a real Envoy
   fed by Pilot (debounce 50 ms quiet), p50/p99; also the API-to-registry-event part alone.

Run: ``.venv/bin/python bench/kube_sync.py [--services 500 --pods 10 --changes 40]``. Prints
the figures and writes ``bench/results/kube_sync.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kubernetes import client as k8s

from integration.peers.kube import KubeAPIServer, start_kube_apiserver
from meshfed.adapters.kubernetes.registry import KubernetesRegistry, parse_params
from meshfed.pilot import xds_types as T
from meshfed.pilot.server import PilotServer
from meshfed.pilot.watch import TypeWatch
from meshfed.proxy import EnvoyProcess, ProxySpec
from meshfed.registry.aggregate import AggregateRegistry

RESULTS = Path(__file__).resolve().parent / "results" / "kube_sync.json"
NAMESPACES = 10
CLUSTER_IPS = 200
ENVOY_IP = "127.0.87.2"


def pod_ip(i: int, j: int, pods: int) -> str:
    n = i * pods + j
    return f"10.244.{n // 250}.{n % 250 + 1}"


def where(i: int) -> tuple[str, str]:
    return f"bench-{i % NAMESPACES}", f"svc-{i}"


def populate(server: KubeAPIServer, services: int, pods: int) -> float:
    """Create every object through the API (8 client threads); returns seconds taken."""
    api = server.api_client()
    core, discovery = k8s.CoreV1Api(api), k8s.DiscoveryV1Api(api)
    for n in range(NAMESPACES):
        core.create_namespace({"metadata": {"name": f"bench-{n}"}})
    started = time.perf_counter()

    def one(i: int) -> None:
        ns, name = where(i)
        core.create_namespaced_service(
            ns,
            {
                "metadata": {"name": name, "labels": {"app": name}},
                "spec": {
                    "selector": {"app": name},
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                    # The harness's service range is a /24: past 200 Services, headless ones.
                    **({} if i < CLUSTER_IPS else {"clusterIP": "None"}),
                },
            },
        )
        for j in range(pods):
            core.create_namespaced_pod(
                ns,
                {
                    "metadata": {"name": f"{name}-{j}", "labels": {"app": name, "version": "v1"}},
                    "spec": {
                        "serviceAccountName": name,
                        "containers": [{"name": "app", "image": "none"}],
                    },
                },
            )
        discovery.create_namespaced_endpoint_slice(ns, slice_body(i, pods, ns, name, -1))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(services)))
    return time.perf_counter() - started


def slice_body(i: int, pods: int, ns: str, name: str, unready: int) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{name}-a", "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [
            {
                "addresses": [pod_ip(i, j, pods)],
                "conditions": {"ready": j != unready},
                "targetRef": {"kind": "Pod", "name": f"{name}-{j}", "namespace": ns},
            }
            for j in range(pods)
        ],
    }


async def initial_sync(server: KubeAPIServer) -> tuple[float, AggregateRegistry, Any]:
    aggregate = AggregateRegistry()
    member = aggregate.add_member("kubernetes")
    registry = KubernetesRegistry(
        member, parse_params({"kubeconfig": str(server.kubeconfig)}), "cluster.local"
    )
    started = time.perf_counter()
    task = asyncio.create_task(registry.run())
    while not member.synced:
        if task.done():
            task.result()
        await asyncio.sleep(0.005)
    return time.perf_counter() - started, aggregate, (registry, task)


async def stop_registry(handle: Any) -> None:
    registry, task = handle
    await registry.stop()
    await asyncio.wait_for(task, 30)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def convergence(
    server: KubeAPIServer, aggregate: AggregateRegistry, services: int, pods: int, changes: int
) -> dict[str, Any]:
    discovery = k8s.DiscoveryV1Api(server.api_client())
    event_times: list[float] = []
    aggregate.subscribe(lambda event: event_times.append(time.monotonic()))
    pilot = PilotServer(aggregate, "127.0.0.1:0", quiet=0.05, max_delay=0.5)
    await pilot.start()
    envoy = EnvoyProcess(ProxySpec(ip=ENVOY_IP, workload="bench", pilot=f"127.0.0.1:{pilot.port}"))
    try:
        await envoy.start()
        await envoy.wait_live(120)
        assert pilot.discovery is not None

        def eds_watch() -> TypeWatch | None:
            conns = list(pilot.discovery.connections.values())  # type: ignore[union-attr]
            return conns[0].watches.get(T.ENDPOINT) if conns else None

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            w = eds_watch()
            conns = pilot.discovery.connections.values()
            if w is not None and any(c.ready for c in conns):
                break
            await asyncio.sleep(0.05)
        else:
            raise TimeoutError("envoy did not ACK its first full config within 120s")
        api_to_ack, api_to_event = [], []
        for k in range(changes):
            # Even changes take one endpoint of a service out of rotation, odd ones put it back:
            # every PATCH is a real change.
            i = (k // 2 * 37) % services
            ns, name = where(i)
            body = slice_body(i, pods, ns, name, unready=(k // 2) % pods if k % 2 == 0 else -1)
            watch = eds_watch()
            assert watch is not None
            before = watch.acked_nonce
            event_times.clear()
            t0 = time.monotonic()
            await asyncio.to_thread(
                discovery.patch_namespaced_endpoint_slice,
                f"{name}-a",
                ns,
                {"endpoints": body["endpoints"]},
            )
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                w = eds_watch()
                if w is not None and w.acked_nonce != before and w.acked_nonce == w.sent_nonce:
                    break
                await asyncio.sleep(0.002)
            else:
                raise TimeoutError(f"change {k} not ACKed within 30s")
            acked = eds_watch().acked_at  # type: ignore[union-attr]
            api_to_ack.append(acked - t0)
            if event_times:
                api_to_event.append(event_times[0] - t0)
            await asyncio.sleep(0.2)
    finally:
        await envoy.stop()
        await pilot.stop()
    return {
        "changes": changes,
        "api_patch_to_envoy_ack_p50_s": round(pct(api_to_ack, 50), 4),
        "api_patch_to_envoy_ack_p99_s": round(pct(api_to_ack, 99), 4),
        "api_patch_to_envoy_ack_max_s": round(max(api_to_ack), 4),
        "api_patch_to_registry_event_p50_s": round(pct(api_to_event, 50), 4),
        "api_patch_to_registry_event_p99_s": round(pct(api_to_event, 99), 4),
        "pilot_debounce_quiet_s": 0.05,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="meshfed-kube-bench-") as tmp,
        start_kube_apiserver(Path(tmp) / "kube") as server,
    ):
        populate_s = await asyncio.to_thread(populate, server, args.services, args.pods)
        print(f"populated in {populate_s:.1f}s", flush=True)
        syncs = []
        handle = None
        aggregate = None
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for r in range(args.runs):
            seconds, aggregate, handle = await initial_sync(server)
            syncs.append(seconds)
            count = sum(len(aggregate.endpoints(h)) for h in aggregate.services())
            print(f"initial sync {r + 1}: {seconds:.3f}s ({count} endpoints)", flush=True)
            if r < args.runs - 1:
                await stop_registry(handle)
        assert aggregate is not None and handle is not None
        services = [s for s in aggregate.services().values() if s.namespace.startswith("bench")]
        endpoints = sum(len(aggregate.endpoints(s.hostname)) for s in services)
        assert len(services) == args.services and endpoints == args.services * args.pods
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        conv = {}
        if not args.skip_envoy:
            conv = await convergence(server, aggregate, args.services, args.pods, args.changes)
        await stop_registry(handle)
    return {
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "cluster": {
            "services": args.services,
            "pods": args.services * args.pods,
            "endpoint_slices": args.services,
            "namespaces": NAMESPACES,
            "services_with_cluster_ip": min(args.services, CLUSTER_IPS),
            "populate_s": round(populate_s, 2),
        },
        "initial_sync": {
            "runs_s": [round(s, 3) for s in syncs],
            "median_s": round(statistics.median(syncs), 3),
            "best_s": round(min(syncs), 3),
            "process_peak_rss_mb": round(peak_rss_mb, 1),
            "note": "run() start to member.synced: list every resource (pages of 500), map, "
            "one replace; process RSS includes the benchmark's own client objects",
            "rss_before_first_sync_mb": round(rss_before / 1024, 1),
        },
        "convergence": conv,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=500)
    parser.add_argument("--pods", type=int, default=10, help="pods per service")
    parser.add_argument("--runs", type=int, default=3, help="initial-sync runs")
    parser.add_argument("--changes", type=int, default=40)
    parser.add_argument("--skip-envoy", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
