"""Benchmark: a large Consul catalog followed into a real Envoy (run by hand, not by CI).

It is a pytest module because it uses the integration harness's fixtures; ``bench/`` is outside
the test paths, so only an explicit run executes it. It prints figures and writes a JSON file::

    .venv/bin/python -m pytest -s bench/consul_catalog.py
    # sizes: MESHFED_BENCH_SERVICES (1000), _INSTANCES (5), _CHANGES (100), _IDLE_S (30)
    # MESHFED_BENCH_MODE: per-service (every service its own blocking query; the agent's
    #   connection limit raised to 4096) or catalog (the default maxWatches, the agent's default
    #   limit of 200: followed catalog-wide)
    # MESHFED_BENCH_CHECKS=1: every instance (and every change) registers with a passing check
    # results: MESHFED_BENCH_OUT (default bench/results/consul_catalog_<mode>[_checks].json)

What it measures, on a real Consul agent and a real Envoy sidecar fed by Pilot:

- **registration -> Envoy ACK**: for each change, from the moment the registration is sent to
  Consul until Envoy ACKs the endpoint (EDS) update that contains it (p50 / p99 / max), and the
  part of it spent until the aggregate registry had the change;
- **idle cost**: CPU seconds and resident memory of this process (the hub: adapter + Pilot)
  while it idle-watches the whole catalog, and the Consul agent's CPU over the same time.

Speed is reported, never asserted (beyond sanity), per the project's rules. In per-service mode
the agent's per-IP connection limit is raised because every watched service holds one connection;
catalog mode runs against the agent's defaults (docs/consul.md). Without checks, catalog mode
finds each change from the node list (every new instance brings its own node); with checks, the
check list names it too. bench/consul_vs_connect.py measures the same against Consul's own xDS.
Hosts: the sidecar on 127.0.98.2; instances are 127.9x.y.z (data only, never dialled).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import consul

from integration.peers.consul import (
    ConsulAgent,
    _launch,
    _new_agent,
    _wait_leader,
    _write_config,
)
from integration.peers.ports import loopback_host
from integration.pilot_helpers import running_mesh
from meshfed.adapters.consul.testing import running_adapter
from meshfed.pilot import xds_types as T

SERVICES = int(os.environ.get("MESHFED_BENCH_SERVICES", "1000"))
INSTANCES = int(os.environ.get("MESHFED_BENCH_INSTANCES", "5"))
CHANGES = int(os.environ.get("MESHFED_BENCH_CHANGES", "100"))
IDLE_S = float(os.environ.get("MESHFED_BENCH_IDLE_S", "30"))
MODE = os.environ.get("MESHFED_BENCH_MODE", "per-service")
CHECKS = os.environ.get("MESHFED_BENCH_CHECKS", "") == "1"
OUT = Path(
    os.environ.get(
        "MESHFED_BENCH_OUT",
        Path(__file__).parent
        / "results"
        / f"consul_catalog_{MODE.replace('-', '_')}{'_checks' if CHECKS else ''}.json",
    )
)
A_IP = "127.0.98.2"


def instance_ip(service: int, instance: int) -> str:
    # 127.<90+service/250>.<service%250>.<instance+1>: distinct loopback hosts, data only.
    return f"127.{90 + service // 250}.{service % 250}.{instance + 1}"


@contextlib.contextmanager
def agent_with_room(base: Path) -> Iterator[ConsulAgent]:
    agent = _new_agent("bench", loopback_host(), base)
    room = {"limits": {"http_max_conns_per_client": 4096}} if MODE == "per-service" else {}
    _write_config(agent, room)
    _launch(agent, dev=True)
    try:
        _wait_leader(agent, 60)
        yield agent
    finally:
        if agent.process:
            agent.process.stop()


def register(c: consul.Consul, service: int, instance: int) -> None:
    name = f"svc{service:04d}"
    sid = f"{name}-{instance}"
    check = {"CheckID": f"check-{sid}", "Name": "http", "ServiceID": sid, "Status": "passing"}
    assert c.catalog.register(
        f"node-{service}-{instance}",
        instance_ip(service, instance),
        service={"Service": name, "ID": sid, "Port": 8080, "Tags": ["protocol=http"]},
        check=check if CHECKS else None,
    )


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def test_consul_catalog_to_envoy_ack(tmp_path: Path) -> None:
    with agent_with_room(tmp_path / "consul") as agent:
        c = consul.Consul(host=agent.host, port=agent.http_port)
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda si: register(c, *si),
                    [(s, i) for s in range(SERVICES) for i in range(INSTANCES)],
                )
            )
        registered_s = time.monotonic() - started
        # The defaults users get (wait 5m, stale reads, maxWatches 128), but for the mode.
        params: dict[str, Any] = {"address": agent.http_addr}
        if MODE == "per-service":
            params["maxWatches"] = SERVICES + 1
        # Pilot with its default debounce (what `meshfed up` runs).
        async with running_mesh(quiet=0.1, max_delay=1.0) as mesh:
            started = time.monotonic()
            async with running_adapter(params, aggregate=mesh.aggregate, sync_timeout=300) as run:
                synced_s = time.monotonic() - started
                assert len(mesh.aggregate.services()) == SERVICES
                sidecar = await mesh.sidecar(A_IP, "a")
                ready_s = time.monotonic() - started
                conn = mesh.pilot.discovery.find(sidecar.spec.node_id)
                eds = conn.watches[T.ENDPOINT]

                # Idle: every watch sits in a blocking query; measure what that costs.
                await asyncio.sleep(3)
                cpu0, consul0, t0 = (
                    time.process_time(),
                    cpu_seconds(agent.process.pid),
                    time.monotonic(),
                )
                await asyncio.sleep(IDLE_S)
                idle_wall = time.monotonic() - t0
                idle_cpu = time.process_time() - cpu0
                consul_idle_cpu = cpu_seconds(agent.process.pid) - consul0
                idle_rss = rss_mb()
                threads = threading.active_count()

                # Changes: one registration at a time, timed to the aggregate and to Envoy's ACK.
                arrived: dict[str, float] = {}
                mesh.aggregate.subscribe(
                    lambda event: [arrived.setdefault(h, time.monotonic()) for h in event.hostnames]
                )
                rng = random.Random(6)
                to_ack: list[float] = []
                to_model: list[float] = []
                for n in range(CHANGES):
                    service = rng.randrange(SERVICES)
                    host = f"svc{service:04d}.service.consul"
                    arrived.pop(host, None)
                    acks = eds.acks
                    sent = time.monotonic()
                    await asyncio.to_thread(register, c, service, INSTANCES + n)
                    deadline = sent + 30
                    while (eds.acks == acks or host not in arrived) and time.monotonic() < deadline:
                        await asyncio.sleep(0.001)
                    assert eds.acks > acks, f"change {n}: no ACK within 30s"
                    assert len(mesh.aggregate.endpoints(host)) >= INSTANCES + 1
                    to_ack.append(eds.acked_at - sent)
                    to_model.append(arrived[host] - sent)
                    await asyncio.sleep(rng.uniform(0.05, 0.15))
                assert run.member.degraded is None
                assert run.adapter.describe()["modes"]["dc1"] == MODE
                described = run.adapter.describe()

        results: dict[str, Any] = {
            "mode": MODE,
            "checks": CHECKS,
            "catalog": {"services": SERVICES, "instances_per_service": INSTANCES},
            "registration_seconds": round(registered_s, 2),
            "adapter_initial_sync_seconds": round(synced_s, 2),
            "envoy_ready_seconds": round(ready_s, 2),
            "changes": CHANGES,
            "registration_to_envoy_ack_ms": {
                "p50": round(percentile(to_ack, 0.5) * 1000, 1),
                "p99": round(percentile(to_ack, 0.99) * 1000, 1),
                "max": round(max(to_ack) * 1000, 1),
                "mean": round(statistics.mean(to_ack) * 1000, 1),
            },
            "registration_to_aggregate_ms": {
                "p50": round(percentile(to_model, 0.5) * 1000, 1),
                "p99": round(percentile(to_model, 0.99) * 1000, 1),
            },
            "pilot_debounce_s": {"quiet": 0.1, "max": 1.0},
            "blocking_queries": len(described["watches"]),
            "catalog_mode": described["catalog"].get("dc1"),
            "idle": {
                "seconds": round(idle_wall, 1),
                "hub_cpu_seconds": round(idle_cpu, 3),
                "hub_cpu_percent": round(100 * idle_cpu / idle_wall, 2),
                "hub_rss_mb": round(idle_rss, 1),
                "hub_threads": threads,
                "consul_agent_cpu_seconds": round(consul_idle_cpu, 3),
            },
        }
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results, indent=2))
        print(f"results written to {OUT}")
