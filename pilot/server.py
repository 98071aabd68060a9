"""Pilot as a hub component: registry events in, debounced pushes out over ADS.

:class:`PilotServer` wires the aggregate registry to the shared :class:`~pilot.cache.ConfigCache`
through the debouncer, and serves :class:`~pilot.ads.DiscoveryServer` on ``grpc.aio``. It
implements the hub's component protocol (``start(hub)``, ``stop()``, ``routes()``,
``not_ready()``) and can also run on its own (tests, benchmarks) with an aggregate passed in.

Settings (the mesh config's ``pilot:`` section): ``debounceQuiet`` (seconds of quiet before a
push, default 0.1), ``debounceMax`` (longest a batch waits, default 1.0).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import grpc
from aiohttp import web
from envoy.service.discovery.v3 import ads_pb2_grpc

from pilot import metrics as M
from pilot.ads import DiscoveryServer
from pilot.cache import ConfigCache
from pilot.debounce import Batch, DebounceLoop
from registry.aggregate import AggregateRegistry
from registry.events import ChangeEvent

log = logging.getLogger("meshfed.pilot")

DEFAULT_QUIET = 0.1
DEFAULT_MAX_DELAY = 1.0


def debounce_settings(pilot_config: Mapping[str, Any]) -> tuple[float, float]:
    """(quiet, max delay) from a mesh config's ``pilot`` section; bad values fall back."""
    out = []
    for key, default in (("debounceQuiet", DEFAULT_QUIET), ("debounceMax", DEFAULT_MAX_DELAY)):
        raw = pilot_config.get(key, default)
        try:
            value = float(raw)
            if value < 0:
                raise ValueError
        except (TypeError, ValueError):
            log.error("pilot.%s=%r: expected seconds >= 0; using %s", key, raw, default)
            value = default
        out.append(value)
    return out[0], out[1]


class PilotServer:
    """The discovery server: cache + debounce + ADS, startable inside the hub or alone."""

    def __init__(
        self,
        aggregate: AggregateRegistry | None = None,
        address: str = "127.0.0.1:15010",
        quiet: float = DEFAULT_QUIET,
        max_delay: float = DEFAULT_MAX_DELAY,
    ) -> None:
        self.aggregate = aggregate
        self.address = address
        self.quiet = quiet
        self.max_delay = max_delay
        self.port = 0
        self.cache: ConfigCache | None = None
        self.discovery: DiscoveryServer | None = None
        self._grpc: grpc.aio.Server | None = None
        self._debounce: DebounceLoop | None = None
        self._subscribed = False
        self.pushes = 0

    async def start(self, hub: Any = None) -> None:
        if hub is not None:
            self.aggregate = hub.aggregate
            self.address = hub.mesh.discovery_address
            self.quiet, self.max_delay = debounce_settings(hub.mesh.pilot)
        if self.aggregate is None:
            raise ValueError("PilotServer needs an aggregate registry (or a hub)")
        # Built in full by _on_status once every registry has synced (now, if already so).
        self.cache = ConfigCache(self.aggregate)
        self.discovery = DiscoveryServer(self.cache)
        self._debounce = DebounceLoop(self._flush, self.quiet, self.max_delay)
        self._debounce.start()
        if not self._subscribed:
            # The aggregate has no unsubscribe; one subscription forwards to whichever loop runs.
            self.aggregate.subscribe(self._on_event)
            self.aggregate.subscribe_status(self._on_status)
            self._subscribed = True
        self._on_status()
        self._grpc = grpc.aio.server(
            options=[
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ]
        )
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self.discovery, self._grpc)
        self.port = self._grpc.add_insecure_port(self.address)
        if self.port == 0:
            raise OSError(f"pilot: cannot listen on {self.address}")
        await self._grpc.start()
        host = self.address.rpartition(":")[0]
        log.info(
            "discovery (ADS) on %s:%d, debounce %.3fs quiet / %.3fs max",
            host,
            self.port,
            self.quiet,
            self.max_delay,
        )

    def _on_status(self) -> None:
        discovery = self.discovery
        if discovery is None or discovery.serving.is_set() or not self.aggregate.synced:
            return
        assert self.cache is not None
        # Everything the registries loaded so far, without waiting for the debouncer.
        self.cache.rebuild()
        discovery.serving.set()
        log.info("registries synced: serving xDS")

    def _on_event(self, event: ChangeEvent) -> None:
        if self._debounce is not None:
            M.DEBOUNCED_EVENTS.inc()
            self._debounce.submit(event.hostnames)

    async def _flush(self, batch: Batch) -> None:
        assert self.cache is not None and self.discovery is not None
        M.DEBOUNCE.observe(batch.waited)
        started = time.perf_counter()
        change = self.cache.apply(batch.hostnames)
        M.BUILD_TIME.observe(time.perf_counter() - started)
        if not (change.services_changed or change.endpoint_names or change.cluster_names):
            return
        self.pushes += 1
        await self.discovery.push_all(change, batch.first_at)

    async def stop(self) -> None:
        if self._debounce is not None:
            await self._debounce.stop()
            self._debounce = None
        if self._grpc is not None:
            await self._grpc.stop(grace=0.5)
            self._grpc = None
        if self.discovery is not None:
            for conn in list(self.discovery.connections.values()):
                self.discovery._close(conn)

    def routes(self) -> list[web.RouteDef]:
        from pilot.status import routes

        return routes(lambda: self.discovery)

    def not_ready(self) -> list[str]:
        if self._grpc is None or self.discovery is None:
            return ["pilot: discovery server not started"]
        if not self.discovery.serving.is_set():
            return ["pilot: waiting for registries to sync before serving xDS"]
        return []
