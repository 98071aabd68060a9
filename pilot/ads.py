"""The Aggregated Discovery Service: state-of-the-world and delta xDS over ``grpc.aio``.

One :class:`Connection` per stream holds the proxy's node and a :class:`~pilot.watch.TypeWatch`
per type; all protocol decisions live there. This module only moves messages: it reads
requests, asks the watch what to send, turns plans into ``DiscoveryResponse`` /
``DeltaDiscoveryResponse`` and writes them in push order (clusters, endpoints, listeners,
routes).

Everything runs on the event loop; there are no locks because nothing here is shared with
another thread. A stream's writer drains its :class:`~pilot.push_queue.PushQueue`, which holds
at most one response per type (a newer one is merged in), so a slow proxy delays only itself
and never piles up stale responses. What each proxy should have is the view pipeline's answer
(:mod:`pilot.views`, through the cache); a NACK is logged within bounds
(:mod:`pilot.nacklog`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from meshfed.pilot import metrics as M
from meshfed.pilot import xds_types as T
from meshfed.pilot.cache import ConfigCache
from meshfed.pilot.nacklog import ERROR_LIMIT, NackLog, bounded
from meshfed.pilot.node import ProxyNode, from_proto
from meshfed.pilot.push_queue import PushQueue
from meshfed.pilot.resources import CacheChange, ProxyView, Resource
from meshfed.pilot.watch import Plan, RequestKind, Status, TypeWatch
from meshfed.pilot.wire import EncodedNames, Received

log = logging.getLogger("meshfed.pilot.ads")

_conn_ids = itertools.count(1)


def render(plan: Plan, delta: bool) -> Any:
    """The response message for ``plan`` on a delta or state-of-the-world stream."""
    if delta:
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


def new_outbox(delta: bool) -> PushQueue:
    """A stream's queue: state-of-the-world clusters and listeners are sent whole."""
    whole = frozenset() if delta else T.FULL_STATE
    return PushQueue(whole, lambda plan: render(plan, delta))


class Connection:
    """One proxy's ADS stream."""

    def __init__(
        self,
        server: DiscoveryServer,
        node: ProxyNode,
        delta: bool,
        peer: str,
        outbox: PushQueue | None = None,
    ) -> None:
        self.server = server
        self.node = node
        self.delta = delta
        self.peer = peer
        self.id = f"{node.id}-{next(_conn_ids)}"
        self.connected_at = time.time()
        self.watches: dict[str, TypeWatch] = {}
        self.outbox = outbox if outbox is not None else new_outbox(delta)
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
        self,
        request: discovery_pb2.DiscoveryRequest | discovery_pb2.DeltaDiscoveryRequest | Received,
    ) -> None:
        names_key = None
        if isinstance(request, Received):
            request, names_key = self._read(request)
        type_url = request.type_url
        watch = self.watch(type_url)
        error = request.error_detail.message if request.HasField("error_detail") else ""
        if error == "" and request.HasField("error_detail"):
            error = f"rejected (code {request.error_detail.code}, no message)"
        error = bounded(error, ERROR_LIMIT)  # the proxy chooses this text, and its length
        now = time.monotonic()
        event_time = watch.sent_event_time
        subscribed_before = watch.subscribed
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
                names_key=names_key,
            )
        if watch.subscribed is not subscribed_before:
            # Only subscription changes drop resources from the dump; pushes never pay for it.
            self._forget_unsubscribed(watch)
        short = T.short(type_url)
        if kind is RequestKind.NACK:
            M.NACKS.labels(short).inc()
            M.ISTIO_REJECTS.inc(1, short)
            self.server.nack_log.nack(
                self.node.id, short, watch.last_nack.version if watch.last_nack else "?", error
            )
        elif kind is RequestKind.ACK:
            if event_time is not None:
                M.CONVERGENCE.labels(short).observe(max(0.0, now - event_time))
                M.ISTIO_CONVERGENCE.observe(max(0.0, now - event_time))
                watch.sent_event_time = None
            if self.first_ready_at is None and self.ready:
                self.first_ready_at = time.time()
                log.info(
                    "proxy %s ACKed its first full config",
                    self.node.id,
                    extra={"proxy": self.node.id},
                )
        if names or kind is RequestKind.INITIAL:
            self._send_type(
                self.server.cache_view(self),
                watch,
                force=names - {"*"},
                respond=kind is RequestKind.INITIAL,
            )

    def _read(
        self, received: Received
    ) -> tuple[discovery_pb2.DiscoveryRequest, EncodedNames | None]:
        """The request, and its names as bytes shared with the watch when they repeat the
        ones it holds: then the names are not parsed at all (an ACK repeats its whole
        subscription, which at 50,000 services is 2.4 MB)."""
        for watch in self.watches.values():
            held = watch.names_key
            if isinstance(held, EncodedNames):
                message = received.repeating(held)
                if message is not None and message.type_url == watch.type_url:
                    return message, held
        return received.message, received.encoded_names()

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
                if change is not None and change.endpoints_only_at(self.node.ip):
                    only = change.endpoint_names
            elif change is not None and change.endpoints_only_at(self.node.ip):
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
        view: ProxyView,
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
        short = T.short(plan.type_url)
        if self.outbox.put(plan):
            M.PUSHES_MERGED.labels(short).inc()
        M.PUSHES.labels(short).inc()
        M.PUSH_RESOURCES.labels(short).inc(len(plan.resources))
        elapsed = time.perf_counter() - started
        M.PUSH_TIME.labels(short).observe(elapsed)
        M.count_push(short, plan.resources, elapsed)
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

    def take_responses(self) -> list[Any]:
        """Every pending response, in push order (tests and benchmarks read the stream so)."""
        return self.outbox.drain()

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
                "mixer_client": self.node.mixer_client,
                "mixer_status_port": self.node.mixer_status_port,
            },
            "types": types,
            "pending": sorted(T.short(t) for t in self.outbox.pending()),
            "merged_pushes": self.outbox.merged,
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
        self.nack_log = NackLog(log)

    def cache_view(self, conn: Connection) -> ProxyView:
        return self.cache.view(conn.node)

    # -- connection registry ----------------------------------------------------------------
    def _open(
        self, node_proto: Any, delta: bool, peer: str, outbox: PushQueue | None = None
    ) -> Connection:
        conn = Connection(self, from_proto(node_proto), delta, peer, outbox)
        self.connections[conn.id] = conn
        M.CONNECTED.labels("delta" if delta else "sotw").inc()
        log.info(
            "proxy %s connected (%s, %s)",
            conn.node.id,
            "delta" if delta else "sotw",
            peer,
            extra={"proxy": conn.node.id, "peer": peer},
        )
        return conn

    def _close(self, conn: Connection) -> None:
        if self.connections.pop(conn.id, None) is not None:
            M.CONNECTED.labels("delta" if conn.delta else "sotw").dec()
            log.info("proxy %s disconnected", conn.node.id, extra={"proxy": conn.node.id})

    def find(self, proxy: str) -> Connection | None:
        """The newest connection whose node id (or connection id) is ``proxy``; else, as
        istioctl accepts, whose ``workload.namespace`` or IP is ``proxy``."""
        conns = list(self.connections.values())
        matches = [c for c in conns if proxy in (c.node.id, c.id)]
        if not matches:
            matches = [
                c for c in conns if proxy in (f"{c.node.workload}.{c.node.namespace}", c.node.ip)
            ]
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
    ) -> None:
        await self._serve(request_iterator, context, delta=False)

    async def DeltaAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> None:
        await self._serve(request_iterator, context, delta=True)

    async def _serve(self, request_iterator: AsyncIterator[Any], context: Any, delta: bool) -> None:
        """Write the stream's responses with ``context.write`` rather than yielding them: gRPC's
        loop over a response generator keeps the last response alive until the next one, which
        is one whole response (often a full route table) held per idle connected proxy."""
        # Closed here, not whenever the collector finalizes it: closing unregisters the proxy.
        async with contextlib.aclosing(self._stream(request_iterator, context, delta)) as stream:
            async for response in stream:
                await context.write(response)
                response = None

    async def _stream(
        self, request_iterator: AsyncIterator[Any], context: Any, delta: bool
    ) -> AsyncGenerator[Any, None]:
        holder: dict[str, Connection] = {}
        outbox = new_outbox(delta)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    conn = holder.get("conn")
                    if conn is None:
                        first = request.message if isinstance(request, Received) else request
                        conn = self._open(first.node, delta, context.peer(), outbox)
                        holder["conn"] = conn
                    conn.on_request(request)
                    request = None  # nor the last request (an ACK can name every assignment)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Grpc would report only "unknown error"; the log keeps the cause.
                log.exception("ADS stream from %s failed", context.peer())
                raise
            finally:
                outbox.close()

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
                if item is None:
                    break
                yield item
                # Not kept while the stream idles: the last response (often a whole route
                # table) would stay alive once per connected proxy.
                item = None
            if reader.done() and reader.exception() is not None:
                raise reader.exception()  # type: ignore[misc]
        finally:
            reader.cancel()
            conn = holder.get("conn")
            if conn is not None:
                self._close(conn)
