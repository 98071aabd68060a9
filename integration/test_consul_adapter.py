"""The Consul adapter against a real Consul agent: catalog changes flow into the aggregate.

Registrations are made with real clients -- py-consul and the ``consul`` command line -- exactly
as users register services; the adapter follows them with blocking queries. Assertions are on the
aggregate's view (``service()`` / ``endpoints()``) and on the change events it emitted, so "no
push" is checked as precisely as "the right push". Instance addresses are 127.0.95.x (data only:
nothing listens there, nothing needs to).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import consul
import pytest
from consul.callback import CB

from integration.peers.artifacts import consul_path
from integration.peers.consul import (
    ConsulAgent,
    _launch,
    _new_agent,
    _wait_leader,
    _write_config,
)
from integration.peers.ports import loopback_host
from meshfed.adapters.consul import metrics
from meshfed.adapters.consul.testing import RunningAdapter, running_adapter
from meshfed.registry.model import Locality, Protocol

WEB = "web.service.consul"


def params(agent: ConsulAgent, **extra: Any) -> dict[str, Any]:
    # A short wait keeps teardown quick; changes still arrive at once (that is what blocking
    # queries are for), which the tests check by timing out well before the wait would expire.
    return {"address": agent.http_addr, "wait": "20s", "rateLimit": 50, **extra}


def client(agent: ConsulAgent) -> consul.Consul:
    return consul.Consul(host=agent.host, port=agent.http_port)


def cli(agent: ConsulAgent, *args: str) -> None:
    """Run the real ``consul`` command line against the agent."""
    result = subprocess.run(
        [str(consul_path()), *args, f"-http-addr=http://{agent.http_addr}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr + result.stdout


def catalog_register(
    c: consul.Consul,
    node: str,
    address: str,
    service: dict[str, Any],
    node_meta: dict[str, str] | None = None,
    checks: list[dict[str, Any]] | None = None,
) -> None:
    """Register an external node's service through the catalog API.

    py-consul's ``catalog.register`` sends ``node_meta`` as a query parameter, which Consul
    ignores; the body field is ``NodeMeta``, so we send the documented body ourselves.
    """
    body: dict[str, Any] = {"Node": node, "Address": address, "Service": service}
    if node_meta:
        body["NodeMeta"] = node_meta
    if checks:
        body["Checks"] = checks
    assert c.http.put(CB.boolean(), "/v1/catalog/register", data=json.dumps(body))


def addresses(run: RunningAdapter, host: str = WEB) -> list[str]:
    return [e.address for e in run.aggregate.endpoints(host)]


def healthy(run: RunningAdapter, host: str = WEB) -> dict[str, bool]:
    return {e.address: e.healthy for e in run.aggregate.endpoints(host)}


async def test_register_scale_deregister(consul_agent: ConsulAgent) -> None:
    c = client(consul_agent)
    c.agent.service.register(
        "web", service_id="web-1", address="127.0.95.1", port=8080, tags=["protocol=http", "v=1"]
    )
    async with running_adapter(params(consul_agent)) as run:
        service = run.aggregate.service(WEB)
        assert service is not None and service.registries == ("consul",)
        assert [(p.number, p.name, p.protocol) for p in service.ports] == [
            (8080, "http", Protocol.HTTP)
        ]
        assert addresses(run) == ["127.0.95.1"]
        endpoint = run.aggregate.endpoints(WEB)[0]
        assert dict(endpoint.labels) == {"protocol": "http", "v": "1"}
        assert endpoint.locality == Locality("dc1")
        assert run.events_for(WEB)  # the initial sync added it

        # Scale out with the command line.
        cli(
            consul_agent,
            "services",
            "register",
            "-name=web",
            "-id=web-2",
            "-address=127.0.95.2",
            "-port=8080",
            "-tag=protocol=http",
            "-tag=v|2",
        )
        await run.wait_for(lambda: len(addresses(run)) == 2, "the second instance", 10)
        assert addresses(run) == ["127.0.95.1", "127.0.95.2"]
        assert dict(run.aggregate.endpoints(WEB)[1].labels) == {"protocol": "http", "v": "2"}

        # Scale in with py-consul, then remove the last instance with the command line.
        c.agent.service.deregister("web-1")
        await run.wait_for(lambda: addresses(run) == ["127.0.95.2"], "web-1 to leave", 10)
        cli(consul_agent, "services", "deregister", "-id=web-2")
        await run.wait_for(lambda: run.aggregate.service(WEB) is None, "web to disappear", 10)
        assert run.aggregate.endpoints(WEB) == ()
        assert run.events_for(WEB)[-1].services_removed == (WEB,)
        # Its watch stopped with it: only the service list is watched now.
        await run.wait_for(
            lambda: set(run.adapter.describe()["watches"]) == {"dc1/services"}, "watch to stop", 5
        )


async def test_reordered_tags_cause_no_push_changed_tags_do(consul_agent: ConsulAgent) -> None:
    c = client(consul_agent)
    tags = ["protocol=http", "version=v1", "team|payments", "canary"]
    c.agent.service.register("web", service_id="web-1", address="127.0.95.1", port=8080, tags=tags)
    async with running_adapter(params(consul_agent)) as run:
        before = len(run.events)
        index = run.watch_index("dc1/web")
        c.agent.service.register(
            "web", service_id="web-1", address="127.0.95.1", port=8080, tags=list(reversed(tags))
        )
        # The catalog did change (a new raft index for the service)...
        await run.wait_for(lambda: run.watch_index("dc1/web") > index, "the re-registration", 10)
        await asyncio.sleep(0.3)
        # ...but the mesh did not: no event, no push.
        assert len(run.events) == before

        c.agent.service.register(
            "web",
            service_id="web-1",
            address="127.0.95.1",
            port=8080,
            tags=["protocol=http", "version=v2", "team|payments"],
        )
        await run.wait_for(
            lambda: run.aggregate.endpoints(WEB)[0].labels.get("version") == "v2",
            "the new label",
            10,
        )
        assert len(run.events) == before + 1
        change = run.events[-1].endpoints[0]
        assert change.hostname == WEB and len(change.updated) == 1


async def test_failing_check_and_maintenance_take_endpoint_out(consul_agent: ConsulAgent) -> None:
    c = client(consul_agent)
    for i in (1, 2):
        c.agent.service.register(
            "web",
            service_id=f"web-{i}",
            address=f"127.0.95.{i}",
            port=8080,
            check=consul.Check.ttl("300s"),
        )
        c.agent.check.ttl_pass(f"service:web-{i}")
    async with running_adapter(params(consul_agent)) as run:
        assert healthy(run) == {"127.0.95.1": True, "127.0.95.2": True}

        c.agent.check.ttl_fail("service:web-2", "disk full")
        await run.wait_for(lambda: not healthy(run)["127.0.95.2"], "web-2 unhealthy", 10)
        assert healthy(run)["127.0.95.1"] is True
        c.agent.check.ttl_warn("service:web-2", "degraded")
        await asyncio.sleep(0.3)
        assert healthy(run)["127.0.95.2"] is False  # warning is not passing
        c.agent.check.ttl_pass("service:web-2")
        await run.wait_for(lambda: healthy(run)["127.0.95.2"], "web-2 back", 10)

        # Service maintenance (py-consul), then node maintenance (command line).
        c.agent.service.maintenance("web-1", True, "deploying")
        await run.wait_for(lambda: not healthy(run)["127.0.95.1"], "web-1 in maintenance", 10)
        c.agent.service.maintenance("web-1", False)
        await run.wait_for(lambda: healthy(run)["127.0.95.1"], "web-1 out of maintenance", 10)
        cli(consul_agent, "maint", "-enable", "-reason=kernel upgrade")
        await run.wait_for(
            lambda: not any(healthy(run).values()), "node maintenance on all instances", 10
        )
        cli(consul_agent, "maint", "-disable")
        await run.wait_for(lambda: all(healthy(run).values()), "node back in rotation", 10)
        # Endpoints left rotation, they never left the mesh: no flapping to empty.
        assert all(len(e.endpoints[0].removed) == 0 for e in run.events_for(WEB) if e.endpoints)


async def test_tag_filter_template_node_meta_locality(consul_agent: ConsulAgent) -> None:
    c = client(consul_agent)
    for i, (zone, tags) in enumerate(
        [("a", ["mesh", "protocol|grpc"]), ("b", ["mesh", "protocol|grpc"]), ("a", ["legacy"])],
        start=1,
    ):
        catalog_register(
            c,
            f"vm-{i}",
            f"127.0.95.{10 + i}",
            {"Service": "pay", "ID": f"pay-{i}", "Port": 9090, "Tags": tags},
            node_meta={"zone": zone, "rack": f"r{i}"},
        )
    catalog_register(c, "vm-9", "127.0.95.19", {"Service": "other", "ID": "o", "Port": 1})
    opts = {"tagFilter": "mesh", "hostnameTemplate": "{service}.{datacenter}.mesh.example"}
    async with running_adapter(params(consul_agent, **opts)) as run:
        host = "pay.dc1.mesh.example"
        service = run.aggregate.service(host)
        assert service is not None and service.ports[0].protocol is Protocol.GRPC
        assert [(e.address, e.locality) for e in run.aggregate.endpoints(host)] == [
            ("127.0.95.11", Locality("dc1", "a", "r1")),
            ("127.0.95.12", Locality("dc1", "b", "r2")),
        ]
        # Services without the tag on any instance are not watched at all.
        assert set(run.adapter.describe()["watches"]) == {"dc1/services", "dc1/pay"}
        assert set(run.aggregate.services()) == {host}


async def test_idle_catalog_costs_no_queries(consul_agent: ConsulAgent) -> None:
    c = client(consul_agent)
    for i in range(20):
        c.agent.service.register(f"svc{i}", address=f"127.0.95.{100 + i}", port=7000)
    async with running_adapter(params(consul_agent, wait="60s")) as run:
        assert len(run.aggregate.services()) == 20
        assert len(run.adapter.describe()["watches"]) == 21  # one per service + the list

        def queries() -> float:
            return sum(
                metrics.QUERIES.labels("consul", "dc1", kind, outcome)._value.get()
                for kind in ("list", "service")
                for outcome in ("change", "unchanged", "error")
            )

        # Let the initial reads settle, then idle: every watch sits in a blocking query, so no
        # request is made at all -- there is no timer.
        await asyncio.sleep(0.5)
        idle_start = queries()
        await asyncio.sleep(2.0)
        assert queries() == idle_start
        c.agent.service.register("svc3", address="127.0.95.203", port=7000)
        await run.wait_for(
            lambda: run.aggregate.endpoints("svc3.service.consul")[0].address == "127.0.95.203",
            "the change",
            10,
        )


async def test_enterprise_namespace_on_oss_is_degraded_not_crashed(
    consul_agent: ConsulAgent,
) -> None:
    async with running_adapter(params(consul_agent, namespace="team-a"), sync_timeout=None) as run:
        await run.wait_for(lambda: run.member.degraded, "a degraded reason", 15)
        assert "Enterprise" in (run.member.degraded or "")
        assert not run.member.synced and not run.task.done()  # type: ignore[union-attr]


@pytest.mark.parametrize("consistency", ["default", "consistent"])
async def test_consistency_modes(consul_agent: ConsulAgent, consistency: str) -> None:
    client(consul_agent).agent.service.register("web", address="127.0.95.1", port=80)
    async with running_adapter(params(consul_agent, consistency=consistency)) as run:
        assert addresses(run) == ["127.0.95.1"]


@contextlib.contextmanager
def two_datacenters(base: Path) -> Iterator[tuple[ConsulAgent, ConsulAgent]]:
    """Two single-server datacenters (dc1, dc2) federated over the WAN, as users run them.

    Built from the harness's agent helpers; the harness has no multi-datacenter fixture.
    """
    agents = [_new_agent(f"{dc}-server", loopback_host(), base) for dc in ("dc1", "dc2")]
    try:
        for i, (agent, dc) in enumerate(zip(agents, ("dc1", "dc2"), strict=True)):
            other = agents[1 - i]
            _write_config(
                agent,
                {
                    "datacenter": dc,
                    "server": True,
                    "bootstrap_expect": 1,
                    "retry_join_wan": [f"{other.host}:{other.serf_wan_port}"],
                    "retry_interval_wan": "1s",
                },
            )
            _launch(agent)
        for agent in agents:
            _wait_leader(agent, 60)
        c = client(agents[0])
        assert agents[0].process is not None
        agents[0].process.wait_until(
            lambda: set(c.catalog.datacenters()) == {"dc1", "dc2"}, "for WAN federation", 60
        )
        yield agents[0], agents[1]
    finally:
        for agent in agents:
            if agent.process:
                agent.process.stop()


async def test_several_datacenters_through_one_agent(tmp_path: Path) -> None:
    with two_datacenters(tmp_path / "wan") as (dc1, dc2):
        catalog_register(client(dc1), "vm-1", "127.0.95.31", {"Service": "web", "Port": 8080})
        catalog_register(client(dc2), "vm-2", "127.0.95.32", {"Service": "web", "Port": 8080})
        catalog_register(client(dc2), "vm-3", "127.0.95.33", {"Service": "db", "Port": 5432})
        # One agent (in dc1) serves both datacenters' catalogs.
        opts = {"datacenters": ["dc1", "dc2"]}
        async with running_adapter(params(dc1, **opts)) as run:
            # One hostname for both datacenters; each endpoint carries its datacenter as region.
            assert [(e.address, e.locality.region) for e in run.aggregate.endpoints(WEB)] == [
                ("127.0.95.31", "dc1"),
                ("127.0.95.32", "dc2"),
            ]
            assert [e.locality.region for e in run.aggregate.endpoints("db.service.consul")] == [
                "dc2"
            ]
            assert set(run.adapter.describe()["watches"]) == {
                "dc1/services",
                "dc1/web",
                "dc2/services",
                "dc2/web",
                "dc2/db",
            }
            # A change in the remote datacenter arrives through the local agent.
            client(dc2).catalog.deregister("vm-2")
            await run.wait_for(
                lambda: addresses(run) == ["127.0.95.31"], "the dc2 deregistration", 15
            )
        # Per-datacenter hostnames when the template asks for them.
        template = {"hostnameTemplate": "{service}.service.{datacenter}.consul"}
        async with running_adapter(params(dc2, **template)) as run:
            assert set(run.aggregate.services()) == {"db.service.dc2.consul"}
            assert run.adapter.describe()["datacenters"] == ["dc2"]  # the agent's own


async def test_more_services_than_the_agent_allows_connections(
    consul_agent: ConsulAgent,
) -> None:
    """Each per-service watch holds a connection; Consul allows 200 per client IP by default.

    With the default ``maxWatches`` (128) 230 services are followed catalog-wide and sync without
    a single 429; with ``maxWatches`` set past the agent's limit the adapter must say so (and what
    to change), not crash or spin.
    """
    c = client(consul_agent)
    for i in range(230):
        catalog_register(c, f"vm-{i}", f"127.0.95.{i % 250 + 1}", {"Service": f"s{i}", "Port": 1})
    async with running_adapter(params(consul_agent)) as run:
        assert len(run.aggregate.services()) == 230
        assert run.adapter.describe()["modes"] == {"dc1": "catalog"}
        assert run.member.degraded is None
    async with running_adapter(params(consul_agent, maxWatches=1000), sync_timeout=None) as run:
        await run.wait_for(
            lambda: "http_max_conns_per_client" in (run.member.degraded or ""),
            "the connection-limit explanation",
            30,
        )
        assert "maxWatches" in (run.member.degraded or "")
        assert not run.task.done()  # type: ignore[union-attr]
