"""Eureka remote regions against two real Spring Cloud Netflix Eureka servers.

``us-west`` is a standalone server; ``us-east`` is configured with it as a remote region
(``eureka.server.remote-region-urls-with-name.us-west``), fetching it every second and expiring
its response cache after 2 s: a remote region's changes do not invalidate the local server's
cached ``apps?regions=`` answers, so they surface only when the entry expires (180 s by default).
The adapter talks to ``us-east`` only.

What is shown: a plain ``GET apps/`` already mixes the remote region in (Eureka's transparent
fallback, on by default), which is why the adapter, given its own ``region``, asks for
``regions=<region>`` to get local instances only; with ``remoteRegions`` both regions are in
the aggregate, each instance with its region as locality; a registration and a cancel in the
remote region reach the aggregate within the documented bound; and a real Envoy sidecar reaches
a remote-region instance. Instance addresses: 127.0.85.x.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from integration.peers.eureka import EurekaServer, start_eureka
from integration.peers.ports import loopback_host
from integration.pilot_helpers import eventually, running_mesh, spread
from meshfed.adapters.eureka.testing import EurekaRest, instance_doc, running_adapter, wait_for
from meshfed.registry.aggregate import AggregateRegistry

REMOTE_FETCH_SECONDS = 1
CACHE_EXPIRY_SECONDS = 2
# Remote fetch interval + response-cache expiry + the adapter's fetchInterval, with margin for
# a loaded machine (two JVMs, other suites).
BOUND = 20.0


@pytest.fixture(scope="module")
def regions(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[EurekaServer, EurekaServer]]:
    """(us-east, us-west): us-east has us-west as a remote region."""
    base = tmp_path_factory.mktemp("eureka-regions")
    with start_eureka(base / "west", loopback_host()) as west:
        properties = {
            "eureka.server.remote-region-urls-with-name.us-west": west.eureka_url,
            "eureka.server.remote-region-registry-fetch-interval": str(REMOTE_FETCH_SECONDS),
            "eureka.server.response-cache-auto-expiration-in-seconds": str(CACHE_EXPIRY_SECONDS),
        }
        with start_eureka(base / "east", loopback_host(), properties) as east:
            yield east, west


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def doc(app: str, instance_id: str, ip: str, port: int = 8080) -> dict[str, object]:
    # Long leases: no test here heartbeats, and none may be evicted under it.
    return instance_doc(app, instance_id, ip, port, lease_seconds=3600)


def params(east: EurekaServer, **extra: object) -> dict[str, object]:
    return {
        "servers": [east.eureka_url],
        "fetchInterval": "200ms",
        "fullFetchInterval": "2s",
        **extra,
    }


def localities(aggregate: AggregateRegistry, host: str) -> dict[str, str]:
    """address -> locality region of ``host``'s endpoints."""
    return {e.address: e.locality.region for e in aggregate.endpoints(host)}


async def test_local_region_only_unless_remote_regions_are_asked_for(
    regions: tuple[EurekaServer, EurekaServer],
) -> None:
    east, west = regions
    local_app, remote_app, shared = unique("east"), unique("west"), unique("shared")
    async with EurekaRest(east.eureka_url) as er, EurekaRest(west.eureka_url) as wr:
        assert await er.register(doc(local_app, "e1", "127.0.85.1")) == 204
        assert await er.register(doc(shared, "s-e", "127.0.85.2")) == 204
        assert await wr.register(doc(remote_app, "w1", "127.0.85.3")) == 204
        assert await wr.register(doc(shared, "s-w", "127.0.85.4")) == 204
        try:
            async with (
                running_adapter(params(east), name="plain") as (plain, _),
                running_adapter(params(east, region="us-east"), name="local") as (local, _),
                running_adapter(
                    params(east, region="us-east", remoteRegions=["us-west"]), name="both"
                ) as (both, adapter),
            ):
                await wait_for(
                    lambda: (
                        len(both.endpoints(shared)) == 2 and both.service(remote_app) is not None
                    ),
                    BOUND,
                    "the remote region in the aggregate with remoteRegions",
                )
                # Every adapter has synced by now (the remote region reached the server).
                await wait_for(lambda: plain.synced and local.synced, BOUND, "sync")
                # Own region only: remote instances are not there, local ones carry the region.
                assert local.service(remote_app) is None
                assert localities(local, shared) == {"127.0.85.2": "us-east"}
                assert localities(local, local_app) == {"127.0.85.1": "us-east"}
                # With remoteRegions: both regions, each instance with its own region.
                assert localities(both, shared) == {
                    "127.0.85.2": "us-east",
                    "127.0.85.4": "us-west",
                }
                assert localities(both, remote_app) == {"127.0.85.3": "us-west"}
                assert localities(both, local_app) == {"127.0.85.1": "us-east"}
                # Without any region config, a plain apps/ already holds the remote region
                # (Eureka's transparent fallback), with no way to tell it apart: the reason
                # for the region parameter.
                await wait_for(
                    lambda: len(plain.endpoints(shared)) == 2, BOUND, "fallback in plain apps/"
                )
                assert set(localities(plain, shared).values()) == {""}
                info = adapter.describe()
                assert info["region"] == "us-east" and info["remoteRegions"] == ["us-west"]
                assert [v["query"] for v in info["views"]] == [
                    "regions=us-west",
                    "regions=us-east",
                ]
                for view in info["views"]:
                    assert view["appsHashcode"] == view["serverHashcode"]
        finally:
            await er.cancel(local_app, "e1")
            await er.cancel(shared, "s-e")
            await wr.cancel(remote_app, "w1")
            await wr.cancel(shared, "s-w")


async def test_remote_registration_and_cancel_reach_the_aggregate(
    regions: tuple[EurekaServer, EurekaServer],
) -> None:
    east, west = regions
    app = unique("orders")
    async with (
        EurekaRest(east.eureka_url) as er,
        EurekaRest(west.eureka_url) as wr,
        running_adapter(params(east, region="us-east", remoteRegions=["us-west"])) as (
            aggregate,
            adapter,
        ),
    ):
        assert await er.register(doc(app, "o-east", "127.0.85.11")) == 204
        try:
            await wait_for(
                lambda: localities(aggregate, app) == {"127.0.85.11": "us-east"},
                BOUND,
                "the local instance",
            )
            started = time.monotonic()
            assert await wr.register(doc(app, "o-west", "127.0.85.12")) == 204
            await wait_for(
                lambda: (
                    localities(aggregate, app)
                    == {"127.0.85.11": "us-east", "127.0.85.12": "us-west"}
                ),
                BOUND,
                "the remote registration",
            )
            registered = time.monotonic() - started
            started = time.monotonic()
            assert await wr.cancel(app, "o-west") == 200
            await wait_for(
                lambda: localities(aggregate, app) == {"127.0.85.11": "us-east"},
                BOUND,
                "the remote cancel",
            )
            cancelled = time.monotonic() - started
            print(
                f"remote registration -> aggregate {registered:.2f}s, "
                f"remote cancel -> aggregate {cancelled:.2f}s "
                f"(server: remote fetch {REMOTE_FETCH_SECONDS}s, cache expiry "
                f"{CACHE_EXPIRY_SECONDS}s; adapter fetchInterval 200ms)"
            )
            await wait_for(
                lambda: all(
                    v["appsHashcode"] == v["serverHashcode"] for v in adapter.describe()["views"]
                ),
                BOUND,
                "every view's hash code to agree with the server's",
            )
            assert adapter.member.degraded is None
        finally:
            await er.cancel(app, "o-east")
            await wr.cancel(app, "o-west")


async def test_traffic_reaches_a_remote_region_instance(
    regions: tuple[EurekaServer, EurekaServer], tmp_path: Path
) -> None:
    east, west = regions
    app = unique("catalog")
    host = f"{app}.eureka"
    local_ip, remote_ip, client_ip = "127.0.85.21", "127.0.85.22", "127.0.85.20"
    settings = params(
        east, region="us-east", remoteRegions=["us-west"], hostnameTemplate="{vip}.eureka"
    )
    async with (
        running_mesh() as mesh,
        EurekaRest(east.eureka_url) as er,
        EurekaRest(west.eureka_url) as wr,
        running_adapter(settings, mesh.aggregate) as (aggregate, _),
    ):
        await mesh.backend("east-1", local_ip, 9080)
        await mesh.backend("west-1", remote_ip, 9080)
        assert await wr.register(doc(app, "c-west", remote_ip, 9080)) == 204
        try:
            client = await mesh.sidecar(client_ip, "client")
            url = client.outbound_url + "/"
            async with aiohttp.ClientSession() as session:
                # Only the remote region has the service: its instance takes the traffic.
                async def only_west() -> bool:
                    return set(await spread(session, url, host, 6)) == {"west-1"}

                await eventually(only_west, 30, "traffic to reach the us-west instance")
                assert localities(aggregate, host) == {remote_ip: "us-west"}
                # A local instance joins: both regions' instances are endpoints, grouped by
                # locality in what Envoy gets.
                assert await er.register(doc(app, "c-east", local_ip, 9080)) == 204

                async def both() -> bool:
                    return set(await spread(session, url, host, 12)) == {"east-1", "west-1"}

                await eventually(both, 30, "traffic to reach both regions")
            assert localities(aggregate, host) == {local_ip: "us-east", remote_ip: "us-west"}
        finally:
            await wr.cancel(app, "c-west")
            await er.cancel(app, "c-east")
