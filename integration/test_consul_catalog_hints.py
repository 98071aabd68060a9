"""Catalog-wide mode finds check-less writes from the node list instead of a sweep (real agent).

A write without a health check moves only Consul's service list, which does not say which
service changed; the node list does when the write created, rewrote or removed a node (every
catalog-API registration of an external instance does). These tests register such writes on a
real Consul 1.16 dev agent with its default connection limit and assert both that the change
arrives and *how*: no sweep where the node list names the service, a sweep started at once
(no settle wait) where it cannot (an instance added to a node that stayed as it was). Instance
addresses are 127.0.95.x (data only, never dialled).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import consul
import pytest
from consul.callback import CB

from integration.peers.consul import ConsulAgent, start_dev_agent
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
) -> None:
    """Instance k of service i: on its own node (or ``node``), or on instance ``on``'s node,
    re-stating that node exactly as it is (so the node itself is not written)."""
    sid = f"{name(i)}-{k}"
    body: dict[str, Any] = {
        "Node": node or (f"node-{on[0]}-{on[1]}" if on else f"node-{i}-{k}"),
        "Address": ip(*on) if on else ip(i, k),
        "Service": {"Service": name(i), "ID": sid, "Port": 8000 + k, "Tags": ["protocol=http"]},
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


async def test_check_less_writes_found_from_the_node_list(agent: ConsulAgent) -> None:
    c = agent.client()
    for i in range(SERVICES):
        for k in (0, 1):
            await asyncio.to_thread(register, c, i, k)
    params = {"address": agent.http_addr, "maxWatches": 10, "reconcile": "10m"}
    async with running_adapter(params, sync_timeout=60) as run:
        assert run.adapter.describe()["modes"] == {"dc1": "catalog"}
        assert catalog(run)["nodes"] >= SERVICES * 2

        async def arrives(what: str, check: Any) -> None:
            await run.wait_for(check, what, ARRIVAL_S, interval=0.01)
            await run.wait_for(lambda: catalog(run)["pending"] == 0, "reads to end", ARRIVAL_S)

        def sweeps() -> int:
            return int(catalog(run)["sweeps"]["unexplained"])

        before = sweeps()
        # A new instance of an existing service on a node of its own, no check.
        await asyncio.to_thread(register, c, 3, 2)
        await arrives("svc03's third instance", lambda: ports(run, 3) == {8000, 8001, 8002})
        # A node whose name holds a double quote (the filter takes it backquoted).
        await asyncio.to_thread(register, c, 4, 2, 'odd"node')
        await arrives('svc04 on odd"node', lambda: ports(run, 4) == {8000, 8001, 8002})
        # A whole node deregistered while its service keeps another instance.
        assert await asyncio.to_thread(c.catalog.deregister, "node-5-1")
        await arrives("svc05-1 gone", lambda: ports(run, 5) == {8000})
        # With a check: the check table says so, the check list names the service.
        await asyncio.to_thread(register, c, 6, 2, None, True)
        await arrives("svc06's checked instance", lambda: ports(run, 6) == {8000, 8001, 8002})
        assert sweeps() == before, catalog(run)
        hints = catalog(run)["hints"]
        # New node, odd node: the node written at the list's index. The deregistration: the
        # gone node named its service (a node deregistration also bumps the check table's
        # index, hence "checks"), whose read answered with the list's index.
        assert hints["explained"] >= 2 and hints["found"] + hints["checks"] >= 1, hints

        # An instance added to a node that stays as it was: no node changed, so the whole
        # catalog is looked at (a sweep, done as one dump read) -- at once, since the check
        # table shows the write had no check -- and only svc07 is read.
        reads = catalog(run)["reads"]
        await asyncio.to_thread(register, c, 7, 2, None, False, (8, 0))
        await arrives("svc07 on node-8-0", lambda: ports(run, 7) == {8000, 8001, 8002})
        assert sweeps() == before + 1
        hints = catalog(run)["hints"]
        # (The node list may still name svc06's new node, which the check list explained
        # before any look at it: "found", then the dump for the rest.)
        assert hints["dump"] >= 1, hints
        assert catalog(run)["reads"] - reads < SERVICES, "read every service instead of a dump"

        # A node name the filter cannot quote (both quote characters): the dump, still found.
        await asyncio.to_thread(register, c, 9, 2, 'both"and`quotes')
        await arrives("svc09 on both quotes", lambda: ports(run, 9) == {8000, 8001, 8002})
        assert sweeps() == before + 2
        assert run.member.degraded is None
        assert catalog(run)["errors"] == 0
