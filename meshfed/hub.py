"""The hub process (``meshfed up``): registries in, merged view and debug endpoints out.

It builds the aggregate registry from the mesh config, runs one supervised task per registry
adapter, and serves the monitoring port: ``/debug/registryz`` (the merged view, each endpoint with
its source registry, plus members and conflicts), ``/healthz/ready`` (200 only after every
registry has synced once and every component reports ready) and Prometheus ``/metrics``.

Adapters are found through the ``meshfed.registries`` entry-point group, so a registry kind is
added with ``pip install``. An adapter that crashes never takes the hub down: its member is marked
degraded, its last state stays in force, and it is restarted with jittered backoff.

Components (Pilot's discovery server, later Mixer and the CA) plug in through
:class:`HubComponent`: they start after the registries, add their own routes and readiness checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Protocol

import attrs
import tenacity
from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily

from meshfed.config import MeshConfig, RegistryConfig, split_address
from meshfed.registry.aggregate import AggregateRegistry, Member
from meshfed.registry.events import ChangeEvent
from meshfed.registryview import registry_view

log = logging.getLogger("meshfed.hub")

REGISTRY_EVENTS = Counter(
    "meshfed_registry_events_total", "Change events emitted by the aggregate registry"
)
ADAPTER_RESTARTS = Counter(
    "meshfed_registry_adapter_restarts_total",
    "Registry adapters restarted after a crash",
    ["registry"],
)


class HubComponent(Protocol):
    """A part of the control plane that runs inside the hub."""

    async def start(self, hub: Hub) -> None: ...

    async def stop(self) -> None: ...

    def routes(self) -> list[web.RouteDef]: ...

    def not_ready(self) -> list[str]: ...


class UnknownRegistryKind(Exception):
    pass


class RegistryConfigError(Exception):
    """A configured registry cannot be created; the message names the file and the entry."""


def adapter_factory(kind: str) -> Callable[..., Any]:
    found = {ep.name: ep for ep in entry_points(group="meshfed.registries")}
    if kind not in found:
        raise UnknownRegistryKind(
            f"unknown registry kind {kind!r} (installed: {', '.join(sorted(found)) or 'none'})"
        )
    return found[kind].load()


def create_adapter(mesh: MeshConfig, reg: RegistryConfig, member: Member) -> Any:
    """The adapter for one ``spec.registries`` entry; raises the adapter's own parameter
    error (or :class:`UnknownRegistryKind`). Constructing one does no I/O: it is also how
    ``meshfed validate`` checks registry parameters exactly as the hub will."""
    params = dict(reg.params)
    if reg.kind == "kubernetes":  # the control plane's own namespace comes from the mesh
        params.setdefault("systemNamespace", mesh.system_namespace)
    return adapter_factory(reg.kind)(member, params, mesh.trust_domain)


class AggregateCollector:
    """Prometheus collector reading the aggregate at scrape time (no state to keep in sync)."""

    def __init__(self, aggregate: AggregateRegistry) -> None:
        self.aggregate = aggregate

    def collect(self):  # type: ignore[no-untyped-def]
        agg = self.aggregate
        services = agg.services()
        yield GaugeMetricFamily(
            "meshfed_registry_services", "Services in the merged view", len(services)
        )
        yield GaugeMetricFamily(
            "meshfed_registry_endpoints",
            "Endpoints in the merged view",
            sum(len(agg.endpoints(h)) for h in services),
        )
        yield GaugeMetricFamily(
            "meshfed_registry_conflicts",
            "Fields on which registries disagree about a service (decided by precedence)",
            len(agg.conflicts()),
        )
        synced = GaugeMetricFamily(
            "meshfed_registry_synced", "1 once the registry has synced", labels=["registry", "kind"]
        )
        degraded = GaugeMetricFamily(
            "meshfed_registry_degraded",
            "1 while the registry cannot be reached (last state kept)",
            labels=["registry", "kind"],
        )
        for member in agg.members:
            synced.add_metric([member.name, member.kind], 1 if member.synced else 0)
            degraded.add_metric([member.name, member.kind], 1 if member.degraded else 0)
        yield synced
        yield degraded


@attrs.define
class Hub:
    mesh: MeshConfig
    components: list[HubComponent] = attrs.field(factory=list)
    aggregate: AggregateRegistry = attrs.field(factory=AggregateRegistry)
    adapters: dict[str, Any] = attrs.field(factory=dict)
    metrics: CollectorRegistry = attrs.field(factory=CollectorRegistry)
    _tasks: list[asyncio.Task[None]] = attrs.field(factory=list)
    _runner: web.AppRunner | None = None
    monitoring_port: int = 0

    def __attrs_post_init__(self) -> None:
        self.metrics.register(AggregateCollector(self.aggregate))  # type: ignore[arg-type]
        self.aggregate.subscribe(self._count_event)

    @staticmethod
    def _count_event(event: ChangeEvent) -> None:
        REGISTRY_EVENTS.inc()

    async def start(self) -> None:
        for index, reg in enumerate(self.mesh.registries):
            member = self.aggregate.add_member(reg.name, reg.kind)
            try:
                self.adapters[reg.name] = create_adapter(self.mesh, reg, member)
            except Exception as exc:  # an adapter's own parameter check, or an unknown kind
                raise RegistryConfigError(
                    f"{self.mesh.source}: MeshConfig: spec.registries[{index}] "
                    f"({reg.name}, kind {reg.kind}): {exc}"
                ) from exc
        for name, adapter in self.adapters.items():
            member = next(m for m in self.aggregate.members if m.name == name)
            self._tasks.append(asyncio.create_task(self._supervise(adapter, member)))
        for component in self.components:
            await component.start(self)
        await self._serve_monitoring()

    async def _supervise(self, adapter: Any, member: Member) -> None:
        """Run an adapter forever; a crash degrades its member and restarts it with backoff."""
        retrying = tenacity.AsyncRetrying(
            wait=tenacity.wait_random_exponential(multiplier=0.5, max=30),
            retry=tenacity.retry_if_exception_type(Exception),
            before_sleep=lambda state: log.error(
                "registry %s failed (%s); restarting", member.name, state.outcome.exception()
            ),
        )
        async for attempt in retrying:
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    ADAPTER_RESTARTS.labels(member.name).inc()
                try:
                    await adapter.run()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    member.set_degraded(f"adapter crashed: {exc}")
                    raise

    async def _serve_monitoring(self) -> None:
        app = web.Application()
        app.add_routes(
            [
                web.get("/debug/registryz", self._registryz),
                web.get("/healthz/ready", self._ready),
                web.get("/metrics", self._metrics),
            ]
        )
        for component in self.components:
            app.add_routes(component.routes())
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, port = split_address(self.mesh.monitoring_address)
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.monitoring_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("monitoring on http://%s:%d", host, self.monitoring_port)

    def not_ready(self) -> list[str]:
        reasons = [
            f"registry {m.name} has not synced" for m in self.aggregate.members if not m.synced
        ]
        for component in self.components:
            reasons.extend(component.not_ready())
        return reasons

    async def _ready(self, request: web.Request) -> web.Response:
        reasons = self.not_ready()
        degraded = [
            f"registry {m.name} degraded: {m.degraded}"
            for m in self.aggregate.members
            if m.degraded
        ]
        body = {"ready": not reasons, "not_ready": reasons, "degraded": degraded}
        return web.json_response(body, status=503 if reasons else 200)

    async def _registryz(self, request: web.Request) -> web.Response:
        details = {name: _describe(adapter) for name, adapter in self.adapters.items()}
        return web.json_response(registry_view(self.aggregate, details, request.query.get("host")))

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(REGISTRY) + generate_latest(self.metrics)
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    async def stop(self) -> None:
        for component in reversed(self.components):
            await component.stop()
        for adapter in self.adapters.values():
            with contextlib.suppress(Exception):
                await adapter.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()


def _describe(adapter: Any) -> dict[str, Any]:
    describe = getattr(adapter, "describe", None)
    return describe() if describe else {}


def default_components(mesh: MeshConfig) -> list[HubComponent]:
    """The components ``meshfed up`` runs beside the registries."""
    from meshfed.adapters.kubernetes.configstore import (
        kube_config_components,  # CRD config per cluster
    )
    from meshfed.nodeagent.registration_server import WorkloadRegistration
    from meshfed.pilot.server import (
        PilotServer,  # reads mesh.discovery_address and mesh.pilot at start
    )

    # Registration first: its member must exist before Pilot waits for every member to sync.
    return [WorkloadRegistration(), PilotServer(), *kube_config_components(mesh)]


async def run_hub(mesh: MeshConfig, stop: asyncio.Event) -> None:
    hub = Hub(mesh, default_components(mesh))
    await hub.start()
    try:
        await stop.wait()
    finally:
        await hub.stop()
