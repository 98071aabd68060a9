"""Benchmark: the hub's memory per connected proxy, with synthetic ADS clients (not a test).

The hub side (this process) serves ADS over a real ``grpc.aio`` server from a ``ConfigCache``
of N services x M endpoints shaped like the adapters' (``bench/pilot_push.py``). A second
process opens K state-of-the-world ADS streams with grpcio and xds-protos, each going through
CDS, EDS, LDS, RDS and ACKing every response as Envoy does, and holds them open. Measured on
the hub, from ``/proc/self/statm`` after a garbage collection:

1. the shared config: RSS once the cache is built and one proxy's view has been computed;
2. connected: RSS with every stream ACKed (``Connection.ready``), per proxy above (1);
3. after they leave: RSS once every stream is closed and the server saw it, per proxy
   above (1): what disconnecting does not give back.

Run: ``.venv/bin/python bench/pilot_memory.py [--services 1000 --endpoints 10 --clients 1000
--trace]``.
Prints figures and writes ``bench/results/pilot_memory.json``. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import contextlib

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from meshfed.pilot import xds_types as T

RESULTS = Path(__file__).resolve().parent / "results" / "pilot_memory.json"
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def trim() -> None:
    """Give freed heap pages back to the OS (glibc), so RSS shows what is still held."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# -- the synthetic clients (a separate process) ----------------------------------------------
async def one_client(
    stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub,
    i: int,
    eds: list[str],
    synced: asyncio.Event,
    stop: asyncio.Event,
) -> None:
    queue: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()
    node = base_pb2.Node(id=f"sidecar~127.3.{i >> 8}.{i & 255}~c{i}.bench~bench.svc.cluster.local")
    subscribed = {T.CLUSTER: [], T.LISTENER: [], T.ENDPOINT: eds, T.ROUTE: ["outbound_http"]}

    async def requests():  # type: ignore[no-untyped-def]
        while True:
            item = await queue.get()
            if item is None:
                return
            yield item

    queue.put_nowait(discovery_pb2.DiscoveryRequest(node=node, type_url=T.CLUSTER))
    queue.put_nowait(discovery_pb2.DiscoveryRequest(type_url=T.LISTENER))
    call = stub.StreamAggregatedResources(requests())
    seen: set[str] = set()

    async def read() -> None:
        async for response in call:
            t = response.type_url
            queue.put_nowait(
                discovery_pb2.DiscoveryRequest(
                    type_url=t,
                    version_info=response.version_info,
                    response_nonce=response.nonce,
                    resource_names=subscribed[t],
                )
            )
            if t not in seen:
                seen.add(t)
                if t == T.CLUSTER:
                    queue.put_nowait(
                        discovery_pb2.DiscoveryRequest(type_url=T.ENDPOINT, resource_names=eds)
                    )
                elif t == T.LISTENER:
                    queue.put_nowait(
                        discovery_pb2.DiscoveryRequest(
                            type_url=T.ROUTE, resource_names=["outbound_http"]
                        )
                    )
            if len(seen) == 4:
                synced.set()

    reader = asyncio.create_task(read())
    await stop.wait()
    queue.put_nowait(None)
    call.cancel()
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
        await reader


async def clients_main(target: str, clients: int, services: int) -> None:
    from pilot_push import host

    eds = [f"outbound|80||{host(i)}" for i in range(services)]
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 512 << 20)])
        for _ in range(max(1, clients // 100))
    ]
    stop = asyncio.Event()
    events = [asyncio.Event() for _ in range(clients)]
    tasks = []
    for i in range(clients):
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channels[i % len(channels)])
        tasks.append(asyncio.create_task(one_client(stub, i, eds, events[i], stop)))
        if i % 20 == 19:
            await asyncio.sleep(0.05)
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 600)
    print("synced", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    for ch in channels:
        await ch.close()
    print("closed", flush=True)


# -- the hub side ----------------------------------------------------------------------------
def top_allocations(snapshot: object, base: object, limit: int = 12) -> list[str]:
    """Where the Python heap grew between two tracemalloc snapshots (``--trace``)."""
    stats = snapshot.compare_to(base, "lineno")  # type: ignore[attr-defined]
    return [str(s) for s in stats[:limit]]


async def hub_main(services: int, endpoints: int, clients: int, trace: bool = False) -> dict:
    from pilot_push import populate

    from meshfed.pilot import wire
    from meshfed.pilot.ads import DiscoveryServer
    from meshfed.pilot.cache import ConfigCache
    from meshfed.pilot.mtls_plugin import MtlsPlugin
    from meshfed.pilot.node import ProxyNode

    start_rss = rss_bytes()
    agg, _member = populate(services, endpoints)
    cache = ConfigCache(agg, [MtlsPlugin()])
    cache.rebuild()
    cache.view(ProxyNode(id="warm", ip="127.3.255.255"))
    discovery = DiscoveryServer(cache)
    discovery.serving.set()
    server = grpc.aio.server(options=[("grpc.max_send_message_length", 512 << 20)])
    wire.add_to_server(discovery, server)  # as PilotServer serves it
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    trim()
    shared_rss = rss_bytes()
    if trace:
        import tracemalloc

        tracemalloc.start(1)
        base = tracemalloc.take_snapshot()

    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--client-of",
            f"127.0.0.1:{port}",
            "--clients",
            str(clients),
            "--services",
            str(services),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    line = await loop.run_in_executor(None, child.stdout.readline)  # type: ignore[union-attr]
    assert line.strip() == "synced", line
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        # No local reference to a connection survives this loop: it would keep it alive.
        ready = sum(1 for c in discovery.connections.values() if c.ready)
        if ready == clients:
            break
        await asyncio.sleep(0.1)
    sync_s = time.monotonic() - t0
    await asyncio.sleep(1)
    trim()
    connected_rss = rss_bytes()
    traced = {}
    if trace:
        traced["connected"] = top_allocations(tracemalloc.take_snapshot(), base)

    child.stdin.write("\n")  # type: ignore[union-attr]
    child.stdin.flush()  # type: ignore[union-attr]
    line = await loop.run_in_executor(None, child.stdout.readline)  # type: ignore[union-attr]
    child.wait(60)
    deadline = time.monotonic() + 60
    while discovery.connections and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(1)
    trim()
    left_rss = rss_bytes()
    if trace:
        traced["after_disconnect"] = top_allocations(tracemalloc.take_snapshot(), base)
        tracemalloc.stop()
    await server.stop(0)
    mb = 1 << 20
    return {
        "services": services,
        "endpoints_per_service": endpoints,
        "clients": clients,
        "connected_and_acked_s": round(sync_s, 2),
        "rss_before_build_mb": round(start_rss / mb, 1),
        "rss_shared_config_mb": round(shared_rss / mb, 1),
        "rss_connected_mb": round(connected_rss / mb, 1),
        "rss_after_disconnect_mb": round(left_rss / mb, 1),
        "per_connected_proxy_mb": round((connected_rss - shared_rss) / clients / mb, 3),
        "retained_per_proxy_after_disconnect_mb": round((left_rss - shared_rss) / clients / mb, 3),
        "still_connected": len(discovery.connections),
        **({"python_heap_growth": traced} if trace else {}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument(
        "--trace", action="store_true", help="also list where the Python heap grew (slower)"
    )
    parser.add_argument("--client-of", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client_of:
        asyncio.run(clients_main(args.client_of, args.clients, args.services))
        return 0
    result = {
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "memory": asyncio.run(hub_main(args.services, args.endpoints, args.clients, args.trace)),
    }
    print(json.dumps(result["memory"], indent=2), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
