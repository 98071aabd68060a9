"""The Aggregated Discovery Service: state-of-the-world and delta xDS over ``grpc.aio``.

One :class:`Connection` per stream holds the proxy's node and a :class:`~pilot.watch.TypeWatch`
per type; all protocol decisions live there. This module only moves messages: it reads
requests, asks the watch what to send, turns plans into ``DiscoveryResponse`` /
``DeltaDiscoveryResponse`` and writes them in push order (clusters, endpoints, listeners,
routes).

Everything runs on the event loop; there are no locks because nothing here is shared with
another thread. A stream's writer drains a queue, so a slow proxy delays only itself.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import cachetools
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from meshfed.pilot import metrics as M
from meshfed.pilot import xds_types as T
from meshfed.pilot.cache import CacheChange, ConfigCache, ProxyView, Resource, digest, make_resource
from meshfed.pilot.node import ProxyNode, from_proto
from meshfed.pilot.translate import interception
from meshfed.pilot.watch import Plan, RequestKind, Status, TypeWatch

log = logging.getLogger("meshfed.pilot.ads")

_conn_ids = itertools.count(1)


class Connection:
    """One proxy's ADS stream."""

    def __init__(self, server: DiscoveryServer, node: ProxyNode, delta: bool, peer: str) -> None:
        self.server = server
        self.node = node
        self.delta = delta
        self.peer = peer
        self.id = f"{node.id}-{next(_conn_ids)}"
        self.connected_at = time.time()
        self.watches: dict[str, TypeWatch] = {}
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.sent: dict[str, dict[str, Resource]] = {}
        self.problems: tuple[str, ...] = ()
        self.first_ready_at: float | None = None
        self._nonces = itertools.count(1)

    # -- bookkeeping ------------------------------------------------------------------------
    def _nonce(self) -> str:
        return f"{next(self._nonces)}"

    def watch(self, type_url: str) -> TypeWatch:
        found = self.watches.get(type_url)
        if found is None:
            found = self.watches[type_url] = TypeWatch(type_url, delta=self.delta)
        return found

    @property
    def ready(self) -> bool:
        """Has ACKed a full config: clusters and listeners, and everything else it asked for."""
        if T.CLUSTER not in self.watches or T.LISTENER not in self.watches:
            return False
        return all(w.status is Status.SYNCED for w in self.watches.values())

    # -- requests ---------------------------------------------------------------------------
    def on_request(
        self, request: discovery_pb2.DiscoveryRequest | discovery_pb2.DeltaDiscoveryRequest
    ) -> None:
        type_url = request.type_url
        watch = self.watch(type_url)
        error = request.error_detail.message if request.HasField("error_detail") else ""
        if error == "" and request.HasField("error_detail"):
            error = f"rejected (code {request.error_detail.code}, no message)"
        now = time.monotonic()
        event_time = watch.sent_event_time
        subscribed_before = set(watch.subscribed)
        if self.delta:
            kind, names = watch.on_request(
                request.response_nonce,
                error=error,
                subscribe=request.resource_names_subscribe,
                unsubscribe=request.resource_names_unsubscribe,
                initial_versions=dict(request.initial_resource_versions),
                now=now,
            )
        else:
            kind, names = watch.on_request(
                request.response_nonce,
                version_info=request.version_info,
                error=error,
                names=request.resource_names,
                now=now,
            )
        if watch.subscribed != subscribed_before:
            # Only subscription changes drop resources from the dump; pushes never pay for it.
            self._forget_unsubscribed(watch)
        short = T.short(type_url)
        if kind is RequestKind.NACK:
            M.NACKS.labels(short).inc()
            log.warning(
                "proxy %s rejected %s version %s: %s",
                self.node.id,
                short,
                watch.last_nack.version if watch.last_nack else "?",
                error,
            )
        elif kind is RequestKind.ACK:
            if event_time is not None:
                M.CONVERGENCE.labels(short).observe(max(0.0, now - event_time))
                watch.sent_event_time = None
            if self.first_ready_at is None and self.ready:
                self.first_ready_at = time.time()
                log.info("proxy %s ACKed its first full config", self.node.id)
        if names or kind is RequestKind.INITIAL:
            self._send_type(
                self.server.cache_view(self),
                watch,
                force=names - {"*"},
                respond=kind is RequestKind.INITIAL,
            )

    # -- pushes -----------------------------------------------------------------------------
    def push(self, change: CacheChange | None, event_time: float | None = None) -> int:
        """Send whatever changed for this proxy; returns the number of responses queued."""
        view = self.server.cache_view(self)
        sent = 0
        force_eds: set[str] = set()
        for type_url in T.PUSH_ORDER:
            watch = self.watches.get(type_url)
            if watch is None:
                continue
            only = None
            force: set[str] = set()
            if type_url == T.ENDPOINT:
                force = force_eds
                if change is not None and change.endpoints_only:
                    only = change.endpoint_names
            elif change is not None and change.endpoints_only:
                # Endpoints never change clusters, listeners or routes (EDS keeps them apart).
                continue
            before = dict(watch.sent) if type_url == T.CLUSTER else None
            plan = self._send_type(view, watch, only=only, force=force, event_time=event_time)
            if plan is None:
                continue
            sent += 1
            if before is not None:
                # An updated EDS cluster is re-created by Envoy and waits for its assignment.
                force_eds = {
                    r.name for r in plan.resources if before.get(r.name) not in (None, r.version)
                }
        return sent

    def _send_type(
        self,
        view: Any,
        watch: TypeWatch,
        only: Any = None,
        force: set[str] | frozenset[str] = frozenset(),
        event_time: float | None = None,
        respond: bool = False,
    ) -> Plan | None:
        started = time.perf_counter()
        plan = watch.plan(view, self._nonce(), only=only, force=force, respond=respond)
        if plan is None:
            return None
        self.problems = view.problems
        watch.sent_event_time = event_time
        self._remember(plan)
        self.queue.put_nowait(self._response(plan))
        short = T.short(plan.type_url)
        M.PUSHES.labels(short).inc()
        M.PUSH_RESOURCES.labels(short).inc(len(plan.resources))
        M.PUSH_TIME.labels(short).observe(time.perf_counter() - started)
        return plan

    def _remember(self, plan: Plan) -> None:
        table = self.sent.setdefault(plan.type_url, {})
        if not self.delta and plan.type_url in T.FULL_STATE:
            table.clear()
        for res in plan.resources:
            table[res.name] = res
        for name in plan.removed:
            table.pop(name, None)

    def _forget_unsubscribed(self, watch: TypeWatch) -> None:
        table = self.sent.get(watch.type_url)
        if table and not watch.wildcard:
            for name in [n for n in table if n not in watch.subscribed]:
                del table[name]

    def _response(self, plan: Plan) -> Any:
        if self.delta:
            return discovery_pb2.DeltaDiscoveryResponse(
                system_version_info=plan.version,
                type_url=plan.type_url,
                nonce=plan.nonce,
                removed_resources=list(plan.removed),
                resources=[
                    discovery_pb2.Resource(name=r.name, version=r.version, resource=r.body)
                    for r in plan.resources
                ],
            )
        return discovery_pb2.DiscoveryResponse(
            version_info=plan.version,
            type_url=plan.type_url,
            nonce=plan.nonce,
            resources=[r.body for r in plan.resources],
        )

    def describe(self) -> dict[str, Any]:
        types = {}
        for type_url in T.PUSH_ORDER:
            watch = self.watches.get(type_url)
            types[T.short(type_url)] = (
                watch.describe() if watch is not None else {"status": "NOT REQUESTED"}
            )
        return {
            "proxy": self.node.id,
            "connection": self.id,
            "peer": self.peer,
            "protocol": "delta" if self.delta else "sotw",
            "connected_at": self.connected_at,
            "ready": self.ready,
            "first_ready_at": self.first_ready_at,
            "node": {
                "ip": self.node.ip,
                "namespace": self.node.namespace,
                "workload": self.node.workload,
                "identity": self.node.identity,
                "app_ports": [f"{a}:{b}" for a, b in self.node.app_ports],
                "admin_port": self.node.admin_port,
                "cluster": self.node.cluster,
            },
            "types": types,
            "problems": list(self.problems),
        }


class DiscoveryServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """The ADS servicer plus the registry of open connections."""

    def __init__(self, cache: ConfigCache, sync_timeout: float = 60.0) -> None:
        self.cache = cache
        self.connections: dict[str, Connection] = {}
        # Set once every registry has synced: a proxy must not ACK (and report ready on) a
        # config built from half-loaded registries. After ``sync_timeout`` serve anyway.
        self.serving = asyncio.Event()
        self.sync_timeout = sync_timeout
        self._redirect_views: cachetools.LRUCache = cachetools.LRUCache(maxsize=1024)

    def cache_view(self, conn: Connection) -> Any:
        view = self.cache.view(conn.node)
        if conn.node.interception == interception.REDIRECT:
            return self._redirect_view(conn.node, view)
        return view

    def _redirect_view(self, node: ProxyNode, view: ProxyView) -> ProxyView:
        """The same config with interception listeners (built once per listener version)."""
        key = (node.view_key, view.version(T.LISTENER), view.version(T.CLUSTER))
        found = self._redirect_views.get(key)
        if found is not None:
            return found
        explicit = {}
        for name, res in view.get(T.LISTENER).items():
            listener = listener_pb2.Listener()
            res.body.Unpack(listener)
            explicit[name] = listener
        built, problems = interception.redirect_listeners(
            node, explicit, self.cache.services().values()
        )
        blackhole = make_resource(interception.BLACKHOLE, interception.blackhole_cluster())
        found = ProxyView(
            {
                T.CLUSTER: {**view.get(T.CLUSTER), blackhole.name: blackhole},
                T.ENDPOINT: view.get(T.ENDPOINT),
                T.LISTENER: {lst.name: make_resource(lst.name, lst) for lst in built},
                T.ROUTE: view.get(T.ROUTE),
            },
            [*view.problems, *problems],
            shared_digests={
                T.CLUSTER: digest(
                    [("", view.version(T.CLUSTER)), (blackhole.name, blackhole.version)]
                ),
                T.ENDPOINT: view.version(T.ENDPOINT),
            },
        )
        self._redirect_views[key] = found
        return found

    # -- connection registry ----------------------------------------------------------------
    def _open(self, node_proto: Any, delta: bool, peer: str) -> Connection:
        conn = Connection(self, from_proto(node_proto), delta, peer)
        self.connections[conn.id] = conn
        M.CONNECTED.labels("delta" if delta else "sotw").inc()
        log.info("proxy %s connected (%s, %s)", conn.node.id, "delta" if delta else "sotw", peer)
        return conn

    def _close(self, conn: Connection) -> None:
        if self.connections.pop(conn.id, None) is not None:
            M.CONNECTED.labels("delta" if conn.delta else "sotw").dec()
            log.info("proxy %s disconnected", conn.node.id)

    def find(self, proxy: str) -> Connection | None:
        """The newest connection whose node id (or connection id) is ``proxy``."""
        matches = [c for c in self.connections.values() if proxy in (c.node.id, c.id)]
        return max(matches, key=lambda c: c.connected_at) if matches else None

    def push(self, change: CacheChange | None, event_time: float | None = None) -> int:
        """Push to every connection at once (benchmarks, tests); see :meth:`push_all`."""
        total = 0
        for conn in list(self.connections.values()):
            total += self._push_one(conn, change, event_time)
        return total

    async def push_all(
        self, change: CacheChange | None, event_time: float | None = None, batch: int = 32
    ) -> int:
        """Push to every connection, yielding to the loop between batches of proxies so that
        ACKs, new streams and the monitoring port keep flowing during a large push."""
        total = 0
        for i, conn in enumerate(list(self.connections.values()), 1):
            if conn.id in self.connections:
                total += self._push_one(conn, change, event_time)
            if i % batch == 0:
                await asyncio.sleep(0)
        return total

    @staticmethod
    def _push_one(conn: Connection, change: CacheChange | None, event_time: float | None) -> int:
        try:
            return conn.push(change, event_time)
        except Exception:
            log.exception("push to %s failed", conn.node.id)
            return 0

    # -- gRPC -------------------------------------------------------------------------------
    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        async for response in self._stream(request_iterator, context, delta=False):
            yield response

    async def DeltaAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
        async for response in self._stream(request_iterator, context, delta=True):
            yield response

    async def _stream(
        self, request_iterator: AsyncIterator[Any], context: Any, delta: bool
    ) -> AsyncIterator[Any]:
        holder: dict[str, Connection] = {}
        outbox: asyncio.Queue[Any] = asyncio.Queue()
        done = object()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    conn = holder.get("conn")
                    if conn is None:
                        conn = self._open(request.node, delta, context.peer())
                        conn.queue = outbox
                        holder["conn"] = conn
                    conn.on_request(request)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Grpc would report only "unknown error"; the log keeps the cause.
                log.exception("ADS stream from %s failed", context.peer())
                raise
            finally:
                outbox.put_nowait(done)

        if not self.serving.is_set():
            try:
                await asyncio.wait_for(self.serving.wait(), self.sync_timeout)
            except TimeoutError:
                log.warning(
                    "registries not synced after %.0fs; serving %s anyway",
                    self.sync_timeout,
                    context.peer(),
                )
        reader = asyncio.create_task(read())
        try:
            while True:
                item = await outbox.get()
                if item is done:
                    break
                yield item
            if reader.done() and reader.exception() is not None:
                raise reader.exception()  # type: ignore[misc]
        finally:
            reader.cancel()
            conn = holder.get("conn")
            if conn is not None:
                self._close(conn)
