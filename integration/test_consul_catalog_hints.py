"""Catalog-wide mode finds check-less writes without reading every service (real agent).

A write without a health check moves only Consul's service list, which does not say which
service changed. The service summaries do when the write added or removed an instance -- on a
node of its own or on one that stays as it was, which is how Consul agents register -- and the
node list does when the write rewrote its node; only an instance changed in place on an
unchanged node needs the catalog dump. These tests register such writes on a real Consul 1.16
dev agent with its default connection limit and assert both that the change arrives and
*how*. Instance addresses are 127.0.95.x (data only, never dialled), except the Envoy test's
backends, 127.0.97.30-.32, which answer.
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
from meshfed.adapters.consul.testing import RunningAdapter, running_adapter

SERVICES = 30
ARRIVAL_S = 5.0  # generous for a loaded box; a hint-found change takes tens of milliseconds


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[ConsulAgent]:
    with start_dev_agent(tmp_path / "consul") as agent:
        yield agent


def name(i: int) -> str:
    return f"svc{i:02d}"


def host(i: int) -> str:
    return f"{name(i)}.service.consul"


def ip(i: int, k: int) -> str:
    return f"127.0.95.{(i * 7 + k) % 250 + 1}"


def register(
    c: consul.Consul,
    i: int,
    k: int,
    node: str | None = None,
    check: bool = False,
    on: tuple[int, int] | None = None,
    port: int | None = None,
    node_address: str | None = None,
) -> None:
    """Instance k of service i: on its own node (or ``node``), or on instance ``on``'s node,
    re-stating that node exactly as it is (so the node itself is not written) unless
    ``node_address`` rewrites it."""
    sid = f"{name(i)}-{k}"
    body: dict[str, Any] = {
        "Node": node or (f"node-{on[0]}-{on[1]}" if on else f"node-{i}-{k}"),
        "Address": node_address or (ip(*on) if on else ip(i, k)),
        "Service": {
            "Service": name(i),
            "ID": sid,
            "Port": 8000 + k if port is None else port,
            "Tags": ["protocol=http"],
        },
    }
    if on:
        body["Service"]["Address"] = ip(i, k)
    if check:
        body["Checks"] = [{"CheckID": f"check-{sid}", "Name": "c", "ServiceID": sid}]
        body["Checks"][0]["Status"] = "passing"
    assert c.http.put(CB.boolean(), "/v1/catalog/register", data=json.dumps(body))


def ports(run: RunningAdapter, i: int) -> set[int]:
    return {p for e in run.aggregate.endpoints(host(i)) for p in e.ports.values()}


def catalog(run: RunningAdapter) -> dict[str, Any]:
    return run.adapter.describe()["catalog"]["dc1"]


async def populated(agent: ConsulAgent) -> consul.Consul:
    c = agent.client()
    for i in range(SERVICES):
        for k in (0, 1):
            await asyncio.to_thread(register, c, i, k)
    return c


def params(agent: ConsulAgent) -> dict[str, Any]:
    return {"address": agent.http_addr, "maxWatches": 10, "reconcile": "10m"}


async def arrives(run: RunningAdapter, what: str, check: Any) -> None:
    await run.wait_for(check, what, ARRIVAL_S, interval=0.01)
    await run.wait_for(lambda: catalog(run)["pending"] == 0, "reads to end", ARRIVAL_S)


def sweeps(run: RunningAdapter) -> int:
    return int(catalog(run)["sweeps"]["unexplained"])


async def test_added_and_removed_instances_found_from_the_summaries(agent: ConsulAgent) -> None:
    c = await populated(agent)
    async with running_adapter(params(agent), sync_timeout=60) as run:
        assert run.adapter.describe()["modes"] == {"dc1": "catalog"}
        assert catalog(run)["summaries"] >= SERVICES
        before = sweeps(run)
        reads = catalog(run)["reads"]
        # A new instance of an existing service on a node that stays as it was (another
        # service's): no list but the summaries says which service.
        await asyncio.to_thread(register, c, 7, 2, None, False, (8, 0))
        await arrives(run, "svc07 on node-8-0", lambda: ports(run, 7) == {8000, 8001, 8002})
        # A second one on its own service's node.
        await asyncio.to_thread(register, c, 7, 3, None, False, (7, 0))
        await arrives(run, "svc07 on node-7-0", lambda: ports(run, 7) == {8000, 8001, 8002, 8003})
        # One removed from a node that keeps its other services.
        assert await asyncio.to_thread(c.catalog.deregister, "node-8-0", "svc07-2")
        await arrives(run, "svc07-2 gone", lambda: ports(run, 7) == {8000, 8001, 8003})
        # A new instance on a node of its own, and a node whose name holds a double quote.
        await asyncio.to_thread(register, c, 3, 2)
        await arrives(run, "svc03's third instance", lambda: ports(run, 3) == {8000, 8001, 8002})
        await asyncio.to_thread(register, c, 4, 2, 'odd"node')
        await arrives(run, 'svc04 on odd"node', lambda: ports(run, 4) == {8000, 8001, 8002})
        # A whole node deregistered while its service keeps another instance.
        assert await asyncio.to_thread(c.catalog.deregister, "node-5-1")
        await arrives(run, "svc05-1 gone", lambda: ports(run, 5) == {8000})
        # With a check: the summaries or the check list name the service.
        await asyncio.to_thread(register, c, 6, 2, None, True)
        await arrives(run, "svc06's checked instance", lambda: ports(run, 6) == {8000, 8001, 8002})
        assert sweeps(run) == before, catalog(run)
        hints = catalog(run)["hints"]
        assert hints["summary"] >= 6 and hints["dump"] == 0, hints
        # Each change read its own service (a few more if a check list came late), not all.
        assert catalog(run)["reads"] - reads < 4 * 7 + SERVICES // 2, catalog(run)
        assert run.member.degraded is None
        assert catalog(run)["errors"] == 0


async def test_in_place_changes_found_from_the_node_list_or_the_dump(agent: ConsulAgent) -> None:
    c = await populated(agent)
    async with running_adapter(params(agent), sync_timeout=60) as run:
        before = sweeps(run)
        # A port changed in place while the node's address changes too: the summaries show
        # nothing (same count, same nodes); the node written at the list's index names it.
        await asyncio.to_thread(register, c, 3, 1, None, False, None, 9001, "127.0.95.250")
        await arrives(run, "svc03-1 on 9001", lambda: ports(run, 3) == {8000, 9001})
        assert sweeps(run) == before, catalog(run)
        assert catalog(run)["hints"]["explained"] >= 1, catalog(run)["hints"]

        # A port changed in place on a node that stays as it was: no list says which service,
        # so the whole catalog is looked at -- one dump read, at once (the check table shows
        # the write had no check) -- and only svc07 is read.
        reads = catalog(run)["reads"]
        await asyncio.to_thread(register, c, 7, 1, None, False, None, 9002)
        await arrives(run, "svc07-1 on 9002", lambda: ports(run, 7) == {8000, 9002})
        assert sweeps(run) == before + 1
        assert catalog(run)["hints"]["dump"] >= 1, catalog(run)["hints"]
        assert catalog(run)["reads"] - reads < SERVICES, "read every service instead of a dump"

        # A node name the filter cannot quote (both quote characters), rewritten with its
        # instance: the node list cannot be filtered to it, so the dump again.
        await asyncio.to_thread(register, c, 9, 2, 'both"and`quotes')
        await arrives(run, "svc09 on both quotes", lambda: ports(run, 9) == {8000, 8001, 8002})
        await asyncio.to_thread(
            register, c, 9, 2, 'both"and`quotes', False, None, 9003, "127.0.95.251"
        )
        await arrives(run, "svc09-2 on 9003", lambda: ports(run, 9) == {8000, 8001, 9003})
        assert sweeps(run) == before + 2
        assert run.member.degraded is None
        assert catalog(run)["errors"] == 0


async def test_new_instance_on_an_existing_node_reaches_envoy_past_max_watches(
    agent: ConsulAgent,
) -> None:
    """Default settings, more services than ``maxWatches`` (128): catalog-wide mode. A new
    instance of an existing service joins the node its first instance is on, without a check --
    the write no watched index names -- and traffic reaches it through Envoy."""
    c = agent.client()
    for i in range(130):
        await asyncio.to_thread(register, c, i, 0)
    web = "web.service.consul"

    def register_web(k: int) -> None:
        body = {
            "Node": "web-node",
            "Address": "127.0.97.30",
            "Service": {
                "Service": "web",
                "ID": f"web-{k}",
                "Address": f"127.0.97.{30 + k}",
                "Port": 8080,
                "Tags": ["protocol=http"],
            },
        }
        assert c.http.put(CB.boolean(), "/v1/catalog/register", data=json.dumps(body))

    register_web(1)
    async with (
        running_mesh(quiet=0.01, max_delay=0.1) as mesh,
        running_adapter(
            {"address": agent.http_addr}, aggregate=mesh.aggregate, sync_timeout=60
        ) as run,
    ):
        assert run.adapter.describe()["modes"] == {"dc1": "catalog"}
        for k in (1, 2):
            await mesh.backend(f"web-{k}", f"127.0.97.{30 + k}", 8080)
        sidecar = await mesh.sidecar("127.0.97.29", "a")
        url = sidecar.outbound_url + "/"
        async with aiohttp.ClientSession() as session:

            async def answering(expected: set[str]) -> None:
                deadline = time.monotonic() + 20
                counts: dict[str, int] = {}
                while time.monotonic() < deadline:
                    counts = await spread(session, url, web, 30)
                    if set(counts) == expected:
                        return
                    await asyncio.sleep(0.05)
                raise AssertionError(f"expected {sorted(expected)}, got {counts}")

            await answering({"web-1"})
            before = sweeps(run)
            started = time.monotonic()
            await asyncio.to_thread(register_web, 2)
            await answering({"web-1", "web-2"})
            took = time.monotonic() - started
        assert sweeps(run) == before, catalog(run)
        assert catalog(run)["hints"]["summary"] >= 1, catalog(run)["hints"]
        assert took < ARRIVAL_S, took
        assert run.member.degraded is None
