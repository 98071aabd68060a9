"""Benchmark: meshfed against Consul Connect's own xDS server, side by side (run by hand).

One real Consul 1.16.1 dev agent on its default settings (no raised ``http_max_conns_per_client``)
and two Envoys from the same binary, in one run:

- **Consul**: a terminating gateway (``consul connect envoy -gateway=terminating -register
  -bootstrap``) linked to every service by a wildcard ``terminating-gateway`` config entry, so
  Consul's built-in xDS server sends that Envoy one EDS cluster per service with the service's
  own catalog instances as endpoints;
- **meshfed**: the Consul adapter (its defaults: catalog-wide mode past ``maxWatches``) feeding
  Pilot (the debounce ``meshfed up`` runs), which sends a sidecar one cluster per service.

Why a terminating gateway and not a sidecar with upstreams: a Connect sidecar's upstream cluster
holds the upstream's *Connect-capable* instances (its sidecar proxies), so a plain registration
would never reach it; the terminating gateway is the Connect component whose clusters are plain
catalog instances, which is exactly what meshfed sends. Both sides therefore watch the same
registration (a new instance of an existing service, with or without a passing check), both get
every service as a cluster, and both are measured the same way: from just before the registration is
sent until that Envoy's cluster for the service has one more member. The poll reads one stat per
Envoy (``membership_total``, the only stat either Envoy keeps -- both get the same
``stats_matcher``, so a poll costs Envoy microseconds rather than a dump of every cluster),
from a child process (polling from the hub's own event loop cost meshfed's tail); once both saw
it, ``/clusters?format=json`` of each is read to check the new address is there.

Run it (a pytest module because it uses the integration harness)::

    flock /tmp/meshfed-integration.lock timeout 900 \\
        .venv/bin/python -m pytest -s bench/consul_vs_connect.py
    # MESHFED_BENCH_SIZES (1,200,1000): services, each with MESHFED_BENCH_INSTANCES (5)
    # MESHFED_BENCH_CHECKS (0,1): without / with a passing check on every instance
    # MESHFED_BENCH_CHANGES (60) registrations timed per size
    # MESHFED_BENCH_OWN_NODE=1: each new instance brings a node of its own instead of joining
    #   one that already exists (its service's first instance's node, the default: that is how
    #   Consul agents register their services -- the node stays as it was)
    # results: bench/results/consul_vs_connect_<services>[_checks][_ownnode].json

Besides the end-to-end figures, the JSON says where meshfed's time went during the timed
changes: the catalog follower's stages (each read before the service's own, the read itself,
the apply into the model, and ``moveToApply`` from the service list's move to that apply) and
Pilot's debounce wait and push build, from the hub's own metrics.

Nothing leaves 127.0.0.0/8; instances are 127.9x.y.z addresses (data only, never dialled).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import consul
import prometheus_client
import pytest

from integration.peers.artifacts import consul_path
from integration.peers.consul import ConsulAgent, start_dev_agent
from integration.peers.envoy import start_envoy
from integration.peers.ports import free_port
from integration.pilot_helpers import running_mesh
from meshfed.adapters.consul.testing import running_adapter
from meshfed.proxy import EnvoyProcess, ProxySpec, wait_ready

# Pilot's own histograms (process-wide registry): how long batches waited, how long pushes took.
PILOT_HISTOGRAMS = {
    "debounceWait": ("meshfed_pilot_debounce_seconds", {}),
    "pushBuild": ("meshfed_pilot_xds_push_seconds", {"type": "eds"}),
}

SIZES = [int(s) for s in os.environ.get("MESHFED_BENCH_SIZES", "1,200,1000").split(",") if s]
CHECK_MODES = [c == "1" for c in os.environ.get("MESHFED_BENCH_CHECKS", "0,1").split(",") if c]
INSTANCES = int(os.environ.get("MESHFED_BENCH_INSTANCES", "5"))
CHANGES = int(os.environ.get("MESHFED_BENCH_CHANGES", "60"))
SAME_NODE = os.environ.get("MESHFED_BENCH_OWN_NODE", "") != "1"
RESULTS = Path(__file__).parent / "results"
SIDECAR_IP = "127.0.98.3"
CHANGE_TIMEOUT_S = 30.0
POLL_S = 0.002
# One stat per cluster, in both Envoys: the poll then costs Envoy almost nothing.
STATS_ONLY_MEMBERSHIP = (
    "{stats_config: {stats_matcher: {inclusion_list: {patterns: [{suffix: membership_total}]}}}}"
)
SERVICE_IN_STAT = re.compile(r"(?<![0-9a-z])(svc\d{4})\.")


def instance_ip(service: int, instance: int) -> str:
    # 127.<90+service/250>.<service%250>.<instance+1>: distinct loopback hosts, data only.
    return f"127.{90 + service // 250}.{service % 250}.{instance % 250 + 1}"


def register(
    c: consul.Consul, service: int, instance: int, checks: bool, node: int | None = None
) -> None:
    """Instance ``instance`` of the service, on node ``node-<service>-<node or instance>``."""
    name = f"svc{service:04d}"
    sid = f"{name}-{instance}"
    check = {"CheckID": f"check-{sid}", "Name": "http", "ServiceID": sid, "Status": "passing"}
    on = instance if node is None else node
    assert c.catalog.register(
        f"node-{service}-{on}",
        instance_ip(service, on),
        service={
            "Service": name,
            "ID": sid,
            "Port": 8080,
            "Tags": ["protocol=http"],
            # On a shared node the instance needs an address of its own.
            "Address": instance_ip(service, instance) if node is not None else "",
        },
        check=check if checks else None,
    )


def histogram_totals() -> dict[str, tuple[float, float]]:
    """Pilot histogram -> (sum of seconds, count) so far, in this process."""
    totals: dict[str, tuple[float, float]] = {}
    for key, (metric, labels) in PILOT_HISTOGRAMS.items():
        total = prometheus_client.REGISTRY.get_sample_value(f"{metric}_sum", labels) or 0.0
        count = prometheus_client.REGISTRY.get_sample_value(f"{metric}_count", labels) or 0.0
        totals[key] = (total, count)
    return totals


def histogram_means_ms(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, dict[str, float]]:
    out = {}
    for key, (total, count) in after.items():
        d_total, d_count = total - before[key][0], count - before[key][1]
        out[key] = {
            "count": d_count,
            "meanMs": round(d_total / d_count * 1000, 2) if d_count else 0.0,
        }
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary_ms(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 0.5) * 1000, 1),
        "p99": round(percentile(values, 0.99) * 1000, 1),
        "max": round(max(values) * 1000, 1),
        "mean": round(statistics.mean(values) * 1000, 1),
    }


@contextlib.contextmanager
def connect_gateway(agent: ConsulAgent, base: Path) -> Iterator[str]:
    """Consul's terminating gateway for every service; yields its Envoy's admin URL."""
    c = agent.client()
    assert c.config.set("terminating-gateway", "tgw", {"Services": [{"Name": "*"}]})
    listen, admin = free_port(agent.host), free_port(agent.host)
    argv = [
        str(consul_path()),
        "connect",
        "envoy",
        f"-http-addr={agent.url}",
        f"-grpc-addr={agent.host}:{agent.grpc_port}",
        "-gateway=terminating",
        "-register",
        "-service=tgw",
        f"-address={agent.host}:{listen}",
        # The agent's address is on lo but no interface carries it; say it is bindable.
        f"-bind-address=tgw={agent.host}:{listen}",
        f"-admin-bind={agent.host}:{admin}",
        "-bootstrap",
    ]
    made = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert made.returncode == 0, f"consul connect envoy -bootstrap failed: {made.stderr}"
    bootstrap = json.loads(made.stdout)
    with start_envoy(base, bootstrap, extra_args=["--config-yaml", STATS_ONLY_MEMBERSHIP]) as envoy:
        yield envoy.admin_url


class Watcher:
    """Reads one Envoy's ``membership_total`` per service cluster over its admin API."""

    def __init__(self, session: aiohttp.ClientSession, admin_url: str) -> None:
        self.session = session
        self.admin_url = admin_url
        self.stat: dict[str, str] = {}  # service name -> full stat name

    async def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        async with self.session.get(
            self.admin_url + path, params=params, timeout=aiohttp.ClientTimeout(total=10)
        ) as response:
            assert response.status == 200, f"{self.admin_url}{path}: HTTP {response.status}"
            return json.loads(await response.text())

    async def memberships(self) -> dict[str, int]:
        """Service name -> members of its cluster (also learns the stat names)."""
        stats = (await self._get("/stats", {"format": "json", "filter": "membership_total"}))[
            "stats"
        ]
        found: dict[str, int] = {}
        for stat in stats:
            match = SERVICE_IN_STAT.search(stat["name"])
            if match:
                self.stat[match.group(1)] = stat["name"]
                found[match.group(1)] = int(stat.get("value") or 0)
        return found

    async def members(self, service: str) -> int:
        pattern = f"^{re.escape(self.stat[service])}$"
        stats = (await self._get("/stats", {"format": "json", "filter": pattern}))["stats"]
        return int(stats[0].get("value") or 0) if stats else 0

    async def has_address(self, address: str) -> bool:
        clusters = await self._get("/clusters", {"format": "json"})
        for cluster in clusters.get("cluster_statuses", ()):
            for host in cluster.get("host_statuses", ()):
                if host.get("address", {}).get("socket_address", {}).get("address") == address:
                    return True
        return False

    async def wait_full(self, services: int, timeout: float) -> float:
        started = time.monotonic()
        deadline = started + timeout
        counts: dict[str, int] = {}
        while time.monotonic() < deadline:
            counts = await self.memberships()
            if len(counts) >= services and all(v >= INSTANCES for v in counts.values()):
                return time.monotonic() - started
            await asyncio.sleep(0.5)
        full = sum(v >= INSTANCES for v in counts.values())
        raise AssertionError(f"{self.admin_url}: {full}/{services} clusters full after {timeout}s")


def poll_main() -> None:
    """The poller, in a process of its own so that polling costs the hub nothing.

    Reads one JSON line per change from stdin -- ``{"admins": [...], "stats": [...],
    "before": [...]}`` -- and answers with ``{"at": [...]}``: for each Envoy, the
    ``time.monotonic()`` (one clock for every process on Linux) at which that stat first
    exceeded ``before``, or None after ``CHANGE_TIMEOUT_S``.
    """
    connections: dict[str, http.client.HTTPConnection] = {}

    def value(admin: str, stat: str) -> int:
        if admin not in connections:
            parsed = urllib.parse.urlsplit(admin)
            connections[admin] = http.client.HTTPConnection(
                parsed.hostname or "", parsed.port, timeout=5
            )
        query = urllib.parse.urlencode({"format": "json", "filter": f"^{re.escape(stat)}$"})
        conn = connections[admin]
        conn.request("GET", f"/stats?{query}")
        stats = json.loads(conn.getresponse().read())["stats"]
        return int(stats[0].get("value") or 0) if stats else 0

    for line in sys.stdin:
        ask = json.loads(line)
        deadline = time.monotonic() + CHANGE_TIMEOUT_S
        at: list[float | None] = [None] * len(ask["admins"])
        while None in at and time.monotonic() < deadline:
            for i, (admin, stat, before) in enumerate(
                zip(ask["admins"], ask["stats"], ask["before"], strict=True)
            ):
                if at[i] is None and value(admin, stat) > before:
                    at[i] = time.monotonic()
            time.sleep(POLL_S)
        print(json.dumps({"at": at}), flush=True)


class Poller:
    """The bench's handle on the :func:`poll_main` child process."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def first_above(
        self, watchers: list[Watcher], service: str, before: list[int]
    ) -> list[float]:
        ask = {
            "admins": [w.admin_url for w in watchers],
            "stats": [w.stat[service] for w in watchers],
            "before": before,
        }
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write((json.dumps(ask) + "\n").encode())
        await self.process.stdin.drain()
        line = await asyncio.wait_for(self.process.stdout.readline(), CHANGE_TIMEOUT_S + 10)
        at = json.loads(line)["at"]
        late = [w.admin_url for w, t in zip(watchers, at, strict=True) if t is None]
        assert not late, f"{service} never grew within {CHANGE_TIMEOUT_S}s at {late}"
        return [float(t) for t in at]


@contextlib.asynccontextmanager
async def poller() -> AsyncIterator[Poller]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--poll",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    try:
        yield Poller(process)
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()


def case_ids() -> list[Any]:
    return [
        pytest.param(s, checks, id=f"{s}x{INSTANCES}{'-checks' if checks else ''}")
        for s in SIZES
        for checks in CHECK_MODES
    ]


@pytest.mark.parametrize(("services", "checks"), case_ids())
async def test_meshfed_vs_consul_connect(tmp_path: Path, services: int, checks: bool) -> None:
    with start_dev_agent(tmp_path / "consul") as agent:
        c = agent.client()
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda si: register(c, *si, checks),
                    [(s, i) for s in range(services) for i in range(INSTANCES)],
                )
            )
        registered_s = time.monotonic() - started
        with connect_gateway(agent, tmp_path / "connect") as connect_admin:
            async with (
                running_mesh(quiet=0.1, max_delay=1.0) as mesh,
                running_adapter(
                    {"address": agent.http_addr}, aggregate=mesh.aggregate, sync_timeout=300
                ) as run,
                aiohttp.ClientSession() as session,
                poller() as polls,
            ):
                spec = ProxySpec(
                    ip=SIDECAR_IP,
                    workload="bench",
                    namespace="default",
                    pilot=f"127.0.0.1:{mesh.pilot.port}",
                    interception="NONE",
                )
                sidecar = EnvoyProcess(spec, extra_args=("--config-yaml", STATS_ONLY_MEMBERSHIP))
                mesh.envoys.append(sidecar)
                await sidecar.start()
                await wait_ready(sidecar, mesh.hub_url, timeout=120)
                sides = {
                    "meshfed": Watcher(session, sidecar.admin_url),
                    "consul": Watcher(session, connect_admin),
                }
                ready = {
                    name: round(await w.wait_full(services, 300), 2) for name, w in sides.items()
                }
                mode = run.adapter.describe()["modes"]["dc1"]

                rng = random.Random(18)
                took: dict[str, list[float]] = {name: [] for name in sides}
                call_s: list[float] = []
                follower = run.adapter._followers.get("dc1")
                if follower is not None:
                    follower.stages.clear()  # only the timed changes
                pilot_before = histogram_totals()
                deadline_total = time.monotonic() + 600
                for n in range(CHANGES):
                    if time.monotonic() > deadline_total:
                        break
                    service = rng.randrange(services)
                    name = f"svc{service:04d}"
                    before = {k: await w.members(name) for k, w in sides.items()}
                    sent = time.monotonic()
                    await asyncio.to_thread(
                        register, c, service, INSTANCES + n, checks, 0 if SAME_NODE else None
                    )
                    call_s.append(time.monotonic() - sent)
                    seen = await polls.first_above(
                        list(sides.values()), name, [before[k] for k in sides]
                    )
                    address = instance_ip(service, INSTANCES + n)
                    for (k, w), at in zip(sides.items(), seen, strict=True):
                        assert await w.has_address(address), f"{k}: {address} not in /clusters"
                        took[k].append(at - sent)
                    # Apart enough that neither side coalesces two changes into one push.
                    await asyncio.sleep(rng.uniform(0.3, 0.6))
                assert run.member.degraded is None
                described = run.adapter.describe()
                pilot_ms = histogram_means_ms(pilot_before, histogram_totals())

    results: dict[str, Any] = {
        "consul": "1.16.1 -dev, default limits (http_max_conns_per_client 200)",
        "catalog": {"services": services, "instances_per_service": INSTANCES, "checks": checks},
        "new_instances_on": "an existing node" if SAME_NODE else "a node of their own",
        "meshfed_mode": mode,
        "meshfed_catalog": described["catalog"].get("dc1"),
        "registration_seconds": round(registered_s, 2),
        "envoy_full_seconds": ready,
        "changes": len(took["meshfed"]),
        "registration_to_envoy_clusters_ms": {k: summary_ms(v) for k, v in took.items()},
        "registration_call_ms": summary_ms(call_s) if call_s else None,
        "pilot_during_changes": pilot_ms,
        "pilot_debounce_s": {"quiet": 0.1, "max": 1.0},
    }
    ms = results["registration_to_envoy_clusters_ms"]
    results["ratio_meshfed_over_consul"] = {
        q: round(ms["meshfed"][q] / ms["consul"][q], 2) for q in ("p50", "p99")
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = ("_checks" if checks else "") + ("" if SAME_NODE else "_ownnode")
    out = RESULTS / f"consul_vs_connect_{services}{suffix}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(
        f"{services}x{INSTANCES}{suffix}: meshfed p50 {ms['meshfed']['p50']}"
        f" p99 {ms['meshfed']['p99']} | consul p50 {ms['consul']['p50']} p99"
        f" {ms['consul']['p99']} | ratio {results['ratio_meshfed_over_consul']} -> {out}"
    )


if __name__ == "__main__" and sys.argv[1:] == ["--poll"]:
    poll_main()
