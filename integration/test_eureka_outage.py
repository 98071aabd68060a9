"""Eureka goes away and comes back: the mesh keeps its last state, says so, and resyncs.

These tests run their own Eureka server (stopping the session's would break other tests) and,
for the fail-over case, also the session's: two real servers that are not peers, so they hold
different registries, which is the realistic way a delta ends up not reconciling. The restarted
server runs with the same argv as before (same address and port) plus a warm-up during which it
refuses reads with 403, as a production server does until it has synced from its peers.
Addresses: 127.0.92.6x-9x (registered only, never dialled).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import aiohttp
from prometheus_client import REGISTRY

from integration.peers.eureka import EurekaServer, start_eureka
from integration.peers.process import PeerProcess
from meshfed.adapters.eureka.testing import EurekaRest, instance_doc, running_adapter, wait_for
from meshfed.config import MeshConfig, RegistryConfig
from meshfed.hub import Hub
from meshfed.registry.events import ChangeEvent

WAIT = 30.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def restart_same_port(
    server: EurekaServer, log: Path, warmup_ms: int | None = None
) -> PeerProcess:
    """Start a fresh server with the old argv; return once it accepts connections.

    With ``warmup_ms`` it refuses reads (403) for that long, as Eureka does until it has synced
    from peers; without, it serves its (empty) registry at once, Spring Cloud's default for a
    standalone server.
    """
    argv = list(server.process.argv)
    if warmup_ms is not None:
        argv += [
            f"--eureka.server.wait-time-in-ms-when-sync-empty={warmup_ms}",
            # Spring Cloud opens a standalone server to reads at once (it pretends one instance
            # was synced from peers); 0 restores Eureka's own warm-up.
            "--eureka.instance.registry.default-open-for-traffic-count=0",
        ]
    proc = PeerProcess(f"{server.process.name}-restarted", argv, log, cwd=log.parent)
    proc.start()
    deadline = time.monotonic() + 120
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            if not proc.running():
                raise proc.error("exited during restart")
            try:
                async with session.get(server.eureka_url + "apps/") as response:
                    if response.status in (200, 403):
                        return proc
            except (aiohttp.ClientError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                proc.stop()
                raise proc.error("did not come back within 120s")
            await asyncio.sleep(0.3)


async def test_outage_keeps_last_state_then_resyncs_only_real_differences(
    tmp_path: Path,
) -> None:
    keep, lose = unique("keep"), unique("lose")
    with start_eureka(tmp_path / "own") as server:
        params = {
            "servers": [server.eureka_url],
            "fetchInterval": "200ms",
            "fullFetchInterval": "2s",
            "timeout": "1s",
            "maxBackoff": "500ms",
            "emptyRegistryGrace": "0s",  # the warm-up is what protects the state here
        }
        mesh = MeshConfig(
            monitoring_address="127.0.0.1:0",
            registries=(RegistryConfig("eu", "eureka", params),),
        )
        hub = Hub(mesh)
        await hub.start()
        monitoring = f"http://127.0.0.1:{hub.monitoring_port}"
        try:
            async with EurekaRest(server.eureka_url) as rest:
                assert await rest.register(instance_doc(keep, "k1", "127.0.92.61", 8080)) == 204
                assert await rest.register(instance_doc(lose, "l1", "127.0.92.62", 8080)) == 204
            aggregate = hub.aggregate
            await wait_for(
                lambda: bool(aggregate.endpoints(keep)) and bool(aggregate.endpoints(lose)),
                WAIT,
                "both services from Eureka",
            )
            before = {h: aggregate.endpoints(h) for h in (keep, lose)}
            events: list[ChangeEvent] = []
            aggregate.subscribe(events.append)

            server.process.stop()
            (member,) = aggregate.members
            await wait_for(lambda: member.degraded is not None, WAIT, "degraded")
            await asyncio.sleep(1.0)  # a few failed rounds: state must still be in force
            assert {h: aggregate.endpoints(h) for h in (keep, lose)} == before
            assert events == []
            assert REGISTRY.get_sample_value("meshfed_eureka_degraded", {"registry": "eu"}) == 1
            async with aiohttp.ClientSession() as http:
                async with http.get(monitoring + "/healthz/ready") as response:
                    ready = await response.json()
                # Synced once, so still ready; the outage is reported, not hidden.
                assert response.status == 200
                assert any("registry eu degraded" in d for d in ready["degraded"])
                async with http.get(monitoring + "/debug/registryz") as response:
                    view = await response.json()
            (eu,) = view["members"]
            assert "failed on every Eureka server" in eu["degraded"]
            assert eu["counters"]["errors"] >= 1 and eu["currentServer"] == server.eureka_url

            proc = await restart_same_port(server, tmp_path / "own" / "restarted.log", 8000)
            try:
                async with EurekaRest(server.eureka_url) as rest:
                    # The application comes back (its heartbeat got 404, so it re-registers);
                    # the other one does not.
                    assert await rest.register(instance_doc(keep, "k1", "127.0.92.61", 8080)) == 204
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(server.eureka_url + "apps/") as response,
                ):
                    assert response.status == 403, "the restarted server should be warming up"
                # Reads are refused until the warm-up ends: still degraded, state kept.
                assert member.degraded is not None
                assert aggregate.endpoints(lose) == before[lose]
                await wait_for(lambda: member.degraded is None, 60, "recovery")
                await wait_for(lambda: aggregate.service(lose) is None, WAIT, "the resync")
                # Only the real difference was pushed: the vanished service. The instance
                # that came back is equal to what the mesh had, so it caused no event.
                assert aggregate.endpoints(keep) == before[keep]
                touched = set().union(*(e.hostnames for e in events))
                assert touched == {lose}
                assert REGISTRY.get_sample_value("meshfed_eureka_degraded", {"registry": "eu"}) == 0
            finally:
                proc.stop()
        finally:
            await hub.stop()


async def test_empty_answer_of_a_restarted_server_is_held_back_for_a_grace(
    tmp_path: Path,
) -> None:
    keep, lose = unique("keep"), unique("lose")
    params = {
        "fetchInterval": "200ms",
        "fullFetchInterval": "2s",
        "timeout": "1s",
        "maxBackoff": "500ms",
        "emptyRegistryGrace": "6s",
    }
    with start_eureka(tmp_path / "own") as server:
        async with EurekaRest(server.eureka_url) as rest:
            assert await rest.register(instance_doc(keep, "k1", "127.0.92.81", 8080)) == 204
            assert await rest.register(instance_doc(lose, "l1", "127.0.92.82", 8080)) == 204
        async with running_adapter({"servers": [server.eureka_url], **params}) as (
            aggregate,
            adapter,
        ):
            await wait_for(
                lambda: bool(aggregate.endpoints(keep)) and bool(aggregate.endpoints(lose)),
                WAIT,
                "both services",
            )
            before = {h: aggregate.endpoints(h) for h in (keep, lose)}
            events: list[ChangeEvent] = []
            aggregate.subscribe(events.append)

            # Phase 1: the server restarts empty; the application re-registers in time.
            server.process.stop()
            proc = await restart_same_port(server, tmp_path / "own" / "restart1.log")
            try:
                async with EurekaRest(server.eureka_url) as rest:
                    doc = instance_doc(keep, "k1", "127.0.92.81", 8080)
                    assert await rest.register(doc) == 204
                    # Registered again a moment later, as a client retrying does: the second
                    # write invalidates an empty answer the server may have cached while the
                    # first was in flight (its response cache races invalidations).
                    await asyncio.sleep(1.0)
                    assert await rest.register(doc) == 204
                await wait_for(lambda: aggregate.service(lose) is None, WAIT, "the resync")
                assert adapter.counters["empty_answers_held"] >= 1
                assert aggregate.endpoints(keep) == before[keep]
                assert set().union(*(e.hostnames for e in events)) == {lose}
                await wait_for(lambda: adapter.member.degraded is None, WAIT, "recovery")

                # Phase 2: it restarts empty again and nobody comes back: after the grace the
                # emptiness is believed.
                held = adapter.counters["empty_answers_held"]
                proc.stop()
                proc = await restart_same_port(server, tmp_path / "own" / "restart2.log")
                await wait_for(
                    lambda: adapter.counters["empty_answers_held"] > held, WAIT, "the hold"
                )
                assert "answered an empty registry" in (adapter.member.degraded or "")
                assert aggregate.endpoints(keep) == before[keep]
                await wait_for(lambda: aggregate.service(keep) is None, WAIT, "the grace to end")
                await wait_for(lambda: adapter.member.degraded is None, WAIT, "not degraded")
            finally:
                proc.stop()


async def test_delta_from_another_server_does_not_reconcile(
    tmp_path: Path, eureka_server: EurekaServer
) -> None:
    mine, theirs = unique("mine"), unique("theirs")
    with start_eureka(tmp_path / "own") as own:
        async with (
            EurekaRest(own.eureka_url) as rest_own,
            EurekaRest(eureka_server.eureka_url) as rest_shared,
        ):
            # STARTING: a status the shared server's registry is unlikely to hold, so its hash
            # code cannot match the local copy by coincidence.
            doc = instance_doc(mine, "m1", "127.0.92.71", 8080, status="STARTING")
            assert await rest_own.register(doc) == 204
            assert await rest_shared.register(instance_doc(theirs, "t1", "127.0.92.72", 80)) == 204
            try:
                params = {
                    "servers": [own.eureka_url, eureka_server.eureka_url],
                    "fetchInterval": "200ms",
                    "fullFetchInterval": "1h",
                    "timeout": "1s",
                }
                async with running_adapter(params) as (aggregate, adapter):
                    await wait_for(lambda: aggregate.service(mine) is not None, WAIT, "own view")
                    assert aggregate.service(theirs) is None
                    mismatches = adapter.counters["hash_mismatches"]
                    own.process.stop()
                    # The next delta comes from the other server, whose history is not ours:
                    # the hash code disagrees and a full fetch from that server follows.
                    await wait_for(
                        lambda: aggregate.service(theirs) is not None, WAIT, "the other view"
                    )
                    assert aggregate.service(mine) is None
                    assert adapter.counters["hash_mismatches"] > mismatches
                    info = adapter.describe()
                    assert info["currentServer"] == eureka_server.eureka_url
                    assert info["failovers"] >= 1
                    assert info["appsHashcode"] == info["serverHashcode"]
                    assert adapter.member.degraded is None
            finally:
                await rest_shared.cancel(theirs, "t1")
