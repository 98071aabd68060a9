"""The Consul adapter against a real three-server Consul cluster that loses servers.

What users run is a Raft cluster whose leader can die at any moment. These tests kill servers
under the adapter and check the promises: no endpoint is lost while the cluster re-elects,
changes made after the election arrive, an unreachable Consul leaves the last state in force and
shows as degraded (in ``/debug/registryz``, ``/healthz/ready`` and ``/metrics`` of a real hub),
and on return the adapter resyncs and pushes only what really changed.

Services are registered as external nodes through the catalog API, so their health does not
depend on which server is up (an agent-registered service would turn critical with its agent).
Instance addresses are 127.0.96.x (data only).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import consul
from consul.callback import CB

from integration.peers.consul import ConsulAgent, ConsulCluster
from meshfed.adapters.consul import metrics
from meshfed.adapters.consul.testing import RunningAdapter, running_adapter
from meshfed.config import MeshConfig, RegistryConfig
from meshfed.hub import Hub

WEB = "web.service.consul"
API = "api.service.consul"


def client(agent: ConsulAgent) -> consul.Consul:
    return consul.Consul(host=agent.host, port=agent.http_port, connections_timeout=10)


def register(agent: ConsulAgent, service: str, n: int, port: int = 8080) -> None:
    body = {
        "Node": f"vm-{service}-{n}",
        "Address": f"127.0.96.{n}",
        "Service": {"Service": service, "ID": f"{service}-{n}", "Port": port, "Tags": ["v=1"]},
    }
    assert client(agent).http.put(CB.boolean(), "/v1/catalog/register", data=json.dumps(body))


def deregister(agent: ConsulAgent, service: str, n: int) -> None:
    assert client(agent).catalog.deregister(f"vm-{service}-{n}")


def addresses(run: RunningAdapter, host: str = WEB) -> list[str]:
    return [e.address for e in run.aggregate.endpoints(host)]


def params(addrs: list[str], **extra: Any) -> dict[str, Any]:
    return {"addresses": addrs, "wait": "20s", "rateLimit": 50, **extra}


class Sampler:
    """Samples the endpoint count of a host every few milliseconds while a test disrupts Consul."""

    def __init__(self, run: RunningAdapter, host: str) -> None:
        self.run, self.host = run, host
        self.minimum: int | None = None
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            count = len(self.run.aggregate.endpoints(self.host))
            self.minimum = count if self.minimum is None else min(self.minimum, count)
            self.samples += 1
            await asyncio.sleep(0.01)

    def __enter__(self) -> Sampler:
        self._task = asyncio.create_task(self._loop())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


async def test_leader_loss_loses_no_endpoint_and_later_changes_arrive(
    consul_cluster: ConsulCluster,
) -> None:
    leader = await asyncio.to_thread(consul_cluster.leader)
    followers = [a for a in consul_cluster.agents if a is not leader]
    for n in (1, 2, 3):
        register(followers[0], "web", n)
    register(followers[0], "api", 10, port=9000)
    # Watches spread over every address by a stable hash of their key; with the leader first,
    # the "dc1/api" watch reads from it, so its loss forces a fail-over.
    addrs = [leader.http_addr, *(a.http_addr for a in followers)]
    async with running_adapter(params(addrs)) as run:
        await run.wait_for(
            lambda: len(addresses(run)) == 3 and addresses(run, API),
            "the registrations (stale reads may lag a moment)",
            10,
        )
        assert addresses(run) == ["127.0.96.1", "127.0.96.2", "127.0.96.3"]
        assert leader.http_addr in run.adapter.describe()["addressesInUse"]
        before = len(run.events)
        with Sampler(run, WEB) as sampler:
            started = time.monotonic()
            consul_cluster.stop_member(leader, hard=True)
            new_leader = await asyncio.to_thread(consul_cluster.leader, 30.0, leader)
            elected_after = time.monotonic() - started
            await asyncio.sleep(1.0)  # and a little longer, while watches fail over
        assert sampler.samples > 50, sampler.samples
        assert sampler.minimum == 3, f"endpoints were lost: {run.events[before:]}"
        assert len(run.events) == before, "leader loss caused pushes"
        assert addresses(run, API) == ["127.0.96.10"]
        await run.wait_for(
            lambda: leader.http_addr not in run.adapter.describe()["addressesInUse"],
            "every watch to leave the dead leader",
            20,
        )

        # Changes made after the election arrive, through whichever server the adapter reads.
        register(new_leader, "web", 4)
        await run.wait_for(lambda: len(addresses(run)) == 4, "the post-election instance", 20)
        survivor = next(a for a in followers if a is not new_leader)
        deregister(survivor, "web", 1)
        await run.wait_for(
            lambda: addresses(run) == ["127.0.96.2", "127.0.96.3", "127.0.96.4"],
            "the post-election deregistration",
            20,
        )
        assert run.member.degraded is None
        print(f"leader re-elected after {elected_after:.2f}s; endpoints kept throughout")


async def test_quorum_loss_still_serves_stale_reads(consul_cluster: ConsulCluster) -> None:
    leader = await asyncio.to_thread(consul_cluster.leader)
    others = [a for a in consul_cluster.agents if a is not leader]
    register(leader, "web", 1)
    async with running_adapter(params([others[0].http_addr])) as run:
        # Stale reads from a follower may lag the write by a moment.
        await run.wait_for(lambda: addresses(run) == ["127.0.96.1"], "the registration", 10)
        before = len(run.events)
        # Two of three servers gone: no quorum, no leader. The remaining one still answers
        # stale reads, so the adapter is not even degraded, and nothing is pushed.
        consul_cluster.stop_member(leader, hard=True)
        consul_cluster.stop_member(others[1], hard=True)
        await run.wait_for(
            lambda: (
                not run.adapter.describe()["watches"]["dc1/services"]["knownLeader"]
                or not run.adapter.describe()["watches"]["dc1/web"]["knownLeader"]
            ),
            "a read answered without a known leader",
            30,
            interval=0.2,
        )
        assert addresses(run) == ["127.0.96.1"]
        assert len(run.events) == before
        # Quorum back: writes work again and arrive.
        await asyncio.to_thread(consul_cluster.start_member, leader)
        await asyncio.to_thread(consul_cluster.start_member, others[1])
        await asyncio.to_thread(consul_cluster.leader, 60.0)
        register(others[0], "web", 2)
        await run.wait_for(lambda: len(addresses(run)) == 2, "the write after quorum", 20)


async def _get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
        return response.status, await response.json(content_type=None)


async def test_unreachable_consul_keeps_state_then_resyncs_in_a_real_hub(
    consul_cluster: ConsulCluster,
) -> None:
    leader = await asyncio.to_thread(consul_cluster.leader)
    follower, other = (a for a in consul_cluster.agents if a is not leader)
    for n in (1, 2):
        register(follower, "web", n)
    register(follower, "api", 10, port=9000)
    # The hub talks to one server only, which we then stop: Consul is unreachable for it,
    # while the rest of the cluster keeps accepting changes.
    mesh = MeshConfig(
        monitoring_address="127.0.0.1:0",
        registries=(RegistryConfig("consul", "consul", params([follower.http_addr])),),
    )
    hub = Hub(mesh)
    await hub.start()
    try:
        aggregate = hub.aggregate
        run = RunningAdapter(aggregate, hub.adapters["consul"])
        await run.wait_for(lambda: aggregate.synced, "the hub to sync", 30)
        base = f"http://127.0.0.1:{hub.monitoring_port}"
        async with aiohttp.ClientSession() as session:
            status, ready = await _get_json(session, f"{base}/healthz/ready")
            assert status == 200 and ready["degraded"] == []
            await run.wait_for(
                lambda: addresses(run) == ["127.0.96.1", "127.0.96.2"] and aggregate.service(API),
                "the registrations (stale reads may lag a moment)",
                10,
            )

            consul_cluster.stop_member(follower)
            await run.wait_for(lambda: run.member.degraded, "degraded", 20)
            assert "datacenter dc1" in (run.member.degraded or "")
            assert follower.http_addr in (run.member.degraded or "")
            # Last known state stays in force: nothing emptied, nothing pushed.
            assert addresses(run) == ["127.0.96.1", "127.0.96.2"]
            assert [e.address for e in aggregate.endpoints(API)] == ["127.0.96.10"]
            events_during_outage = len(run.events)

            status, ready = await _get_json(session, f"{base}/healthz/ready")
            assert status == 200  # synced once: still serving the last state...
            assert ready["degraded"] and "consul" in ready["degraded"][0]  # ...but says so
            status, registryz = await _get_json(session, f"{base}/debug/registryz")
            member = next(m for m in registryz["members"] if m["name"] == "consul")
            assert member["degraded"]
            async with session.get(f"{base}/metrics") as response:
                text = await response.text()
            assert 'meshfed_consul_unreachable{datacenter="dc1",registry="consul"} 1.0' in text
            assert 'meshfed_registry_degraded{kind="consul",registry="consul"} 1.0' in text

            # The cluster moves on without this server.
            deregister(other, "web", 1)
            register(other, "web", 3)
            await asyncio.sleep(0.5)
            assert addresses(run) == ["127.0.96.1", "127.0.96.2"]

            await asyncio.to_thread(consul_cluster.start_member, follower)
            await run.wait_for(
                lambda: addresses(run) == ["127.0.96.2", "127.0.96.3"], "the resync", 30
            )
            await run.wait_for(lambda: run.member.degraded is None, "recovery", 30)
            assert metrics.UNREACHABLE.labels("consul", "dc1")._value.get() == 0
            # Only the real difference was pushed: nothing for the unchanged service.
            resync_events = run.events[events_during_outage:]
            assert resync_events and all(e.hostnames == {WEB} for e in resync_events)
            status, ready = await _get_json(session, f"{base}/healthz/ready")
            assert status == 200 and ready["degraded"] == []
    finally:
        await hub.stop()
