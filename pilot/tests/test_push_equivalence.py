"""What Pilot pushes for a given registry state does not depend on how the cache got there.

A fixed mesh (Kubernetes- and Consul-shaped endpoints, a route rule with subsets, mutual TLS)
is pushed to sidecars of every kind (state of the world and delta, locality-aware, iptables
interception, without SDS) through a sequence of registry changes. Two promises are checked:

- every pushed resource (name, per-resource version, bytes, in push order) equals a recorded
  fingerprint, so a change to the cache's mechanism cannot change what proxies receive;
- a cache that followed the changes one by one and a cache built from scratch on the final
  state push the same responses, type versions included.
"""

from __future__ import annotations

import hashlib
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import discovery_pb2

from meshfed.pilot import xds_types as T
from meshfed.pilot.ads import Connection, DiscoveryServer
from meshfed.pilot.cache import ConfigCache
from meshfed.pilot.config.store import ConfigSnapshot, parse_config_file
from meshfed.pilot.mtls_plugin import MtlsPlugin
from meshfed.pilot.node import ProxyNode
from meshfed.registry.aggregate import AggregateRegistry, Member
from meshfed.registry.model import Endpoint, Locality, Port, Protocol, Service
from meshfed.security.mtls import TLS_MODE_LABEL, TLS_MODE_MTLS

HTTP = Port(80, "http", Protocol.HTTP)
GRPC = Port(9090, "grpc", Protocol.GRPC)
REVIEWS = "reviews.default.svc.cluster.local"

RULE = """
apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {name: split}
spec:
  destination: {name: reviews}
  route:
  - {labels: {version: v1}, weight: 75}
  - {labels: {version: v2}, weight: 25}
"""

# Per stream and type, the fingerprint of every resource run_changes() pushes. The two
# ``redirect`` endpoint entries are the only ones not recorded before the shared tables were
# maintained in place: intercepting proxies used to keep the endpoint table of the first view
# built for their listener and cluster versions, so endpoint changes never reached them
# (test_intercepting_proxies_get_endpoint_changes). The ``app`` entries changed when a proxy
# whose own endpoint goes started getting its new listeners and clusters
# (test_a_proxy_whose_own_endpoint_goes_gets_listeners_and_clusters_without_it); every other
# entry is unchanged.
RECORDED: dict[str, str] = {
    "app/delta cds": "e4d8ca227acd839c",
    "app/delta eds": "a9228002439ded40",
    "app/delta lds": "5c1e989246a4a0d0",
    "app/delta rds": "4b67be5df2c9687a",
    "app/sotw cds": "b71e05b4bccfd3a2",
    "app/sotw eds": "323e3e61f389e178",
    "app/sotw lds": "e663fd3207af25eb",
    "app/sotw rds": "87f7249eaf98e748",
    "near/delta cds": "8862fb34e365a9c1",
    "near/delta eds": "f7976c981202b78d",
    "near/delta lds": "6d64b3b8bf6149c2",
    "near/delta rds": "4b67be5df2c9687a",
    "near/sotw cds": "dc72ac1ce932aa50",
    "near/sotw eds": "c355596d8b157a59",
    "near/sotw lds": "c01607bb39c7fbd1",
    "near/sotw rds": "87f7249eaf98e748",
    "plain/delta cds": "8862fb34e365a9c1",
    "plain/delta eds": "1ec771303e8b38f6",
    "plain/delta lds": "bfcfc5041350078a",
    "plain/delta rds": "4b67be5df2c9687a",
    "plain/sotw cds": "dc72ac1ce932aa50",
    "plain/sotw eds": "5211176eb143e1cf",
    "plain/sotw lds": "82123d9ab4fb89ee",
    "plain/sotw rds": "87f7249eaf98e748",
    "redirect/delta cds": "550ac35a040f0852",
    "redirect/delta eds": "1ec771303e8b38f6",
    "redirect/delta lds": "b14e0d0805b59fba",
    "redirect/delta rds": "4b67be5df2c9687a",
    "redirect/sotw cds": "72715a44fc934d0a",
    "redirect/sotw eds": "5211176eb143e1cf",
    "redirect/sotw lds": "51bc4f70453fec80",
    "redirect/sotw rds": "87f7249eaf98e748",
    "sotw/delta cds": "8862fb34e365a9c1",
    "sotw/delta eds": "1ec771303e8b38f6",
    "sotw/delta lds": "a21e77b10f484d98",
    "sotw/delta rds": "4b67be5df2c9687a",
    "sotw/sotw cds": "dc72ac1ce932aa50",
    "sotw/sotw eds": "5211176eb143e1cf",
    "sotw/sotw lds": "68224440e78267df",
    "sotw/sotw rds": "87f7249eaf98e748",
}


def host(i: int) -> str:
    return REVIEWS if i == 0 else f"svc-{i}.default.svc.cluster.local"


def endpoint(i: int, j: int, healthy: bool = True) -> Endpoint:
    if i % 2 == 0:
        return Endpoint(
            f"10.1.{i}.{j + 1}",
            ports={"http": 9080},
            labels={"app": f"svc-{i}", "version": f"v{1 + j % 2}", TLS_MODE_LABEL: TLS_MODE_MTLS},
            identity=f"spiffe://cluster.local/ns/default/sa/svc-{i}",
            locality=Locality("us-east1", f"us-east1-{'bc'[j % 2]}"),
            registry="kubernetes",
            healthy=healthy,
        )
    return Endpoint(
        f"10.2.{i}.{j + 1}",
        labels={"version": f"v{1 + j % 2}"},
        locality=Locality("dc1"),
        registry="consul",
        healthy=healthy,
        weight=1 + j,
    )


def service(i: int) -> Service:
    return Service(host(i), ports=(HTTP, GRPC) if i % 3 == 0 else (HTTP,))


NODES = (
    ProxyNode(id="sotw", ip="127.0.0.2", sds=True, secrets_dir="/run/meshfed/sotw"),
    ProxyNode(id="plain", ip="127.0.0.3"),
    ProxyNode(id="near", ip="127.0.0.4", sds=True, locality=Locality("us-east1", "us-east1-b")),
    ProxyNode(id="redirect", ip="127.0.0.5", sds=True, secrets_dir="/d", interception="REDIRECT"),
    # Fronts svc-2's first endpoint: inbound listener and cluster, locality from the registry.
    ProxyNode(id="app", ip="10.1.2.1", sds=True, app_address="10.1.2.1", app_ports=((9080, 8080),)),
)


def registry(services: int = 6) -> tuple[AggregateRegistry, Member]:
    agg = AggregateRegistry()
    member = agg.add_member("m")
    member.replace(
        [service(i) for i in range(services)],
        {host(i): [endpoint(i, j) for j in range(3)] for i in range(services)},
    )
    return agg, member


def changes(member: Member, agg: AggregateRegistry) -> Iterator[set[str]]:
    """Registry changes one at a time: each yields the hostnames it touched, to be applied."""
    # One endpoint moves.
    eps = list(agg.endpoints(host(1)))
    eps[0] = attrs.evolve(eps[0], address="10.9.9.9")
    member.set_endpoints(host(1), eps)
    yield {host(1)}
    # One endpoint turns unhealthy; a subset endpoint of the rule's destination goes.
    eps = list(agg.endpoints(host(2)))
    eps[1] = attrs.evolve(eps[1], healthy=False)
    member.set_endpoints(host(2), eps)
    member.set_endpoints(host(0), list(agg.endpoints(host(0)))[:2])
    yield {host(2), host(0)}
    # A service appears, another goes.
    member.put_service(service(7), [endpoint(7, 0), endpoint(7, 1)])
    member.delete_service(host(5))
    yield {host(7), host(5)}
    # Every endpoint of one service goes, then others come, one with another identity.
    member.set_endpoints(host(4), [])
    yield {host(4)}
    member.set_endpoints(
        host(4), [endpoint(4, 5), attrs.evolve(endpoint(4, 6), identity="spiffe://x/ns/a/sa/b")]
    )
    yield {host(4)}
    # The proxy "app" fronts loses its endpoint: its inbound side goes.
    member.set_endpoints(host(2), list(agg.endpoints(host(2)))[1:])
    yield {host(2)}


def snapshot(tmp_path: Path) -> ConfigSnapshot:
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(RULE))
    objects, errors = parse_config_file(path)
    assert not errors and objects is not None
    return ConfigSnapshot.of(objects)


def new_cache(agg: AggregateRegistry, config: ConfigSnapshot) -> ConfigCache:
    cache = ConfigCache(agg, [MtlsPlugin()])
    cache.rebuild()
    cache.set_config(config)
    return cache


def drain(conn: Connection) -> list[Any]:
    """Every response queued for ``conn``, after ACKing each one (so the next push is a diff)."""
    out = conn.take_responses()
    for r in out:
        watch = conn.watches[r.type_url]
        if conn.delta:
            conn.on_request(
                discovery_pb2.DeltaDiscoveryRequest(type_url=r.type_url, response_nonce=r.nonce)
            )
        else:
            conn.on_request(
                discovery_pb2.DiscoveryRequest(
                    type_url=r.type_url,
                    version_info=r.version_info,
                    response_nonce=r.nonce,
                    resource_names=sorted(watch.subscribed),
                )
            )
    return out


def subscribe(server: DiscoveryServer) -> dict[str, tuple[Connection, list[Any]]]:
    """A state-of-the-world and a delta stream for every node, subscribed to every type, each
    with the responses it got."""
    conns = {}
    for node in NODES:
        for delta in (False, True):
            conn = Connection(server, node, delta, "test")
            server.connections[conn.id] = conn
            for type_url in T.PUSH_ORDER:
                if delta:
                    conn.on_request(
                        discovery_pb2.DeltaDiscoveryRequest(
                            type_url=type_url, resource_names_subscribe=["*"]
                        )
                    )
                else:
                    conn.on_request(discovery_pb2.DiscoveryRequest(type_url=type_url))
            responses = drain(conn)
            # Endpoints and routes by name, as Envoy asks for them after CDS and LDS.
            view = server.cache.view(node)
            for type_url in (T.ENDPOINT, T.ROUTE):
                wanted = sorted(view.get(type_url))
                if delta:
                    conn.on_request(
                        discovery_pb2.DeltaDiscoveryRequest(
                            type_url=type_url, resource_names_subscribe=wanted
                        )
                    )
                else:
                    conn.on_request(
                        discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=wanted)
                    )
            responses.extend(drain(conn))
            conns[f"{node.id}/{'delta' if delta else 'sotw'}"] = (conn, responses)
    return conns


def fingerprint(responses: list[Any], h: Any, versions: bool) -> None:
    for r in responses:
        h.update(r.type_url.encode())
        delta = isinstance(r, discovery_pb2.DeltaDiscoveryResponse)
        if versions:
            h.update((r.system_version_info if delta else r.version_info).encode())
        for item in r.resources:
            body = item.resource if delta else item
            if delta:
                h.update(f"{item.name} {item.version}".encode())
            h.update(len(body.value).to_bytes(4, "big"))
            h.update(body.value)
        if delta:
            for name in r.removed_resources:
                h.update(f"removed {name}".encode())


def run_changes(tmp_path: Path) -> dict[str, str]:
    """Connect every proxy, apply every change and push it; per stream and type, a fingerprint
    of every resource pushed (16 hex digits of sha256)."""
    agg, member = registry()
    cache = new_cache(agg, snapshot(tmp_path))
    server = DiscoveryServer(cache)
    hashes: dict[str, Any] = {}

    def record(name: str, responses: list[Any]) -> None:
        for r in responses:
            key = f"{name} {T.short(r.type_url)}"
            fingerprint([r], hashes.setdefault(key, hashlib.sha256()), versions=False)

    conns = subscribe(server)
    for name, (_, responses) in sorted(conns.items()):
        record(name, responses)
    for hosts in changes(member, agg):
        server.push(cache.apply(hosts))
        for name, (conn, _) in sorted(conns.items()):
            record(name, drain(conn))
    return {key: h.hexdigest()[:16] for key, h in sorted(hashes.items())}


def test_pushed_resources_equal_the_recorded_ones(tmp_path: Path) -> None:
    assert run_changes(tmp_path) == RECORDED


def test_intercepting_proxies_get_endpoint_changes(tmp_path: Path) -> None:
    agg, member = registry()
    cache = new_cache(agg, snapshot(tmp_path))
    server = DiscoveryServer(cache)
    conns = subscribe(server)
    name = "outbound|80||" + host(1)
    for hosts in changes(member, agg):
        server.push(cache.apply(hosts))
        for stream in ("redirect/sotw", "redirect/delta", "sotw/sotw"):
            eds = [r for r in drain(conns[stream][0]) if r.type_url == T.ENDPOINT]
            assert eds, stream
            body = eds[0].resources[0]
            assert (body.resource if stream.endswith("delta") else body).value == (
                cache.assignments()[name].body.value
            )
        break


def test_incremental_and_fresh_caches_push_the_same_config(tmp_path: Path) -> None:
    config = snapshot(tmp_path)
    # A cache that followed every change, and one that only ever saw the final state.
    agg, member = registry()
    incremental = new_cache(agg, config)
    for node in NODES:
        incremental.view(node)  # the per-proxy steps have something to reuse
    for hosts in changes(member, agg):
        incremental.apply(hosts)
        for node in NODES:
            incremental.view(node)
    fresh = new_cache(agg, config)
    for node in NODES:
        va, vb = incremental.view(node), fresh.view(node)
        for type_url in T.PUSH_ORDER:
            assert va.version(type_url) == vb.version(type_url), (node.id, type_url)
            ta, tb = va.get(type_url), vb.get(type_url)
            assert sorted(ta) == sorted(tb), (node.id, type_url)
            for name in ta:
                assert ta[name].body.value == tb[name].body.value, (node.id, name)
    # And streams opened on each push byte-identical responses.
    streams = []
    for cache in (incremental, fresh):
        server = DiscoveryServer(cache)
        h = hashlib.sha256()
        for _, (_, responses) in sorted(subscribe(server).items()):
            fingerprint(responses, h, versions=True)
        streams.append(h.hexdigest())
    assert streams[0] == streams[1]


def unpack_listener(body: Any) -> listener_pb2.Listener:
    listener = listener_pb2.Listener()
    body.Unpack(listener)
    return listener


def test_a_proxy_whose_own_endpoint_goes_gets_listeners_and_clusters_without_it(
    tmp_path: Path,
) -> None:
    # Losing its own endpoint changes only endpoint tables in the shared cache, but for the
    # proxy that fronts it the inbound listener and cluster go: that change must be pushed.
    agg, member = registry()
    cache = new_cache(agg, snapshot(tmp_path))
    server = DiscoveryServer(cache)
    conns = subscribe(server)
    *_, last = changes(member, agg)  # the registry as after the whole sequence
    for stream in ("app/sotw", "app/delta", "sotw/sotw"):
        drain(conns[stream][0])
    change = cache.apply(last)
    assert change.endpoints_only and not change.endpoints_only_at("10.1.2.1")
    assert change.endpoints_only_at("127.0.0.2")
    server.push(change)
    for stream in ("app/sotw", "app/delta"):
        pushed = {T.short(r.type_url): r for r in drain(conns[stream][0])}
        assert {"lds", "cds"} <= set(pushed), (stream, sorted(pushed))
        lds = pushed["lds"]
        if stream.endswith("delta"):
            assert any("inbound" in name for name in lds.removed_resources), stream
        else:
            names = [unpack_listener(r).name for r in lds.resources]
            assert names and not any("inbound" in n for n in names), (stream, names)
    assert {T.short(r.type_url) for r in drain(conns["sotw/sotw"][0])} <= {"eds"}
