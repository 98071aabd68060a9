"""The one monitoring HTTP server: ``/metrics``, ``/healthz/ready`` and the parts' ``/debug/*``.

Why one: the hub, the CA and the node agent each need the same port with the same answers, and
three copies drifted (each read aiohttp's private socket list to learn the bound port). Here the
bound addresses come from aiohttp's public ``AppRunner.addresses``.

What it serves:

- ``/metrics``: Prometheus text of the process-wide registry plus any registries handed in.
- ``/healthz/ready``: 200 ``{"ready": true, ...}`` when no readiness source reports a reason,
  else 503; the body lists ``not_ready`` (why it is not ready) and ``degraded`` (what is failing
  or restarting while the process still serves, e.g. a supervised store), so an operator sees
  both from one request.
- ``/healthz/live``: 200 while the process's event loop answers requests (a liveness probe's
  question: restart only a process that no longer serves, never one that is merely not ready).
- whatever routes the parts register with :meth:`MonitoringServer.add_routes` before start.

A part whose handler streams (server-sent events) registers :meth:`MonitoringServer.on_stop`
to end its streams: aiohttp would otherwise wait up to its shutdown timeout (60 s) for them.

Hostile input: a malformed HTTP request (garbage on the port, a broken header) logs one bounded
line at warning level, never a traceback; at most :data:`BAD_REQUEST_LOGS_PER_MINUTE` such lines a
minute, then one line saying how many were left out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

log = logging.getLogger("meshfed.core.monitoring")

BAD_REQUEST_LOGS_PER_MINUTE = 20
MAX_LOGGED_CHARS = 200

NotReady = Callable[[], list[str]]
Degraded = Callable[[], list[str]]


def split_host_port(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) as (host, port); ValueError when malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port with a port 0-65535, got {address!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class _RequestLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's request-handler logger: malformed requests become one bounded line."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})
        self._window = 0.0
        self._logged = 0
        self._skipped = 0

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            self._bad_request(msg, args, exc)
            return
        # Anything else is a bug in a handler of ours: keep its traceback for the log.
        self.logger.error(msg, *args, exc_info=exc if exc is not None else True)

    def _bad_request(self, msg: object, args: tuple[object, ...], exc: HttpProcessingError) -> None:
        now = time.monotonic()
        if now - self._window >= 60:
            if self._skipped:
                self.logger.warning("%d more malformed requests not logged", self._skipped)
            self._window, self._logged, self._skipped = now, 0, 0
        if self._logged >= BAD_REQUEST_LOGS_PER_MINUTE:
            self._skipped += 1
            return
        self._logged += 1
        detail = " ".join(f"{exc.code} {exc.message}".split())
        if len(detail) > MAX_LOGGED_CHARS:
            detail = detail[:MAX_LOGGED_CHARS] + "..."
        self.logger.warning(f"{msg}: malformed request: %s", *args, detail)


@attrs.frozen
class Readiness:
    ready: bool
    not_ready: list[str]
    degraded: list[str]

    def body(self) -> dict[str, Any]:
        return {"ready": self.ready, "not_ready": self.not_ready, "degraded": self.degraded}


class MonitoringServer:
    """An aiohttp server for the monitoring endpoints; a :class:`~core.lifecycle.Component`."""

    def __init__(
        self,
        address: str,
        *,
        name: str = "meshfed",
        metrics: Iterable[CollectorRegistry] = (),
    ) -> None:
        self.address = address
        self.name = name
        self._metrics = [REGISTRY, *metrics]
        self._routes: list[web.RouteDef] = []
        self._not_ready: list[NotReady] = []
        self._degraded: list[Degraded] = []
        self._on_stop: list[Callable[[], None]] = []
        self._runner: web.AppRunner | None = None

    # -- what the parts register ------------------------------------------------------------
    def add_routes(self, routes: Iterable[web.RouteDef]) -> None:
        if self._runner is not None:
            raise RuntimeError("routes must be added before the monitoring server starts")
        self._routes.extend(routes)

    def on_stop(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the server starts stopping, before it waits for handlers."""
        self._on_stop.append(callback)

    def add_readiness(
        self, not_ready: NotReady | None = None, degraded: Degraded | None = None
    ) -> None:
        """Register functions returning reasons (empty when all is well)."""
        if not_ready is not None:
            self._not_ready.append(not_ready)
        if degraded is not None:
            self._degraded.append(degraded)

    def readiness(self) -> Readiness:
        not_ready = [r for source in self._not_ready for r in source()]
        degraded = [r for source in self._degraded for r in source()]
        return Readiness(not not_ready, not_ready, degraded)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        host, port = split_host_port(self.address)
        app = web.Application()
        app.add_routes(
            [
                web.get("/metrics", self._serve_metrics),
                web.get("/healthz/ready", self._serve_ready),
                web.get("/healthz/live", self._serve_live),
                *self._routes,
            ]
        )
        runner = web.AppRunner(
            app, access_log=None, logger=_RequestLogger(logging.getLogger(f"{self.name}.http"))
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        log.info("%s monitoring on http://%s", self.name, self.bound)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        for callback in self._on_stop:
            callback()
        if runner is not None:
            await runner.cleanup()

    @property
    def addresses(self) -> Sequence[tuple[str, int]]:
        """The bound (host, port) pairs; empty before start."""
        if self._runner is None:
            return []
        return [(str(a[0]), int(a[1])) for a in self._runner.addresses]

    @property
    def port(self) -> int:
        addresses = self.addresses
        return addresses[0][1] if addresses else 0

    @property
    def bound(self) -> str:
        """``host:port`` as bound (the real port when 0 was asked for)."""
        if not self.addresses:
            return ""
        host, port = self.addresses[0]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    # -- handlers ----------------------------------------------------------------------------
    async def _serve_metrics(self, request: web.Request) -> web.Response:
        body = b"".join(generate_latest(r) for r in self._metrics)
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    async def _serve_live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def _serve_ready(self, request: web.Request) -> web.Response:
        state = self.readiness()
        return web.json_response(state.body(), status=200 if state.ready else 503)
