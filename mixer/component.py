"""Mixer as a hub component: config in, a ``grpc.aio`` Mixer service and ``/debug/mixerz`` out.

Enabled by the mesh config::

    spec:
      mixer:
        enabled: true
        listen: 127.0.0.1:9091          # the Mixer gRPC port (Check, Report, gRPC health)
        configPaths: [mixer/]           # YAML files / folders of config.istio.io/v1alpha2
        handlerTimeout: 1s              # bound of every handler call
        failOpen: false                 # a failed check handler denies (see runtime.dispatch)
        defaultConfigNamespace: istio-system  # rules here apply to every request
        kubernetes: true                # also read the CRDs of each kubernetes registry

With the mesh config's ``spec.tracing`` (passed as ``tracing``), each Check and each reported
request is a span in the request's trace (:mod:`meshfed.mixer.tracing`), exported to the
collector from the SDK's own thread; ``stop()`` flushes them.

Every change of the config (a file, a CRD) rebuilds the snapshot off the event loop, builds its
handlers, and only then swaps it in (see :mod:`meshfed.mixer.runtime.snapshot`). Problems --
the parsers', the compiler's, handler builds -- are logged, shown by ``/debug/mixerz`` and
counted in ``meshfed_mixer_config_errors``; the last good version of each object keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import grpc
import prometheus_client
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from meshfed.core.resources import ConfigError
from meshfed.core.tracing import TracingSettings
from meshfed.mixer.api.service import SERVICE, add_mixer_servicer
from meshfed.mixer.attributes.enrich import AddressIndex, Enricher
from meshfed.mixer.config.compile import compile_config, describe
from meshfed.mixer.config.parse import MixerObject
from meshfed.mixer.config.store import errors_of, objects_of, watched_config
from meshfed.mixer.handlers.api import HandlerKind, load_kinds
from meshfed.mixer.runtime import metrics
from meshfed.mixer.runtime.dispatch import Dispatcher, Options
from meshfed.mixer.runtime.snapshot import EMPTY, Snapshot, build_snapshot, retire
from meshfed.mixer.server import MixerService
from meshfed.mixer.settings import MixerSettings
from meshfed.mixer.tracing import MixerTracing

log = logging.getLogger("meshfed.mixer")


class Mixer:
    """The Mixer component (``HubComponent``: start(hub), stop(), routes(), not_ready())."""

    def __init__(
        self,
        settings: MixerSettings,
        kinds: Mapping[str, HandlerKind] | None = None,
        index: AddressIndex | None = None,
        handler_metrics: prometheus_client.CollectorRegistry | None = None,
        tracing: TracingSettings | None = None,
    ) -> None:
        self.settings = settings
        self.tracing_settings = tracing
        self.tracing = MixerTracing(None)
        self.kinds = dict(load_kinds() if kinds is None else kinds)
        self.index = index
        self.handler_metrics = handler_metrics or prometheus_client.CollectorRegistry()
        self.files = watched_config(settings.config_paths, self.kinds, self._changed)
        self.kube_stores: list[Any] = []
        self.snapshot = Snapshot(0, EMPTY, {}, {})
        self.dispatcher = Dispatcher(
            self.snapshot,
            None,
            Options(handler_timeout=settings.handler_timeout, fail_open=settings.fail_open),
        )
        self.port = 0
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._tasks: list[asyncio.Task[Any]] = []
        self._dirty = asyncio.Event()
        self._activated = asyncio.Event()
        self._last_good: Mapping[Any, MixerObject] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self, hub: Any = None) -> None:
        if hub is not None:
            self.index = self.index or hub.aggregate
            self.handler_metrics = hub.metrics
            if self.settings.kubernetes:
                self._add_kube_stores(hub.mesh)
        if self.index is not None:
            self.dispatcher.enricher = Enricher(self.index)
        self.tracing = MixerTracing.from_settings(self.tracing_settings)
        self._server = grpc.aio.server()
        add_mixer_servicer(MixerService(self.dispatcher, self.tracing), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        for service in ("", SERVICE):
            await self._health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port = self._server.add_insecure_port(self.settings.listen)
        if self.port == 0:
            raise OSError(f"mixer: cannot listen on {self.settings.listen}")
        await self._server.start()
        log.info("mixer listening on %s (port %d)", self.settings.listen, self.port)
        # the first load happens here, so start() returns with a config in force
        self.files.commit(await asyncio.to_thread(self.files.read))
        await self._rebuild()
        self._tasks.append(asyncio.create_task(self._watch_files()))
        self._tasks.append(asyncio.create_task(self._rebuild_loop()))
        for store in self.kube_stores:
            self._tasks.append(asyncio.create_task(store.run()))

    def _add_kube_stores(self, mesh: Any) -> None:
        from meshfed.mixer.config.kube import kube_store

        for reg in getattr(mesh, "registries", ()):
            if reg.kind == "kubernetes" and reg.params.get("configStore", True):
                store = kube_store({**reg.params, "name": reg.name}, self.kinds)
                store.mixer_subscribers.append(self._changed)
                self.kube_stores.append(store)

    async def _watch_files(self) -> None:
        # WatchedFiles.watch reloads once more at start (harmless: same content).
        with contextlib.suppress(asyncio.CancelledError):
            await self.files.watch()

    async def stop(self) -> None:
        self.files.stop()
        for store in self.kube_stores:
            store.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.stop(grace=1.0)
        # the last spans still go out (the exporter flushes in its own thread)
        await asyncio.to_thread(self.tracing.shutdown)
        for ref, handler in self.snapshot.handlers.items():
            try:
                await handler.close()
            except Exception as exc:
                log.warning("handler %s: close failed: %s", ref, exc)

    # -- config ----------------------------------------------------------------------------
    def _changed(self) -> None:
        self._dirty.set()

    async def _rebuild_loop(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(0.05)  # coalesce a burst of file events into one rebuild
            try:
                await self._rebuild()
            except Exception:  # never let a rebuild bug stop config updates
                log.exception("mixer config rebuild failed; the current config keeps serving")

    def objects(self) -> list[MixerObject]:
        out = objects_of(self.files, self._last_good)
        for store in self.kube_stores:
            out.extend(store.objects)
        return out

    def source_errors(self) -> list[ConfigError]:
        out = errors_of(self.files)
        for store in self.kube_stores:
            out.extend(store.errors)
        return out

    async def _rebuild(self) -> None:
        self._dirty.clear()
        objects = self.objects()
        compiled = await asyncio.to_thread(
            compile_config,
            objects,
            self.kinds,
            default_namespace=self.settings.default_namespace,
            last_good=self._last_good,
        )
        old = self.snapshot
        new = await build_snapshot(compiled, self.kinds, old, self.handler_metrics, old.version + 1)
        self._last_good = compiled.good
        self.snapshot = new
        self.dispatcher.snapshot = new  # requests that started earlier keep `old`
        problems = self.problems()
        for problem in compiled.errors + new.problems:
            log.error("mixer config: %s", problem)
        metrics.CONFIG_ERRORS.set(len(problems))
        metrics.CONFIG_RULES.set(len(compiled.rules))
        metrics.CONFIG_LOADS.inc()
        task = asyncio.create_task(retire(old, new))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        if not self._activated.is_set():
            self._activated.set()
            for service in ("", SERVICE):
                await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "mixer config v%d: %d rules, %d handlers, %d problems",
            new.version,
            len(compiled.rules),
            len(new.handlers),
            len(problems),
        )

    def problems(self) -> list[ConfigError]:
        snap = self.snapshot
        return [*self.source_errors(), *snap.config.errors, *snap.problems]

    async def reload(self) -> None:
        """Re-read every file and rebuild now (tests, and a SIGHUP-style reload)."""
        self.files.commit(await asyncio.to_thread(self.files.read))
        await self._rebuild()

    # -- hub component ---------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        snap = self.snapshot
        body = describe(snap.config, [*self.source_errors(), *snap.problems])
        body["version"] = snap.version
        body["listen"] = self.settings.listen
        body["port"] = self.port
        body["handlerKinds"] = sorted(self.kinds)
        body["failPolicy"] = "open" if self.settings.fail_open else "closed"
        return body

    async def _mixerz(self, request: web.Request) -> web.Response:
        return web.json_response(self.describe())

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/debug/mixerz", self._mixerz)]

    def not_ready(self) -> list[str]:
        reasons = [] if self._activated.is_set() else ["mixer has not loaded its config"]
        reasons += [
            f"mixer config store {s.name} has not synced" for s in self.kube_stores if not s.synced
        ]
        return reasons
