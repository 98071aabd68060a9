"""The hub process (``meshfed up``): registries in, merged view and debug endpoints out.

It builds the aggregate registry from the mesh config, runs one supervised task per registry
adapter, and serves the monitoring port (:class:`~core.monitoring.MonitoringServer`):
``/debug/registryz`` (the merged view, each endpoint with its source registry, plus members and
conflicts), ``/debug/tasksz`` (every supervised background task), ``/healthz/ready`` (200 once every
registry has synced or the mesh config's ``initialSyncTimeout`` has passed, and every component
reports ready; its ``degraded`` list names unreachable and late registries and failing
background tasks) and Prometheus ``/metrics``.

A registry still not synced when ``initialSyncTimeout`` passes is no longer waited for: the hub
(and Pilot, which serves once the aggregate counts as synced) serves what the others hold, the
late registry is degraded, and its services are merged in by the ordinary change events when
it syncs. One dead registry therefore cannot keep the whole control plane out of service.

Adapters are found through the ``meshfed.registries`` entry-point group
(:data:`~adapters.contract.AdapterFactory`), so a registry kind is added with ``pip install``.
An adapter that crashes never takes the hub down: its member is marked degraded, its last state
stays in force, and it is restarted with jittered backoff by the hub's
:class:`~core.supervisor.Supervisor`; the crash's degraded reason is withdrawn once the restarted
adapter has stayed up.

Components (Pilot's discovery server, the workload registration, the Kubernetes config stores,
later Mixer) implement :class:`~core.component.HubComponent` and get this hub as their
:class:`~core.component.HubContext`. Everything runs in one :class:`~core.lifecycle.Lifecycle`:
supervisor, adapters, components in order, monitoring last; stopped in reverse, also when a
later part fails to start (:class:`~core.lifecycle.StartFailed`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterator, Mapping, Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import attrs
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric

from meshfed.adapters.contract import AdapterContext, AdapterFactory, RegistryAdapter
from meshfed.config import MeshConfig, RegistryConfig
from meshfed.core.component import HubComponent
from meshfed.core.configstore import ConfigStore, stores_of
from meshfed.core.lifecycle import Lifecycle, StartFailed, Step
from meshfed.core.monitoring import MonitoringServer
from meshfed.core.resources import ConfigError
from meshfed.core.supervisor import Supervisor
from meshfed.registry.aggregate import AggregateRegistry, Member
from meshfed.registry.events import ChangeEvent
from meshfed.registryview import registry_view

if TYPE_CHECKING:
    from meshfed.pilot.mixer_plugin import MixerDataPath

log = logging.getLogger("meshfed.hub")

REGISTRY_EVENTS = Counter(
    "meshfed_registry_events_total",
    "Change events emitted by the aggregate registry, by the registry whose change it was",
    ["registry"],
)
ADAPTER_RESTARTS = Counter(
    "meshfed_registry_adapter_restarts_total",
    "Registry adapters restarted after a crash",
    ["registry"],
)
INITIAL_SYNC_TIMEOUTS = Counter(
    "meshfed_registry_initial_sync_timeouts_total",
    "Registries the hub stopped waiting for at start (spec.initialSyncTimeout passed)",
    ["registry"],
)


class UnknownRegistryKind(Exception):
    pass


class RegistryConfigError(Exception):
    """A configured registry cannot be created; the message names the file and the entry,
    one line per problem."""


def adapter_problems(exc: Exception) -> list[str]:
    """Each problem an adapter's parameter check reported, one line each, without the
    adapter's own "where" (the caller names the file and the registry entry)."""
    errors = getattr(exc, "errors", None)
    if isinstance(errors, list) and errors:
        out = []
        for error in errors:
            if isinstance(error, ConfigError):
                out.append(f"{error.field}: {error.message}" if error.field else error.message)
            else:
                out.append(str(error))
        return out
    return [str(exc)]


def adapter_factory(kind: str, extra: Mapping[str, AdapterFactory] | None = None) -> AdapterFactory:
    """The factory of a registry kind: ``extra`` first (an embedding program's own kinds),
    then the ``meshfed.registries`` entry points."""
    if extra and kind in extra:
        return extra[kind]
    found = {ep.name: ep for ep in entry_points(group="meshfed.registries")}
    if kind not in found:
        raise UnknownRegistryKind(
            f"unknown registry kind {kind!r} (installed: {', '.join(sorted(found)) or 'none'})"
        )
    factory: AdapterFactory = found[kind].load()
    return factory


def create_adapter(
    mesh: MeshConfig,
    reg: RegistryConfig,
    member: Member,
    factories: Mapping[str, AdapterFactory] | None = None,
) -> RegistryAdapter:
    """The adapter for one ``spec.registries`` entry; raises the adapter's own parameter
    error (or :class:`UnknownRegistryKind`). Constructing one does no I/O: it is also how
    ``meshfed validate`` checks registry parameters exactly as the hub will."""
    context = AdapterContext(member, dict(reg.params), mesh.trust_domain, mesh.system_namespace)
    return adapter_factory(reg.kind, factories)(context)


class AggregateCollector:
    """Prometheus collector reading the aggregate at scrape time (no state to keep in sync)."""

    def __init__(self, aggregate: AggregateRegistry) -> None:
        self.aggregate = aggregate

    def collect(self) -> Iterator[Metric]:
        agg = self.aggregate
        services = agg.services()
        yield GaugeMetricFamily(
            "meshfed_registry_services", "Services in the merged view", len(services)
        )
        yield GaugeMetricFamily("pilot_services", "Total services known to pilot", len(services))
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
    """The registries, the components and the monitoring port in one lifecycle.

    Implements :class:`~core.component.HubContext` for its components.
    """

    mesh: MeshConfig
    components: list[HubComponent] = attrs.field(factory=list)
    aggregate: AggregateRegistry = attrs.field(factory=AggregateRegistry)
    adapters: dict[str, RegistryAdapter] = attrs.field(factory=dict)
    metrics: CollectorRegistry = attrs.field(factory=CollectorRegistry)
    supervisor: Supervisor = attrs.field(factory=Supervisor)
    # Registry kinds of an embedding program (or a test), beside the installed entry points.
    factories: dict[str, AdapterFactory] = attrs.field(factory=dict)
    monitoring: MonitoringServer | None = None
    _lifecycle: Lifecycle = attrs.field(factory=Lifecycle)
    _adapter_tasks: set[str] = attrs.field(factory=set)
    _sync_deadline: asyncio.TimerHandle | None = None

    def __attrs_post_init__(self) -> None:
        self.metrics.register(AggregateCollector(self.aggregate))
        self.aggregate.subscribe(self._count_event)

    def _count_event(self, event: ChangeEvent) -> None:
        REGISTRY_EVENTS.labels(self.aggregate.notifying or "unknown").inc()

    @property
    def monitoring_port(self) -> int:
        return self.monitoring.port if self.monitoring is not None else 0

    def config_stores(self, topic: str) -> Sequence[ConfigStore[Any]]:
        return stores_of(self.components, topic)

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Create every adapter (RegistryConfigError before anything runs), then start the
        parts in order; a part that fails to start raises StartFailed after every part
        started before it has been stopped again."""
        problems: list[str] = []
        for index, reg in enumerate(self.mesh.registries):
            member = self.aggregate.add_member(reg.name, reg.kind)
            try:
                self.adapters[reg.name] = create_adapter(self.mesh, reg, member, self.factories)
            except Exception as exc:  # an adapter's own parameter check, or an unknown kind
                where = f"{self.mesh.source}: MeshConfig: spec.registries[{index}] "
                where += f"({reg.name}, kind {reg.kind})"
                problems.extend(f"{where}: {problem}" for problem in adapter_problems(exc))
        if problems:  # every entry's problems at once, as `meshfed validate` lists them
            raise RegistryConfigError("\n".join(problems))
        self.monitoring = MonitoringServer(
            self.mesh.monitoring_address, name="meshfed.hub", metrics=[self.metrics]
        )
        self.monitoring.add_readiness(self.not_ready, self.degraded)
        life = self._lifecycle
        life.add("supervisor", Step(_nothing, functools.partial(self.supervisor.stop, 10.0)))
        life.add("registry adapters", Step(self._start_adapters, self._stop_adapters))
        for component in self.components:
            life.add(
                type(component).__name__,
                Step(functools.partial(component.start, self), component.stop),
            )
        life.add("monitoring server", Step(self._start_monitoring, self.monitoring.stop))
        await life.start()

    async def _start_adapters(self) -> None:
        for name, adapter in self.adapters.items():
            task = f"registry {name}"
            self._adapter_tasks.add(task)
            self.supervisor.spawn(
                task,
                adapter.run,
                on_failure=functools.partial(self._adapter_failed, adapter.member),
                on_recover=functools.partial(self._adapter_recovered, adapter.member),
            )
        timeout = self.mesh.initial_sync_timeout
        if timeout > 0:
            # A timer, not a task: nothing to supervise, and cancelled on stop.
            self._sync_deadline = asyncio.get_running_loop().call_later(
                timeout, self._initial_sync_expired, timeout
            )

    def _initial_sync_expired(self, timeout: float) -> None:
        self._sync_deadline = None
        for member in self.aggregate.members:
            if not member.synced:
                INITIAL_SYNC_TIMEOUTS.labels(member.name).inc()
                member.stop_awaiting(
                    f"{LATE}not synced {timeout:g}s after start; serving the mesh without it "
                    "until it syncs (spec.initialSyncTimeout)"
                )

    @staticmethod
    def _adapter_failed(member: Member, reason: str) -> None:
        ADAPTER_RESTARTS.labels(member.name).inc()
        member.set_degraded(f"{CRASHED}{reason}")

    @staticmethod
    def _adapter_recovered(member: Member) -> None:
        # Only the crash's own reason: one the adapter set itself since is the adapter's to clear.
        if member.degraded is not None and member.degraded.startswith(CRASHED):
            member.set_degraded(None)

    async def _stop_adapters(self) -> None:
        if self._sync_deadline is not None:
            self._sync_deadline.cancel()
            self._sync_deadline = None
        for name in self.adapters:
            # An adapter's stop may await (threads, sessions) while its run already returns.
            self.supervisor.expect_exit(f"registry {name}")
        errors = []
        for name, adapter in self.adapters.items():
            try:
                await adapter.stop()
            except Exception as exc:
                errors.append(f"{name}: {exc}")
        await asyncio.gather(
            *(self.supervisor.retire(f"registry {name}", grace=10.0) for name in self.adapters)
        )
        if errors:
            raise RuntimeError("stopping registry adapters: " + "; ".join(errors))

    async def _start_monitoring(self) -> None:
        assert self.monitoring is not None
        self.monitoring.add_routes(
            [
                web.get("/debug/registryz", self._registryz),
                web.get("/debug/tasksz", self._tasksz),
                web.get("/version", self._version),
            ]
        )
        for component in self.components:
            self.monitoring.add_routes(component.routes())
        await self.monitoring.start()

    async def stop(self) -> None:
        """Stop every started part in reverse order (errors are logged, not raised)."""
        await self._lifecycle.stop()

    # -- readiness and debug ----------------------------------------------------------------
    def not_ready(self) -> list[str]:
        reasons = [
            f"registry {m.name} has not synced"
            for m in self.aggregate.members
            if not m.synced and m.awaited
        ]
        for component in self.components:
            reasons.extend(component.not_ready())
        return reasons

    def degraded(self) -> list[str]:
        out = []
        for m in self.aggregate.members:
            if m.degraded:
                out.append(f"registry {m.name} degraded: {m.degraded}")
            if m.late_reason and m.late_reason != m.degraded:  # the adapter gave its own reason
                out.append(f"registry {m.name} {m.late_reason}")
        for task, reason in sorted(self.supervisor.failures().items()):
            if task not in self._adapter_tasks:  # a registry's crash is its member's reason
                out.append(f"{task} failing (restarting): {reason}")
        return out

    async def _registryz(self, request: web.Request) -> web.Response:
        details = {name: adapter.describe() for name, adapter in self.adapters.items()}
        return web.json_response(registry_view(self.aggregate, details, request.query.get("host")))

    async def _version(self, request: web.Request) -> web.Response:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("meshfed")
        except PackageNotFoundError:
            found = "unknown"
        return web.json_response({"version": found})

    async def _tasksz(self, request: web.Request) -> web.Response:
        return web.json_response(self.supervisor.describe())


CRASHED = "adapter crashed: "
LATE = "initial sync late: "


async def _nothing() -> None:
    return None


def default_components(mesh: MeshConfig) -> list[HubComponent]:
    """The components ``meshfed up`` runs beside the registries."""
    from meshfed.adapters.workloads.server import WorkloadRegistration
    from meshfed.configstores import kube_config_components  # CRD config per cluster
    from meshfed.pilot.mixer_plugin import MixerPlugin
    from meshfed.pilot.mtls_plugin import MtlsPlugin
    from meshfed.pilot.rbac_plugin import AuthorizationPlugin
    from meshfed.pilot.server import PilotServer  # reads mesh.discovery_address, mesh.pilot
    from meshfed.pilot.tracing_plugin import TracingPlugin
    from meshfed.security.mtls import policy_from_config

    # Pilot's listener plugins, in order: mutual TLS first, so later plugins' filters run
    # behind it. CUSTOM authorization and the Mixer data path share one Check per request.
    data_path = mixer_data_path(mesh)
    pilot = PilotServer(
        plugins=[
            MtlsPlugin(policy_from_config(mesh.pilot)),
            AuthorizationPlugin(mixer=data_path),
            MixerPlugin(data_path),
            TracingPlugin(mesh.tracing),
        ]
    )
    # Registration first: its member must exist before Pilot waits for every member to sync.
    components: list[HubComponent] = [WorkloadRegistration(), pilot, *kube_config_components(mesh)]
    mixer = None
    if mesh.mixer is not None and mesh.mixer.enabled:
        from meshfed.mixer.component import Mixer

        mixer = Mixer(mesh.mixer, tracing=mesh.tracing)
        components.append(mixer)
    if mesh.injection is not None and mesh.injection.enabled:
        from meshfed.injection.webhook import InjectionWebhook

        components.append(InjectionWebhook(mesh.injection))
    from meshfed.dashboard import Dashboard  # /dashboard on the monitoring port

    components.append(Dashboard(pilot=pilot, mixer=mixer))
    return components


def mixer_data_path(mesh: MeshConfig) -> MixerDataPath:
    """What Pilot's Mixer plugin needs of ``spec.mixer`` (Pilot does not read Mixer's types)."""
    from meshfed.pilot.mixer_plugin import MixerDataPath

    mixer = mesh.mixer
    if mixer is None or not mixer.enabled:
        return MixerDataPath(enabled=False)
    data = mixer.data_path
    return MixerDataPath(
        enabled=data.enabled,
        fail_open=data.fail_open,
        check=data.check,
        report=data.report,
        disabled_services=frozenset(data.disabled_services),
        disabled_routes=data.disabled_routes,
        quotas=data.quotas,
    )


async def run_hub(mesh: MeshConfig, stop: asyncio.Event) -> None:
    """Run the hub until ``stop`` is set; a stop during start unwinds what had started."""
    hub = Hub(mesh, default_components(mesh))
    starting = asyncio.create_task(hub.start())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()  # the lifecycle stops what had started
            await asyncio.gather(starting, return_exceptions=True)
            return
        starting.result()  # RegistryConfigError or StartFailed: nothing is left running
        await stop.wait()
    finally:
        stopping.cancel()
        await hub.stop()


__all__ = ["Hub", "RegistryConfigError", "StartFailed", "UnknownRegistryKind", "run_hub"]
