"""Per-stream push queue: merged per type (latest wins), bounded, in push order; NACK logs."""

from __future__ import annotations

import asyncio
import logging

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2
from hypothesis import given
from hypothesis import strategies as st

from meshfed.pilot import metrics as M
from meshfed.pilot import xds_types as T
from meshfed.pilot.ads import DiscoveryServer
from meshfed.pilot.cache import ConfigCache
from meshfed.pilot.nacklog import ERROR_LIMIT, LOG_LIMIT, NackLog, bounded
from meshfed.pilot.push_queue import PushQueue, merge_plans
from meshfed.pilot.resources import Resource
from meshfed.pilot.watch import Plan, Status
from meshfed.registry.aggregate import AggregateRegistry
from meshfed.registry.model import Endpoint, Port, Protocol, Service


def res(name: str, version: str) -> Resource:
    return Resource(name, version, any_pb2.Any())


def plan(type_url: str, nonce: str, *resources: Resource, removed: tuple[str, ...] = ()) -> Plan:
    return Plan(type_url, f"v{nonce}", nonce, resources, removed)


# -- merge ----------------------------------------------------------------------------------
def test_a_whole_table_response_replaces_the_pending_one() -> None:
    older = plan(T.CLUSTER, "1", res("a", "1"), res("b", "1"))
    newer = plan(T.CLUSTER, "2", res("a", "2"))
    assert merge_plans(older, newer, whole=True) == newer


def test_partial_responses_keep_the_union_newest_per_name() -> None:
    older = plan(T.ENDPOINT, "1", res("a", "1"), res("b", "1"))
    newer = plan(T.ENDPOINT, "2", res("b", "2"), res("c", "2"))
    merged = merge_plans(older, newer, whole=False)
    assert [(r.name, r.version) for r in merged.resources] == [("a", "1"), ("b", "2"), ("c", "2")]
    assert (merged.nonce, merged.version) == ("2", "v2")  # the proxy ACKs what it received


def test_delta_removals_survive_unless_a_newer_response_brings_the_name_back() -> None:
    older = plan(T.CLUSTER, "1", res("a", "1"), removed=("x", "y"))
    newer = plan(T.CLUSTER, "2", res("y", "2"), removed=("a",))
    merged = merge_plans(older, newer, whole=False)
    assert [r.name for r in merged.resources] == ["y"]
    assert merged.removed == ("a", "x")


def test_queue_holds_one_response_per_type_and_hands_them_out_in_push_order() -> None:
    queue = PushQueue(T.FULL_STATE, lambda p: p)
    for i in range(100):  # a proxy that never reads
        for type_url in reversed(T.PUSH_ORDER):
            queue.put(plan(type_url, str(i), res(f"r{i}", str(i))))
    assert len(queue) == len(T.PUSH_ORDER) and queue.merged == 99 * len(T.PUSH_ORDER)
    out = queue.drain()
    assert [p.type_url for p in out] == list(T.PUSH_ORDER)
    assert [r.name for r in out[0].resources] == ["r99"]  # clusters: the latest whole table
    assert len(out[1].resources) == 100  # endpoints: every name the proxy has not seen yet


async def test_get_waits_for_a_response_and_returns_none_once_closed() -> None:
    queue = PushQueue(T.FULL_STATE, lambda p: p)
    waiter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not waiter.done()
    queue.put(plan(T.LISTENER, "1"))
    assert (await waiter).nonce == "1"
    queue.close()
    assert await queue.get() is None


# -- a stream that does not read ------------------------------------------------------------
def _server() -> tuple[DiscoveryServer, object]:
    agg = AggregateRegistry()
    member = agg.add_member("m")
    services = [
        Service(f"s{i}.default.svc.cluster.local", ports=(Port(80, "http", Protocol.HTTP),))
        for i in range(3)
    ]
    for i, service in enumerate(services):
        member.put_service(service, [Endpoint(f"10.0.{i}.1", {"http": 8080})])
    cache = ConfigCache(agg)
    cache.rebuild()
    return DiscoveryServer(cache), member


def test_a_slow_proxy_gets_one_merged_response_and_its_ack_counts() -> None:
    server, member = _server()
    node = base_pb2.Node(id="sidecar~127.0.0.2~a.default~x")
    conn = server._open(node, False, "test")
    conn.on_request(discovery_pb2.DiscoveryRequest(node=node, type_url=T.CLUSTER))
    names = sorted(conn.watch(T.CLUSTER).sent)
    conn.on_request(discovery_pb2.DiscoveryRequest(type_url=T.ENDPOINT, resource_names=names))
    first = conn.take_responses()
    assert [r.type_url for r in first] == [T.CLUSTER, T.ENDPOINT]
    for r in first:
        conn.on_request(
            discovery_pb2.DiscoveryRequest(
                type_url=r.type_url,
                version_info=r.version_info,
                response_nonce=r.nonce,
                resource_names=[] if r.type_url == T.CLUSTER else names,
            )
        )
    # Many endpoint changes while the proxy reads nothing: one pending EDS response.
    for k in range(20):
        host = f"s{k % 3}.default.svc.cluster.local"
        member.set_endpoints(host, [Endpoint(f"10.9.{k}.1", {"http": 8080})])
        conn.push(server.cache.apply({host}))
    assert len(conn.outbox) == 1
    (eds,) = conn.take_responses()
    assert len(eds.resources) == 3  # every changed assignment, each at its latest version
    watch = conn.watch(T.ENDPOINT)
    assert eds.nonce == watch.sent_nonce
    conn.on_request(
        discovery_pb2.DiscoveryRequest(
            type_url=T.ENDPOINT,
            version_info=eds.version_info,
            response_nonce=eds.nonce,
            resource_names=names,
        )
    )
    assert watch.status is Status.SYNCED
    assert conn.describe()["merged_pushes"] == 19


# -- NACKs ----------------------------------------------------------------------------------
def test_nack_log_is_bounded_and_rate_limited_per_proxy(caplog) -> None:
    now = [0.0]
    nacks = NackLog(logging.getLogger("test.nacks"), interval=10.0, clock=lambda: now[0])
    huge = "x" * 4_000_000
    with caplog.at_level(logging.WARNING, logger="test.nacks"):
        logged = [nacks.nack("proxy-a", "cds", "v1", huge) for _ in range(5)]
        logged.append(nacks.nack("proxy-b", "cds", "v1", "bad"))
        now[0] = 11.0
        logged.append(nacks.nack("proxy-a", "cds", "v2", huge))
    assert logged == [True, False, False, False, False, True, True]
    assert len(caplog.records) == 3
    assert all(len(r.getMessage()) < 2 * LOG_LIMIT for r in caplog.records)
    assert "4 more NACKs from this proxy not logged" in caplog.records[2].getMessage()
    # as fields too (``--log-format json``): the proxy and the type
    assert [(r.proxy, r.type) for r in caplog.records][1] == ("proxy-b", "cds")  # type: ignore[attr-defined]


def test_a_huge_nack_is_cut_but_stays_visible_in_proxy_status(caplog) -> None:
    server, _ = _server()
    node = base_pb2.Node(id="sidecar~127.0.0.2~a.default~x")
    conn = server._open(node, False, "test")
    conn.on_request(discovery_pb2.DiscoveryRequest(node=node, type_url=T.CLUSTER))
    (cds,) = conn.take_responses()
    huge = "refused: " + "y" * 4_000_000
    rejects, pushes = M.ISTIO_REJECTS.value("cds"), M.ISTIO_PUSHES.value("cds")
    with caplog.at_level(logging.WARNING, logger="meshfed.pilot.ads"):
        for _ in range(5):
            request = discovery_pb2.DiscoveryRequest(
                type_url=T.CLUSTER, version_info="", response_nonce=cds.nonce
            )
            request.error_detail.message = huge
            conn.on_request(request)
    described = conn.describe()["types"]["cds"]
    assert described["status"] == "NACKED" and described["nacks"] == 5
    # every NACK counted under Istio's name; no response re-sent for them
    assert M.ISTIO_REJECTS.value("cds") == rejects + 5
    assert M.ISTIO_PUSHES.value("cds") == pushes
    assert described["error"].startswith("refused: yyy") and "more characters" in described["error"]
    assert len(described["error"]) < ERROR_LIMIT + 100
    assert sum(len(r.getMessage()) for r in caplog.records) < 1000
    assert bounded("short", 10) == "short"


# -- property: a merged response leaves the proxy where the sequence would have -------------
def _apply(state: dict[str, str], p: Plan, whole: bool) -> dict[str, str]:
    """What a client holds after ``p``: Envoy's reading of a response."""
    if whole:
        return {r.name: r.version for r in p.resources}
    out = {**state, **{r.name: r.version for r in p.resources}}
    for name in p.removed:
        out.pop(name, None)
    return out


_names = st.sampled_from(["a", "b", "c", "d"])
_plans = st.lists(
    st.tuples(
        st.dictionaries(_names, st.sampled_from(["1", "2", "3"]), max_size=4),
        st.lists(_names, max_size=3, unique=True),
    ),
    min_size=1,
    max_size=6,
)


@given(_plans, st.booleans(), st.dictionaries(_names, st.just("0"), max_size=4))
def test_merging_pending_responses_never_changes_what_the_proxy_ends_up_with(
    steps: list, whole: bool, start: dict[str, str]
) -> None:
    plans = []
    for i, (resources, removed) in enumerate(steps):
        kept = tuple(n for n in removed if n not in resources) if not whole else ()
        plans.append(
            plan(
                T.ENDPOINT, str(i), *(res(n, v) for n, v in sorted(resources.items())), removed=kept
            )
        )
    sequential = start
    for p in plans:
        sequential = _apply(sequential, p, whole)
    queue = PushQueue(frozenset({T.ENDPOINT}) if whole else frozenset(), lambda p: p)
    for p in plans:
        queue.put(p)
    (merged,) = queue.drain()
    assert _apply(start, merged, whole) == sequential
    assert merged.nonce == plans[-1].nonce
