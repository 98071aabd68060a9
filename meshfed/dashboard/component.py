"""The dashboard as a hub component: a web page on the monitoring port, updated live.

Routes (on the hub's monitoring port, beside ``/debug/*``):

- ``GET /dashboard``: the page (plain HTML, CSS and JavaScript, no build step);
- ``GET /dashboard/static/<name>``: its assets, read once from the package's ``static/``
  folder; only the files shipped there are served (a name is a key, never a path), so there
  is no CDN and no file system walk;
- ``GET /dashboard/api/state``: the document the page draws (:func:`~.state.build_state`);
- ``GET /dashboard/events``: the same document as server-sent events, sent again whenever it
  changes.

Live updates: a registry change wakes the publisher at once (it subscribes to the aggregate);
what has no event of its own (a proxy's ACK or NACK, Mixer's counters) is picked up by polling
every :data:`POLL_S`. One publisher builds the document for every open stream, and only while
one is open, so the cost does not grow with the number of browsers; streams are bounded by
:data:`MAX_STREAMS`. When the monitoring server stops, every stream ends at once.

Mixer's Report path feeds the service graph through :class:`~.graph.ServiceGraph`, added as a
report observer of Mixer's dispatcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from importlib.metadata import PackageNotFoundError, version
from importlib.resources import files
from typing import Any

from aiohttp import web

from meshfed.core.component import HubContext
from meshfed.dashboard.graph import ServiceGraph
from meshfed.dashboard.state import LastEvents, build_state, mixer_state, rule_hits
from meshfed.registry.events import ChangeEvent

log = logging.getLogger("meshfed.dashboard")

POLL_S = 1.0
SETTLE_S = 0.05  # a burst of registry events costs one rebuild
KEEPALIVE_S = 15.0
MAX_STREAMS = 32
RETRY_MS = 1000  # how soon a browser reconnects a dropped stream

CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}


def _read_assets() -> dict[str, tuple[bytes, str]]:
    assets = {}
    for entry in (files("meshfed.dashboard") / "static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in CONTENT_TYPES:
            assets[entry.name] = (entry.read_bytes(), CONTENT_TYPES[suffix])
    return assets


def _version() -> str:
    try:
        return version("meshfed")
    except PackageNotFoundError:
        return "unknown"


class Dashboard:
    """The dashboard (``HubComponent``). ``pilot`` and ``mixer`` are the hub's components, or
    None when the hub runs without them (their panels then say so)."""

    def __init__(self, pilot: Any | None = None, mixer: Any | None = None) -> None:
        self.pilot = pilot
        self.mixer = mixer
        self.graph = ServiceGraph()
        self.last_events = LastEvents()
        self._hub: HubContext | None = None
        self._assets: dict[str, tuple[bytes, str]] = {}
        self._version = "unknown"
        self._document = ""  # the last document published, as JSON text
        self._generation = 0
        self._published = asyncio.Condition()
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._streams = 0
        self._task: asyncio.Task[None] | None = None

    # -- hub component ----------------------------------------------------------------------
    async def start(self, hub: HubContext) -> None:
        self._hub = hub
        self._assets = await asyncio.to_thread(_read_assets)
        self._version = await asyncio.to_thread(_version)
        hub.aggregate.subscribe(self._registry_changed)
        hub.aggregate.subscribe_status(self._wake.set)
        monitoring = getattr(hub, "monitoring", None)
        if monitoring is not None:
            monitoring.on_stop(self._closing.set)
        dispatcher = getattr(self.mixer, "dispatcher", None)
        if dispatcher is not None:
            dispatcher.report_observers.append(self.graph.observe)
        hub.supervisor.spawn("dashboard publisher", self._publish_loop)

    async def stop(self) -> None:
        self._closing.set()
        self._wake.set()
        dispatcher = getattr(self.mixer, "dispatcher", None)
        if dispatcher is not None and self.graph.observe in dispatcher.report_observers:
            dispatcher.report_observers.remove(self.graph.observe)
        if self._hub is not None:
            await self._hub.supervisor.retire("dashboard publisher", grace=2.0)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/dashboard", self._page),
            web.get("/dashboard/", self._page),
            web.get("/dashboard/static/{name}", self._asset),
            web.get("/dashboard/api/state", self._state),
            web.get("/dashboard/events", self._events),
        ]

    def not_ready(self) -> list[str]:
        return []

    # -- the document -----------------------------------------------------------------------
    def _registry_changed(self, event: ChangeEvent) -> None:
        if self._hub is not None:
            self.last_events.record(event, self._hub.aggregate)
        self._wake.set()

    def document(self) -> dict[str, Any]:
        hub = self._hub
        if hub is None:
            raise RuntimeError("the dashboard has not started")
        adapters = getattr(hub, "adapters", {})
        monitoring = getattr(hub, "monitoring", None)
        discovery = getattr(self.pilot, "discovery", None)
        proxies: list[dict[str, Any]] = []
        if discovery is not None:
            from meshfed.pilot.status import syncz

            proxies = syncz(discovery)["proxies"]
        mixer = None
        if self.mixer is not None:
            from meshfed.mixer.runtime import metrics

            mixer = mixer_state(
                self.mixer, rule_hits(metrics.RULE_MATCHES), rule_hits(metrics.RULE_ERRORS)
            )
        return build_state(
            hub.aggregate,
            member_details={name: a.describe() for name, a in adapters.items()},
            last_events=self.last_events,
            proxies=proxies,
            mixer=mixer,
            graph=self.graph if self.mixer is not None else None,
            readiness=monitoring.readiness().body() if monitoring is not None else None,
            version=self._version,
        )

    async def _publish_loop(self) -> None:
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_S)
            await asyncio.sleep(SETTLE_S)
            self._wake.clear()
            if not self._streams:
                continue
            text = json.dumps(self.document(), separators=(",", ":"), default=str)
            if text != self._document:
                async with self._published:
                    self._document = text
                    self._generation += 1
                    self._published.notify_all()

    # -- handlers ---------------------------------------------------------------------------
    async def _page(self, request: web.Request) -> web.Response:
        return self._serve("index.html")

    async def _asset(self, request: web.Request) -> web.Response:
        return self._serve(request.match_info["name"])

    def _serve(self, name: str) -> web.Response:
        found = self._assets.get(name)
        if found is None:
            return web.json_response({"error": f"no dashboard asset {name!r}"}, status=404)
        body, content_type = found
        return web.Response(
            body=body,
            content_type=content_type,
            charset="utf-8",
            headers={"Cache-Control": "no-cache"},
        )

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(self.document(), dumps=lambda d: json.dumps(d, default=str))

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if self._streams >= MAX_STREAMS:
            return web.json_response(
                {"error": f"too many dashboard streams (at most {MAX_STREAMS})"}, status=503
            )
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        self._streams += 1
        try:
            await response.prepare(request)
            await response.write(f"retry: {RETRY_MS}\n\n".encode())
            # The first document is built for this stream, so a new page never waits a poll.
            text = json.dumps(self.document(), separators=(",", ":"), default=str)
            generation = self._generation
            await self._send(response, text)
            while not self._closing.is_set():
                changed = await self._next(generation)
                if self._closing.is_set():
                    break
                if changed is None:
                    await response.write(b": keepalive\n\n")
                    continue
                generation, fresh = changed
                if fresh != text:
                    text = fresh
                    await self._send(response, text)
        except ConnectionResetError:
            pass  # the browser went away
        finally:
            self._streams -= 1
        return response

    @staticmethod
    async def _send(response: web.StreamResponse, text: str) -> None:
        await response.write(f"event: state\ndata: {text}\n\n".encode())

    async def _next(self, generation: int) -> tuple[int, str] | None:
        """The next published document after ``generation``; None after the keep-alive time
        (or when the server is closing)."""
        closing = asyncio.ensure_future(self._closing.wait())
        published = asyncio.ensure_future(self._wait_published(generation))
        try:
            await asyncio.wait(
                {closing, published}, timeout=KEEPALIVE_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (closing, published):
                task.cancel()
        if published.done() and not published.cancelled():
            return published.result()
        return None

    async def _wait_published(self, generation: int) -> tuple[int, str]:
        async with self._published:
            await self._published.wait_for(lambda: self._generation != generation)
            return self._generation, self._document
