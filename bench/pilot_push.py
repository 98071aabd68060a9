"""Benchmark: what a push costs and how fast a real Envoy converges (not a test).

Measures, at each mesh size of N services x M endpoints (default 1,000, 5,000 and 50,000 x 10),
with endpoints shaped like the adapters' (half from Kubernetes: pod labels, SPIFFE identity,
region and zone; half from Consul: tags as labels, datacenter; each with its registry's name),
so every endpoint carries the metadata a real push carries:

1. full build: translating the whole registry into shared resources (``ConfigCache.rebuild``);
2. full push: per proxy, every response a fresh SotW stream gets (CDS, EDS, LDS, RDS), through
   the real ``Connection`` code, serialized;
3. one-endpoint change: ``ConfigCache.apply`` for that service plus the push to every proxy,
   against the full push (time and bytes), and how the change cost grows with the mesh (the
   ratio to the smallest size);
4. a fingerprint of every pushed resource (name, version, bytes) over the whole run, so two
   builds of Pilot can be compared for identical output on identical state;
5. convergence: a static-file edit (one endpoint of one service) to the ACK of a real Envoy,
   p50/p99 over K edits, through the real static adapter (its file watcher included), plus the
   registry-event-to-ACK part alone.

Run: ``.venv/bin/python bench/pilot_push.py [--sizes 1000,5000,50000 --endpoints 10
--proxies 50 --changes 40 --skip-envoy]``. Prints figures and writes
``bench/results/pilot_push.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attrs
from envoy.service.discovery.v3 import discovery_pb2

from meshfed.adapters.contract import AdapterContext
from meshfed.pilot import wire
from meshfed.pilot import xds_types as T
from meshfed.pilot.ads import Connection, DiscoveryServer
from meshfed.pilot.cache import ConfigCache
from meshfed.pilot.mtls_plugin import MtlsPlugin
from meshfed.pilot.server import PilotServer
from meshfed.pilot.watch import TypeWatch
from meshfed.registry.aggregate import AggregateRegistry
from meshfed.registry.model import Endpoint, Locality, Port, Protocol, Service

RESULTS = Path(__file__).resolve().parent / "results" / "pilot_push.json"


def host(i: int) -> str:
    return f"svc-{i}.bench.svc.cluster.local"


def ep_ip(i: int, j: int) -> str:
    return f"10.{(i >> 8) & 255}.{i & 255}.{j + 1}"


def endpoint(i: int, j: int) -> Endpoint:
    """An endpoint as the adapters give it, for a federated mesh: even services come from
    Kubernetes (pod labels, the service account's SPIFFE ID, the node's region and zone), odd
    ones from Consul (service tags as labels, the datacenter as region)."""
    if i % 2 == 0:
        return Endpoint(
            ep_ip(i, j),
            ports={"http": 9080},
            labels={"app": f"svc-{i}", "version": f"v{1 + j % 2}"},
            identity=f"spiffe://cluster.local/ns/bench/sa/svc-{i}",
            locality=Locality("us-east1", f"us-east1-{'bcd'[j % 3]}"),
            registry="kubernetes",
        )
    return Endpoint(
        ep_ip(i, j),
        ports={"http": 9080},
        labels={"version": f"v{1 + j % 2}"},
        locality=Locality("dc1"),
        registry="consul",
    )


def populate(services: int, endpoints: int) -> tuple[AggregateRegistry, object]:
    agg = AggregateRegistry()
    member = agg.add_member("bench")
    svcs = [
        Service(host(i), namespace="bench", ports=(Port(80, "http", Protocol.HTTP),))
        for i in range(services)
    ]
    eps = {host(i): [endpoint(i, j) for j in range(endpoints)] for i in range(services)}
    member.replace(svcs, eps)
    return agg, member


class Fingerprint:
    """A hash over every resource pushed (name, per-resource version, bytes), in push order,
    and separately over the responses' type versions."""

    def __init__(self) -> None:
        self.resources = hashlib.sha256()
        self.versions = hashlib.sha256()

    def add(self, responses: list) -> None:
        for r in responses:
            self.versions.update(f"{r.type_url} {r.version_info}\n".encode())
            for body in r.resources:
                self.resources.update(body.type_url.encode())
                self.resources.update(len(body.value).to_bytes(4, "big"))
                self.resources.update(body.value)


def drain(conn: Connection, fingerprint: Fingerprint | None = None) -> tuple[list, int]:
    out = conn.take_responses()
    if fingerprint is not None:
        fingerprint.add(out)
    return out, sum(r.ByteSize() for r in out)


def ack_all(conn: Connection, responses: list) -> float:
    """ACK every response as Envoy does; returns the seconds Pilot spent handling the ACKs,
    from the bytes gRPC hands over (parsing included) to the end of ``on_request``. The
    requests are built and serialized first: that part is the proxy's work. An EDS ACK names
    the proxy's whole subscription, in the order the proxy keeps it."""
    requests = []
    for r in responses:
        names = (
            getattr(conn, "bench_names", {}).get(r.type_url, [])
            if r.type_url not in T.FULL_STATE
            else []
        )
        requests.append(
            discovery_pb2.DiscoveryRequest(
                type_url=r.type_url,
                version_info=r.version_info,
                response_nonce=r.nonce,
                resource_names=names,
            ).SerializeToString()
        )
    started = time.perf_counter()
    for request in requests:
        conn.on_request(wire.Received(request))
    return time.perf_counter() - started


def connect(
    server: DiscoveryServer, index: int, fingerprint: Fingerprint
) -> tuple[Connection, int, float]:
    """A simulated SotW stream going through CDS, EDS, LDS, RDS; returns bytes and seconds."""
    from envoy.config.core.v3 import base_pb2

    node = base_pb2.Node(id=f"sidecar~127.1.{index >> 8}.{index & 255}~p{index}.bench~bench")
    conn = server._open(node, False, "bench")
    started = time.perf_counter()
    total = 0
    conn.on_request(discovery_pb2.DiscoveryRequest(node=node, type_url=T.CLUSTER))
    responses, size = drain(conn, fingerprint)
    total += size
    ack_all(conn, responses)
    eds_names = sorted(conn.sent[T.CLUSTER])
    conn.bench_names = {T.ENDPOINT: eds_names, T.ROUTE: ["outbound_http"]}  # type: ignore[attr-defined]
    conn.on_request(discovery_pb2.DiscoveryRequest(type_url=T.ENDPOINT, resource_names=eds_names))
    conn.on_request(discovery_pb2.DiscoveryRequest(type_url=T.LISTENER))
    responses, size = drain(conn, fingerprint)
    total += size
    ack_all(conn, responses)
    conn.on_request(
        discovery_pb2.DiscoveryRequest(type_url=T.ROUTE, resource_names=["outbound_http"])
    )
    responses, size = drain(conn, fingerprint)
    total += size
    ack_all(conn, responses)
    return conn, total, time.perf_counter() - started


def push_figures(services: int, endpoints: int, proxies: int, changes: int = 20) -> dict:
    agg, member = populate(services, endpoints)
    cache = ConfigCache(agg, [MtlsPlugin()])  # as the hub runs it
    gc.collect()
    t0 = time.perf_counter()
    cache.rebuild()
    build_s = time.perf_counter() - t0
    server = DiscoveryServer(cache)
    fingerprint = Fingerprint()
    conns, full_bytes, full_times = [], [], []
    for i in range(proxies):
        conn, size, secs = connect(server, i, fingerprint)
        conns.append(conn)
        full_bytes.append(size)
        full_times.append(secs)

    # One endpoint of one service changes (it moves to another address).
    change_build, change_push, change_bytes, change_acks = [], [], [], []
    for k in range(changes):
        h = host(k * 7 % services)
        eps = list(agg.endpoints(h))
        eps[0] = attrs.evolve(eps[0], address=f"10.250.{k}.1")
        member.set_endpoints(h, eps)
        t0 = time.perf_counter()
        change = cache.apply({h})
        t1 = time.perf_counter()
        server.push(change)
        t2 = time.perf_counter()
        size = 0
        acks = 0.0
        for conn in conns:
            responses, s = drain(conn, fingerprint)
            size += s
            acks += ack_all(conn, responses)
        change_acks.append(acks)
        change_build.append(t1 - t0)
        change_push.append(t2 - t1)
        change_bytes.append(size / proxies)
    full_push_per_proxy = statistics.median(full_times)
    one_change_total = statistics.median(change_build) + statistics.median(change_push)
    full_total = build_s + full_push_per_proxy * proxies
    return {
        "services": services,
        "endpoints_per_service": endpoints,
        "proxies": proxies,
        "full_build_s": round(build_s, 4),
        "full_push_per_proxy_s": round(full_push_per_proxy, 5),
        "full_push_bytes_per_proxy": int(statistics.median(full_bytes)),
        "full_build_plus_push_all_proxies_s": round(full_total, 4),
        "one_endpoint_change_build_s": round(statistics.median(change_build), 6),
        "one_endpoint_change_push_all_proxies_s": round(statistics.median(change_push), 6),
        "one_endpoint_change_s": round(one_change_total, 6),
        # Pilot handling the proxies' ACKs, parsing included. A state-of-the-world EDS ACK
        # names every assignment; a repeat of the names the stream holds is recognised by
        # comparing bytes (pilot.wire) and its names are never parsed, so what grows with the
        # mesh is one memcmp over them.
        "one_endpoint_change_acks_all_proxies_s": round(statistics.median(change_acks), 6),
        "one_endpoint_change_bytes_per_proxy": int(statistics.median(change_bytes)),
        "one_change_vs_full_time_ratio": round(one_change_total / full_total, 5),
        "one_change_vs_full_bytes_ratio": round(
            statistics.median(change_bytes) / statistics.median(full_bytes), 6
        ),
        "pushed_resources_sha256": fingerprint.resources.hexdigest(),
        "pushed_versions_sha256": fingerprint.versions.hexdigest(),
    }


def scale_table(runs: list[dict]) -> str:
    """The per-size figures side by side, with the one-change cost relative to the smallest."""
    base = runs[0]["one_endpoint_change_s"]
    lines = [
        f"{'services':>9} {'full build s':>12} {'push/proxy':>11} {'MB/proxy':>9} "
        f"{'change rebuild ms':>17} {'push 50 ms':>10} {'change ms':>9} {'x smallest':>10} "
        f"{'50 ACKs ms':>10}"
    ]
    for run in runs:
        lines.append(
            f"{run['services']:>9} {run['full_build_s']:>12.3f} "
            f"{run['full_push_per_proxy_s']:>11.4f} "
            f"{run['full_push_bytes_per_proxy'] / 1e6:>9.2f} "
            f"{run['one_endpoint_change_build_s'] * 1e3:>17.3f} "
            f"{run['one_endpoint_change_push_all_proxies_s'] * 1e3:>10.3f} "
            f"{run['one_endpoint_change_s'] * 1e3:>9.3f} "
            f"{run['one_endpoint_change_s'] / base:>10.2f} "
            f"{run['one_endpoint_change_acks_all_proxies_s'] * 1e3:>10.2f}"
        )
    return "\n".join(lines)


def static_yaml(services: int, endpoints: int, moved: dict[int, int]) -> str:
    docs = []
    for i in range(services):
        eps = []
        for j in range(endpoints):
            ip = ep_ip(i, j) if not (j == 0 and i in moved) else f"10.251.{moved[i] % 250}.1"
            eps.append(f"    - {{address: {ip}, ports: {{http: 9080}}}}")
        docs.append(
            "apiVersion: networking.meshfed.io/v1alpha1\nkind: ServiceEntry\n"
            f"metadata: {{name: svc-{i}, namespace: bench}}\nspec:\n"
            f"  hosts: [{host(i)}]\n  resolution: STATIC\n"
            "  ports:\n    - {number: 80, name: http, protocol: HTTP}\n  endpoints:\n"
            + "\n".join(eps)
        )
    return "\n---\n".join(docs) + "\n"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def convergence(services: int, endpoints: int, changes: int) -> dict:
    from meshfed.adapters.static.registry import create as create_static
    from meshfed.proxy import EnvoyProcess, ProxySpec

    agg = AggregateRegistry()
    member = agg.add_member("static")
    event_times: list[float] = []
    agg.subscribe(lambda event: event_times.append(time.monotonic()))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "services.yaml"
        moved: dict[int, int] = {}
        path.write_text(static_yaml(services, endpoints, moved))
        static = create_static(AdapterContext(member, {"paths": [str(path)]}))
        watcher = asyncio.create_task(static.run())
        pilot = PilotServer(agg, "127.0.0.1:0", quiet=0.05, max_delay=0.5)
        envoy = None
        try:
            while agg.service(host(services - 1)) is None:
                await asyncio.sleep(0.05)
            await pilot.start()
            envoy = EnvoyProcess(
                ProxySpec(ip="127.0.86.2", workload="bench", pilot=f"127.0.0.1:{pilot.port}")
            )
            await envoy.start()
            await envoy.wait_live(60)
            assert pilot.discovery is not None

            def eds_watch() -> TypeWatch | None:
                conns = list(pilot.discovery.connections.values())
                return conns[0].watches.get(T.ENDPOINT) if conns else None

            deadline = time.monotonic() + 60
            while not (eds_watch() and conns_ready(pilot)) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            file_to_ack, event_to_ack = [], []
            for k in range(changes):
                watch = eds_watch()
                before_nonce = watch.acked_nonce
                moved[k % services] = k + 1
                event_times.clear()
                t0 = time.monotonic()
                path.write_text(static_yaml(services, endpoints, moved))
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    w = eds_watch()
                    if w.acked_nonce != before_nonce and w.acked_nonce == w.sent_nonce:
                        break
                    await asyncio.sleep(0.002)
                else:
                    raise TimeoutError(f"change {k} not ACKed within 30s")
                acked = eds_watch().acked_at
                file_to_ack.append(acked - t0)
                if event_times:
                    event_to_ack.append(acked - event_times[0])
                await asyncio.sleep(0.3)
        finally:
            if envoy is not None:
                await envoy.stop()
            await pilot.stop()
            await static.stop()
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher
    return {
        "services": services,
        "endpoints_per_service": endpoints,
        "changes": changes,
        "file_to_ack_p50_s": round(pct(file_to_ack, 50), 4),
        "file_to_ack_p99_s": round(pct(file_to_ack, 99), 4),
        "event_to_ack_p50_s": round(pct(event_to_ack, 50), 4) if event_to_ack else None,
        "event_to_ack_p99_s": round(pct(event_to_ack, 99), 4) if event_to_ack else None,
        "debounce_quiet_s": 0.05,
        "file_watcher_debounce_s": 0.2,
    }


def conns_ready(pilot: PilotServer) -> bool:
    return any(c.ready for c in pilot.discovery.connections.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default="1000,5000,50000",
        help="mesh sizes (services) for the push figures, comma-separated, smallest first",
    )
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--proxies", type=int, default=50)
    parser.add_argument("--changes", type=int, default=40)
    parser.add_argument(
        "--convergence-services",
        default="100,1000",
        help="registry sizes for the real-Envoy convergence runs (comma-separated)",
    )
    parser.add_argument("--skip-envoy", action="store_true")
    args = parser.parse_args()
    result: dict = {
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "push": [],
    }
    for size in sorted(int(x) for x in args.sizes.split(",") if x):
        run = push_figures(size, args.endpoints, args.proxies)
        result["push"].append(run)
        print(json.dumps(run, indent=2), flush=True)
        gc.collect()
    print(scale_table(result["push"]), flush=True)
    if not args.skip_envoy:
        result["convergence"] = []
        for size in (int(x) for x in args.convergence_services.split(",") if x):
            run = asyncio.run(convergence(size, args.endpoints, args.changes))
            result["convergence"].append(run)
            print(json.dumps(run, indent=2), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
