"""The Eureka adapter against a real Spring Cloud Netflix Eureka server.

Instances are registered the two ways applications do it: with ``py_eureka_client`` (a real
client library) and with plain REST calls. Each test uses its own application names, because the
Eureka server is shared by the whole session. The adapter polls every 200 ms; every wait is
bounded. Addresses: 127.0.92.x (instances are never dialled here, only registered).

Eureka's response cache can pin a delta computed just before a registration (its cache load
races the invalidation) until the entry expires; tests therefore run with a 2 s
``fullFetchInterval``, the adapter's bound on that staleness (see adapters/eureka/registry.py).
"""

from __future__ import annotations

import uuid

import py_eureka_client.eureka_client as eureka_client

from integration.peers.eureka import EurekaServer
from meshfed.adapters.eureka.testing import EurekaRest, instance_doc, running_adapter, wait_for
from meshfed.adapters.eureka.wire import Instance
from meshfed.registry.aggregate import AggregateRegistry

WAIT = 20.0
FAST = "200ms"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def healthy_addresses(aggregate: AggregateRegistry, host: str) -> set[str]:
    return {e.address for e in aggregate.endpoints(host) if e.healthy}


def addresses(aggregate: AggregateRegistry, host: str) -> set[str]:
    return {e.address for e in aggregate.endpoints(host)}


def params(server: EurekaServer, **extra: object) -> dict[str, object]:
    return {
        "servers": [server.eureka_url],
        "fetchInterval": FAST,
        "fullFetchInterval": "2s",
        **extra,
    }


async def test_rest_register_heartbeat_out_of_service_cancel(eureka_server: EurekaServer) -> None:
    app = unique("orders")
    host = app  # hostnameTemplate "{vip}", VIP = app name in lower case
    async with (
        EurekaRest(eureka_server.eureka_url) as rest,
        running_adapter(params(eureka_server)) as (aggregate, adapter),
    ):
        await wait_for(lambda: adapter.member.synced, WAIT, "the first full fetch")
        assert await rest.register(instance_doc(app, "i1", "127.0.92.1", 8080)) == 204
        assert await rest.register(instance_doc(app, "i2", "127.0.92.2", 8081)) == 204
        await wait_for(
            lambda: healthy_addresses(aggregate, host) == {"127.0.92.1", "127.0.92.2"},
            WAIT,
            "both registered instances to be healthy endpoints",
        )
        service = aggregate.service(host)
        assert service is not None and [p.name for p in service.ports] == ["http"]
        targets = {e.address: dict(e.ports) for e in aggregate.endpoints(host)}
        assert targets == {"127.0.92.1": {"http": 8080}, "127.0.92.2": {"http": 8081}}

        assert await rest.heartbeat(app, "i1") == 200
        assert await rest.set_status(app, "i2", "OUT_OF_SERVICE") == 200
        await wait_for(
            lambda: healthy_addresses(aggregate, host) == {"127.0.92.1"},
            WAIT,
            "the OUT_OF_SERVICE override to take i2 out of rotation",
        )
        # Listed but unhealthy: the debug view shows why it takes no traffic.
        assert addresses(aggregate, host) == {"127.0.92.1", "127.0.92.2"}
        # A heartbeat reporting UP does not undo an operator's override.
        assert await rest.heartbeat(app, "i2") == 200
        assert await rest.delete_override(app, "i2") == 200
        await wait_for(
            lambda: healthy_addresses(aggregate, host) == {"127.0.92.1", "127.0.92.2"},
            WAIT,
            "removing the override to bring i2 back",
        )

        assert await rest.cancel(app, "i1") == 200
        await wait_for(
            lambda: addresses(aggregate, host) == {"127.0.92.2"}, WAIT, "cancel to remove i1"
        )
        assert await rest.cancel(app, "i2") == 200
        await wait_for(lambda: aggregate.service(host) is None, WAIT, "the service to go away")
        assert adapter.counters["delta_fetches"] > 0
        info = adapter.describe()
        assert info["lastFetch"]["kind"] == "delta"
        assert info["appsHashcode"] == info["serverHashcode"]


async def test_py_eureka_client_registration(eureka_server: EurekaServer) -> None:
    app = unique("inventory")
    host = f"{app}.eureka"
    # py_eureka_client 0.13.3 heartbeats from a timer thread that never stops once it has fired
    # (Timer.cancel cannot stop a running function) and re-registers after cancel; a long
    # renewal interval keeps that thread from ever firing, and the test sends heartbeats itself
    # through the client's own API.
    client = eureka_client.EurekaClient(
        eureka_server=eureka_server.eureka_url,
        app_name=app,
        instance_id=f"{app}-1",
        instance_host="127.0.92.11",
        instance_ip="127.0.92.11",
        instance_port=9090,
        instance_secure_port=9443,
        instance_secure_port_enabled=True,
        renewal_interval_in_secs=3600,
        duration_in_secs=3600,
        metadata={"zone": "zone-b", "version": "v7", "protocol": "grpc"},
        should_discover=False,
    )
    async with running_adapter(
        params(eureka_server, hostnameTemplate="{vip}.eureka", format="xml")
    ) as (aggregate, adapter):
        await client.start()
        try:
            await wait_for(
                lambda: healthy_addresses(aggregate, host) == {"127.0.92.11"},
                WAIT,
                "the py_eureka_client instance",
            )
            service = aggregate.service(host)
            assert service is not None
            assert [(p.name, p.number, p.protocol.value) for p in service.ports] == [
                ("http", 80, "GRPC"),
                ("https", 443, "TLS"),
            ]
            (endpoint,) = aggregate.endpoints(host)
            assert dict(endpoint.ports) == {"http": 9090, "https": 9443}
            assert endpoint.labels["version"] == "v7"
            assert endpoint.locality.zone == "zone-b"
            await client.send_heartbeat()
            await client.status_update("OUT_OF_SERVICE")
            await wait_for(
                lambda: not healthy_addresses(aggregate, host), WAIT, "client-side OUT_OF_SERVICE"
            )
            await client.delete_status_override()
            await client.status_update("UP")
            await wait_for(
                lambda: healthy_addresses(aggregate, host) == {"127.0.92.11"},
                WAIT,
                "the instance back UP",
            )
        finally:
            await client.stop()  # sets DOWN, then cancels
        await wait_for(lambda: aggregate.service(host) is None, WAIT, "cancel on client stop")
        assert adapter.describe()["format"] == "xml"


async def test_json_and_xml_adapters_see_the_same_model(eureka_server: EurekaServer) -> None:
    app = unique("twin")
    async with EurekaRest(eureka_server.eureka_url) as rest:
        doc = instance_doc(
            app,
            "t1",
            "127.0.92.21",
            8080,
            secure_port=8443,
            metadata={"zone": "z", "region": "r", "secureProtocol": "tcp"},
        )
        assert await rest.register(doc) == 204
        assert await rest.register(instance_doc(app, "t2", "127.0.92.22", 8080)) == 204
        try:
            async with (
                running_adapter(params(eureka_server, format="json")) as (agg_json, _),
                running_adapter(params(eureka_server, format="xml")) as (agg_xml, _),
            ):
                await wait_for(
                    lambda: len(agg_json.endpoints(app)) == 2 and len(agg_xml.endpoints(app)) == 2,
                    WAIT,
                    "both adapters to see both instances",
                )
                assert agg_json.service(app) == agg_xml.service(app)
                assert agg_json.endpoints(app) == agg_xml.endpoints(app)
                # t2 has no secure port, so https is not declared (it would send traffic to
                # a port t2 never opened).
                assert [p.name for p in agg_json.service(app).ports] == ["http"]
        finally:
            await rest.cancel(app, "t1")
            await rest.cancel(app, "t2")


async def test_local_divergence_is_caught_by_the_hash_code(eureka_server: EurekaServer) -> None:
    app = unique("drift")
    async with EurekaRest(eureka_server.eureka_url) as rest:
        # Registered before the adapter starts, so its first full fetch has it (a delta could be
        # pinned stale by the server's cache, and this test has no periodic full fetch).
        assert await rest.register(instance_doc(app, "d1", "127.0.92.31", 8080)) == 204
        try:
            async with running_adapter(params(eureka_server, fullFetchInterval="1h")) as (
                aggregate,
                adapter,
            ):
                await wait_for(lambda: len(aggregate.endpoints(app)) == 1, WAIT, "the instance")
                # The local copy gains an instance the server never had: no delta will ever
                # delete it, exactly the drift Eureka's reconcile hash code exists to catch.
                ghost = Instance(
                    instance_id="ghost", app=app.upper(), ip_addr="127.0.92.39", status="UP"
                )
                copy = adapter.local.apps
                local = {name: dict(instances) for name, instances in copy.items()}
                local[app.upper()]["ghost"] = ghost
                adapter.local.apps = local
                mismatches = adapter.counters["hash_mismatches"]
                fulls = adapter.counters["full_fetches"]
                await wait_for(
                    lambda: adapter.counters["hash_mismatches"] > mismatches,
                    WAIT,
                    "a hash mismatch",
                )
                await wait_for(
                    lambda: adapter.counters["full_fetches"] > fulls, WAIT, "the full fetch"
                )
                assert "ghost" not in adapter.apps[app.upper()]
                assert {e.address for e in aggregate.endpoints(app)} == {"127.0.92.31"}
                assert adapter.counters["periodic_full_fetches"] == 0
        finally:
            await rest.cancel(app, "d1")


async def test_lease_expiry_removes_the_instance(eureka_server: EurekaServer) -> None:
    app = unique("lease")
    async with (
        EurekaRest(eureka_server.eureka_url) as rest,
        running_adapter(params(eureka_server)) as (aggregate, _),
    ):
        short = instance_doc(app, "l1", "127.0.92.41", 8080, lease_seconds=2, renewal_seconds=1)
        steady = instance_doc(app, "l2", "127.0.92.42", 8080, lease_seconds=3600)
        assert await rest.register(short) == 204
        assert await rest.register(steady) == 204
        await wait_for(lambda: len(aggregate.endpoints(app)) == 2, WAIT, "both instances")
        # No heartbeats for l1: once its lease lapses, the server's evictor (every second in
        # this server) drops it, and the adapter follows. Eureka counts the lease twice
        # (its long-standing renew() quirk), hence a generous bound.
        await wait_for(
            lambda: addresses(aggregate, app) == {"127.0.92.42"}, 60, "eviction of the expired l1"
        )
        await rest.cancel(app, "l2")


async def test_dead_server_in_the_list_fails_over(eureka_server: EurekaServer) -> None:
    app = unique("failover")
    dead = "http://127.0.0.1:9/eureka/"  # discard port: nothing listens
    async with (
        EurekaRest(eureka_server.eureka_url) as rest,
        running_adapter(
            {"servers": [dead, eureka_server.eureka_url], "fetchInterval": FAST, "timeout": "1s"}
        ) as (aggregate, adapter),
    ):
        assert await rest.register(instance_doc(app, "f1", "127.0.92.51", 8080)) == 204
        await wait_for(lambda: len(aggregate.endpoints(app)) == 1, WAIT, "the instance")
        info = adapter.describe()
        assert info["currentServer"] == eureka_server.eureka_url
        assert info["failovers"] >= 1
        assert adapter.member.degraded is None
        await rest.cancel(app, "f1")


async def test_unreachable_at_start_is_degraded_not_synced() -> None:
    async with running_adapter(
        {"servers": ["http://127.0.0.1:9/eureka"], "fetchInterval": FAST, "maxBackoff": "200ms"}
    ) as (aggregate, adapter):
        await wait_for(lambda: adapter.member.degraded is not None, WAIT, "degraded")
        assert not aggregate.synced
        assert "failed on every Eureka server" in adapter.member.degraded
        await wait_for(lambda: adapter.counters["errors"] >= 3, WAIT, "retries with backoff")
