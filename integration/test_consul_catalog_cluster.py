"""Catalog-wide mode against a real three-server Consul cluster whose leader is killed.

The per-service tests (``test_consul_cluster.py``) prove that blocking watches fail over without
losing endpoints. Catalog-wide mode (``maxWatches: 0`` forces it) reads differently: one watch on
the service list, one on every check, and non-blocking reads of single services on a third
route (:mod:`adapters.consul.catalog`). Those reads are where a lagging follower could move the
mesh backwards after a fail-over, so here writes keep happening while the leader dies: every
index move the adapter cannot explain makes it sweep, i.e. read every service again from
whichever server its route now points at, during the election. The promises checked are the
per-service ones: no registered healthy endpoint ever disappears from the aggregate (answers
older than the applied ones are held back), changes made after the election arrive (a new
instance, a deregistration, a check turning critical), and the registry is not left degraded.

The test runs twice: with the dead leader serving the fetch route, and with it serving the list
and check watches (routes are placed by a stable hash of their key, see ``client.py``).
Instance addresses are 127.0.95.x (data only).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import zlib
from typing import Any

import consul
import pytest
from consul.callback import CB

from integration.peers.consul import ConsulAgent, ConsulCluster
from meshfed.adapters.consul.testing import RunningAdapter, running_adapter

WEB = "web.service.consul"
API = "api.service.consul"
CHURN = "churn.service.consul"
HOSTS = (WEB, API, CHURN)


def client(agent: ConsulAgent, timeout: float = 10) -> consul.Consul:
    return consul.Consul(host=agent.host, port=agent.http_port, connections_timeout=timeout)


def register(
    agent: ConsulAgent,
    service: str,
    n: int,
    port: int = 8080,
    check: str | None = None,
    timeout: float = 10,
) -> None:
    """Instance n of ``service`` on its own external node, with a service check if ``check``."""
    sid = f"{service}-{n}"
    body: dict[str, Any] = {
        "Node": f"vm-{service}-{n}",
        "Address": f"127.0.95.{n}",
        "Service": {"Service": service, "ID": sid, "Port": port, "Tags": ["v=1"]},
    }
    if check is not None:
        body["Checks"] = [
            {"CheckID": f"check-{sid}", "Name": "http", "ServiceID": sid, "Status": check}
        ]
    c = client(agent, timeout)
    assert c.http.put(CB.boolean(), "/v1/catalog/register", data=json.dumps(body))


def deregister(agent: ConsulAgent, service: str, n: int) -> None:
    assert client(agent).catalog.deregister(f"vm-{service}-{n}")


def healthy(run: RunningAdapter, host: str) -> set[str]:
    return {e.address for e in run.aggregate.endpoints(host) if e.healthy}


def health(run: RunningAdapter, host: str) -> dict[str, bool]:
    return {e.address: e.healthy for e in run.aggregate.endpoints(host)}


class LossSampler:
    """Every few milliseconds, records any healthy endpoint that disappears from a host.

    During the window nothing is deregistered or turned critical, so the set of healthy
    endpoints of each host may only grow; any loss is a flap.
    """

    def __init__(self, run: RunningAdapter, hosts: tuple[str, ...]) -> None:
        self.run, self.hosts = run, hosts
        self.seen: dict[str, set[str]] = {h: set() for h in hosts}
        self.lost: list[tuple[float, str, str]] = []
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            now = time.monotonic()
            for host in self.hosts:
                current = healthy(self.run, host)
                self.lost.extend((now, host, a) for a in sorted(self.seen[host] - current))
                self.seen[host] |= current
            self.samples += 1
            await asyncio.sleep(0.005)

    def __enter__(self) -> LossSampler:
        self._task = asyncio.create_task(self._loop())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


class Churn:
    """Registers one check-less ``churn`` instance after another, from a thread, through the
    given servers (a write during the election blocks until there is a leader, then lands)."""

    def __init__(self, agents: list[ConsulAgent], limit: int = 250) -> None:
        self.agents, self.limit = agents, limit
        self.written: list[int] = []  # acknowledged writes
        self.failures = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="consul-churn", daemon=True)

    def _run(self) -> None:
        n = 100
        while not self._stop.is_set() and n < self.limit:
            agent = self.agents[n % len(self.agents)]
            try:
                register(agent, "churn", n, port=7000, timeout=3)
            except Exception as exc:
                self.failures += 1
                self.last_error = repr(exc)
                time.sleep(0.1)
                continue  # retried with the same n (an unacknowledged write may have landed)
            self.written.append(n)
            n += 1
            time.sleep(0.15)

    def __enter__(self) -> Churn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def addresses(self) -> set[str]:
        return {f"127.0.95.{n}" for n in self.written}


def addresses_with_leader_on(route_key: str, leader: ConsulAgent, others: list[ConsulAgent]):
    """The adapter's address list, ordered so that the route ``route_key`` starts on the leader."""
    position = zlib.crc32(route_key.encode()) % (1 + len(others))
    ordered = [a.http_addr for a in others]
    ordered.insert(position, leader.http_addr)
    return ordered


@pytest.mark.parametrize("on_leader", ["dc1/fetch", "dc1/checks"])
async def test_catalog_mode_leader_loss_loses_no_endpoint_and_later_changes_arrive(
    consul_cluster: ConsulCluster, on_leader: str
) -> None:
    leader = await asyncio.to_thread(consul_cluster.leader)
    followers = [a for a in consul_cluster.agents if a is not leader]
    for n in (1, 2, 3):
        register(followers[0], "web", n, check="passing")
    register(followers[0], "api", 10, port=9000)
    addrs = addresses_with_leader_on(on_leader, leader, followers)
    params = {"addresses": addrs, "wait": "20s", "rateLimit": 50, "maxWatches": 0}
    async with running_adapter(params) as run:
        assert run.adapter.describe()["modes"] == {"dc1": "catalog"}
        await run.wait_for(
            lambda: (
                healthy(run, WEB) == {"127.0.95.1", "127.0.95.2", "127.0.95.3"}
                and healthy(run, API) == {"127.0.95.10"}
            ),
            "the registrations (stale reads may lag a moment)",
            10,
        )
        if on_leader == "dc1/fetch":
            assert run.adapter.describe()["catalog"]["dc1"]["address"] == leader.http_addr
        else:
            assert run.adapter.describe()["watches"]["dc1/checks"]["address"] == leader.http_addr
        catalog_before = run.adapter.describe()["catalog"]["dc1"]
        survivors = list(followers)
        with LossSampler(run, HOSTS) as sampler, Churn(survivors) as churn:
            # Some churn lands (and reaches the aggregate) before the leader dies.
            await run.wait_for(lambda: len(healthy(run, CHURN)) >= 3, "churn before the kill", 20)
            before = len(run.events)
            started = time.monotonic()
            consul_cluster.stop_member(leader, hard=True)
            new_leader = await asyncio.to_thread(consul_cluster.leader, 30.0, leader)
            elected_after = time.monotonic() - started
            # Writes go on after the election too, while routes fail over and sweeps run.
            written_at_election = len(churn.written)
            await run.wait_for(
                lambda: len(churn.written) >= written_at_election + 10,
                "post-election churn",
                20,
            )
            await asyncio.sleep(1.0)
        assert sampler.samples > 100, sampler.samples
        assert not sampler.lost, f"endpoints were lost: {sampler.lost[:10]}"
        pushes = run.events[before:]
        assert not [e for e in pushes if WEB in e.hostnames or API in e.hostnames], (
            "leader loss caused pushes for services that did not change"
        )
        # Every acknowledged write arrives; during the election the adapter read (looks at the
        # node list, or sweeps, for the check-less churn) and failed over, so this was really
        # exercised.
        assert churn.written, "no churn write succeeded"
        await run.wait_for(
            lambda: churn.addresses() <= healthy(run, CHURN), "every acknowledged churn write", 20
        )
        catalog = run.adapter.describe()["catalog"]["dc1"]
        assert catalog["reads"] > catalog_before["reads"]

        def looked(c: dict[str, Any]) -> int:
            return sum(c["hints"].values()) + c["sweeps"]["unexplained"]

        assert looked(catalog) > looked(catalog_before)
        await run.wait_for(
            lambda: leader.http_addr not in run.adapter.describe()["addressesInUse"],
            "every route to leave the dead leader",
            20,
        )

        # Changes made after the election arrive, through whichever server the adapter reads:
        # a new instance with a check, a deregistration, a check turning critical.
        register(new_leader, "web", 4, check="passing")
        await run.wait_for(
            lambda: "127.0.95.4" in healthy(run, WEB), "the post-election instance", 20
        )
        survivor = next(a for a in followers if a is not new_leader)
        deregister(survivor, "web", 1)
        await run.wait_for(
            lambda: set(health(run, WEB)) == {"127.0.95.2", "127.0.95.3", "127.0.95.4"},
            "the post-election deregistration",
            20,
        )
        register(survivor, "web", 2, check="critical")
        await run.wait_for(
            lambda: (
                health(run, WEB) == {"127.0.95.2": False, "127.0.95.3": True, "127.0.95.4": True}
            ),
            "the post-election check flip",
            20,
        )
        assert healthy(run, API) == {"127.0.95.10"}
        assert run.adapter.describe()["modes"] == {"dc1": "catalog"}
        assert run.member.degraded is None
        catalog = run.adapter.describe()["catalog"]["dc1"]
        assert catalog["lastError"] is None
        print(
            f"leader re-elected after {elected_after:.2f}s; {len(churn.written)} churn writes "
            f"({churn.failures} retried); held back {catalog['heldBack']} lagging reads; "
            f"reads {catalog['reads']}, sweeps {catalog['sweeps']}, errors {catalog['errors']}"
        )
