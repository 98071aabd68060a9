"""More services than the agent allows connections: the catalog-wide mode, on a real agent.

The agent is started with ``limits.http_max_conns_per_client = 20`` and holds 60 services (two
instances each; two thirds with a health check, the rest without). A blocking query per service
would need 61 connections and get 429s; with ``maxWatches`` below the limit the adapter follows
the datacenter with three (service list, all checks, one keep-alive for reads), and every kind of
change still arrives -- each within the bound docs/consul.md states for it. Registrations use the
catalog API (external nodes), as ESM-style and Nomad-style deployments do. Instance addresses are
127.0.94.x (data only), except the Envoy test's backends, 127.0.93.x, which answer.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import consul
import pytest
from consul.callback import CB

from integration.peers.consul import ConsulAgent, start_dev_agent
from integration.pilot_helpers import running_mesh, spread
from meshfed.adapters.consul import metrics
from meshfed.adapters.consul.testing import RunningAdapter, running_adapter

LIMIT = 20
SERVICES = 60
# Upper bounds (generous: a loaded CI box) for what docs/consul.md promises per change type:
CHECK_OR_LIST_S = 5.0  # a check flip, a new service, a deregistration: two reads
SWEEP_S = 10.0  # a check-less change: one sweep of 60 services
RECONCILE = 3.0  # the test's reconcile interval; node-only changes wait for it


@pytest.fixture
def limited_agent(tmp_path: Path) -> Iterator[ConsulAgent]:
    limits = {"limits": {"http_max_conns_per_client": LIMIT}}
    with start_dev_agent(tmp_path / "consul", extra_config=limits) as agent:
        yield agent


def client(agent: ConsulAgent) -> consul.Consul:
    return consul.Consul(host=agent.host, port=agent.http_port, connections_timeout=10)


def name(i: int) -> str:
    return f"svc{i:02d}"


def host(i: int) -> str:
    return f"{name(i)}.service.consul"


def ip(i: int, k: int) -> str:
    return f"127.0.94.{i * 2 + k + 1}"


def has_check(i: int) -> bool:
    return i % 3 != 0


def register(
    c: consul.Consul,
    i: int,
    k: int,
    status: str = "passing",
    address: str = "",
    node_address: str | None = None,
) -> None:
    """Instance k of service i on its own node; with a service check unless i % 3 == 0."""
    sid = f"{name(i)}-{k}"
    body: dict[str, Any] = {
        "Node": f"node-{i}-{k}",
        "Address": node_address or ip(i, k),
        "Service": {
            "Service": name(i),
            "ID": sid,
            "Port": 8080,
            "Address": address,
            "Tags": ["protocol=http"],
        },
    }
    if has_check(i):
        body["Checks"] = [{"CheckID": f"check-{sid}", "Name": "http", "ServiceID": sid}]
        body["Checks"][0]["Status"] = status
    assert c.http.put(CB.boolean(), "/v1/catalog/register", data=json.dumps(body))


def populate(agent: ConsulAgent) -> None:
    c = client(agent)
    for i in range(SERVICES):
        for k in (0, 1):
            register(c, i, k)


def params(agent: ConsulAgent, **extra: Any) -> dict[str, Any]:
    return {
        "address": agent.http_addr,
        "wait": "20s",
        "maxWatches": 10,
        "reconcile": f"{RECONCILE}s",
        **extra,
    }


def addresses(run: RunningAdapter, hostname: str) -> set[str]:
    return {e.address for e in run.aggregate.endpoints(hostname)}


def healthy(run: RunningAdapter, hostname: str) -> dict[str, bool]:
    return {e.address: e.healthy for e in run.aggregate.endpoints(hostname)}


def errors(dc: str = "dc1") -> float:
    return sum(
        metrics.QUERIES.labels("consul", dc, kind, "error")._value.get()
        for kind in ("list", "service", "checks", "fetch")
    )


async def timed(run: RunningAdapter, check: Any, what: str, bound: float) -> float:
    started = time.monotonic()
    await run.wait_for(check, what, bound)
    return time.monotonic() - started


async def test_more_services_than_connections_every_change_arrives(
    limited_agent: ConsulAgent,
) -> None:
    await asyncio.to_thread(populate, limited_agent)
    c = client(limited_agent)
    errors_before = errors()
    async with running_adapter(params(limited_agent), sync_timeout=60) as run:
        # Initial sync complete: every service and every endpoint, healthy, nothing degraded.
        assert len(run.aggregate.services()) == SERVICES
        assert all(addresses(run, host(i)) == {ip(i, 0), ip(i, 1)} for i in range(SERVICES))
        assert all(e.healthy for i in range(SERVICES) for e in run.aggregate.endpoints(host(i)))
        described = run.adapter.describe()
        assert described["modes"] == {"dc1": "catalog"}
        assert set(described["watches"]) == {"dc1/services", "dc1/checks"}
        assert described["catalog"]["dc1"]["services"] == SERVICES
        assert metrics.CATALOG_MODE.labels("consul", "dc1")._value.get() == 1
        assert metrics.WATCHES.labels("consul", "dc1")._value.get() == 2
        latencies: dict[str, float] = {}

        # A health check flips (service 1 has checks), and back.
        register(c, 1, 0, status="critical")
        latencies["check flip"] = await timed(
            run,
            lambda: not healthy(run, host(1))[ip(1, 0)],
            "the flip",
            CHECK_OR_LIST_S,
        )
        assert healthy(run, host(1))[ip(1, 1)]
        register(c, 1, 0, status="passing")
        await run.wait_for(
            lambda: healthy(run, host(1))[ip(1, 0)], "the flip back", CHECK_OR_LIST_S
        )

        # A new service (with checks) and a new instance of an existing one (with checks).
        register(c, SERVICES, 0)
        latencies["new service"] = await timed(
            run, lambda: addresses(run, host(SERVICES)) == {ip(SERVICES, 0)}, "it", CHECK_OR_LIST_S
        )
        register(c, 2, 2)
        latencies["new instance"] = await timed(
            run, lambda: len(addresses(run, host(2))) == 3, "svc02's third", CHECK_OR_LIST_S
        )

        # A deregistered instance: one with checks, one without.
        assert c.catalog.deregister("node-4-1")
        latencies["deregistration"] = await timed(
            run, lambda: addresses(run, host(4)) == {ip(4, 0)}, "svc04-1 gone", CHECK_OR_LIST_S
        )
        assert c.catalog.deregister("node-3-1")
        latencies["check-less deregistration"] = await timed(
            run, lambda: addresses(run, host(3)) == {ip(3, 0)}, "svc03-1 gone", SWEEP_S
        )

        # A check-less instance changes its address (service 6 has no checks): only the
        # service-list index moves, nothing says which service -- the sweep finds it.
        register(c, 6, 0, address="127.0.94.250")
        latencies["check-less address change"] = await timed(
            run,
            lambda: addresses(run, host(6)) == {"127.0.94.250", ip(6, 1)},
            "svc06-0's new address",
            SWEEP_S,
        )

        # A node-only change (the node's address; the service has no address of its own) moves
        # no list or check index: the periodic reconcile catches it.
        register(c, 9, 1, node_address="127.0.94.251")
        latencies["node address change"] = await timed(
            run,
            lambda: addresses(run, host(9)) == {ip(9, 0), "127.0.94.251"},
            "svc09-1's node address",
            RECONCILE + SWEEP_S,
        )

        # The service removed entirely.
        assert c.catalog.deregister(f"node-{SERVICES}-0")
        await run.wait_for(lambda: run.aggregate.service(host(SERVICES)) is None, "gone", 5)

        assert run.member.degraded is None
        assert errors() == errors_before, "some read failed (429?)"
        catalog = run.adapter.describe()["catalog"]["dc1"]
        assert catalog["errors"] == 0 and catalog["sweeps"]["unexplained"] >= 1
        print("latencies (s):", {k: round(v, 3) for k, v in latencies.items()})


async def test_reordered_or_unchanged_re_registration_pushes_nothing(
    limited_agent: ConsulAgent,
) -> None:
    await asyncio.to_thread(populate, limited_agent)
    c = client(limited_agent)
    async with running_adapter(params(limited_agent), sync_timeout=60) as run:
        before = len(run.events)
        reads = run.adapter.describe()["catalog"]["dc1"]["reads"]
        # The same registration again (check-less service: the list index moves, a sweep runs),
        # then one with a check: both reach Consul, neither changes the mesh.
        register(c, 0, 0)
        register(c, 1, 0)
        await run.wait_for(
            lambda: run.adapter.describe()["catalog"]["dc1"]["reads"] >= reads + SERVICES,
            "the sweep",
            SWEEP_S,
        )
        await run.wait_for(
            lambda: run.adapter.describe()["catalog"]["dc1"]["pending"] == 0, "it to end", SWEEP_S
        )
        assert len(run.events) == before


async def test_growing_past_max_watches_switches_mode_without_pushes(
    limited_agent: ConsulAgent,
) -> None:
    c = client(limited_agent)
    for i in range(6):
        register(c, i, 0)
    async with running_adapter(params(limited_agent, maxWatches=8)) as run:
        assert run.adapter.describe()["modes"] == {"dc1": "per-service"}
        assert len(run.adapter.describe()["watches"]) == 7
        before = len(run.events)
        for i in range(6, 12):
            register(c, i, 0)
        await run.wait_for(lambda: len(run.aggregate.services()) == 12, "twelve services", 10)
        described = run.adapter.describe()
        assert described["modes"] == {"dc1": "catalog"}
        assert set(described["watches"]) == {"dc1/services", "dc1/checks"}
        await run.wait_for(
            lambda: run.adapter.describe()["catalog"]["dc1"]["pending"] == 0, "reads", SWEEP_S
        )
        # Only the new services were pushed; the switch itself changed nothing in the mesh.
        pushed = {h for e in run.events[before:] for h in e.hostnames}
        assert pushed == {host(i) for i in range(6, 12)}
        # Shrinking to half the room switches back to a blocking query per service.
        for i in range(3, 12):
            assert c.catalog.deregister(f"node-{i}-0")
        await run.wait_for(
            lambda: run.adapter.describe()["modes"] == {"dc1": "per-service"}, "switch back", 10
        )
        await run.wait_for(lambda: len(run.aggregate.services()) == 3, "three services", 10)
        assert set(run.adapter.describe()["watches"]) == {
            "dc1/services",
            *(f"dc1/{name(i)}" for i in range(3)),
        }
        assert run.member.degraded is None


async def test_check_flip_reaches_envoy_in_catalog_mode(limited_agent: ConsulAgent) -> None:
    await asyncio.to_thread(populate, limited_agent)
    c = client(limited_agent)
    web = "web.service.consul"

    def register_web(k: int, status: str) -> None:
        body = {
            "Node": f"web-node-{k}",
            "Address": f"127.0.93.{10 + k}",
            "Service": {
                "Service": "web",
                "ID": f"web-{k}",
                "Port": 8080,
                "Tags": ["protocol=http"],
            },
            "Checks": [
                {"CheckID": f"web-{k}", "Name": "h", "ServiceID": f"web-{k}", "Status": status}
            ],
        }
        assert c.http.put(CB.boolean(), "/v1/catalog/register", data=json.dumps(body))

    for k in (1, 2):
        register_web(k, "passing")
    async with (
        running_mesh(quiet=0.01, max_delay=0.1) as mesh,
        running_adapter(params(limited_agent), aggregate=mesh.aggregate, sync_timeout=60) as run,
    ):
        assert run.adapter.describe()["modes"] == {"dc1": "catalog"}
        for k in (1, 2):
            await mesh.backend(f"web-{k}", f"127.0.93.{10 + k}", 8080)
        sidecar = await mesh.sidecar("127.0.93.2", "a")
        url = sidecar.outbound_url + "/"
        async with aiohttp.ClientSession() as session:

            async def answering(expected: set[str]) -> None:
                deadline = time.monotonic() + 20
                counts: dict[str, int] = {}
                while time.monotonic() < deadline:
                    counts = await spread(session, url, web, 30)
                    if set(counts) == expected:
                        return
                    await asyncio.sleep(0.1)
                raise AssertionError(f"expected {sorted(expected)}, got {counts}")

            await answering({"web-1", "web-2"})
            register_web(2, "critical")
            await answering({"web-1"})
            register_web(2, "passing")
            await answering({"web-1", "web-2"})
        assert run.member.degraded is None
