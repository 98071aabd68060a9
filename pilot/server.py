"""Pilot as a hub component: registry events in, debounced pushes out over ADS.

:class:`PilotServer` wires the aggregate registry to the shared :class:`~pilot.cache.ConfigCache`
through the debouncer, and serves :class:`~pilot.ads.DiscoveryServer` on ``grpc.aio``. It
implements the hub's component protocol (``start(hub)``, ``stop()``, ``routes()``,
``not_ready()``) and can also run on its own (tests, benchmarks) with an aggregate passed in.

Settings (the mesh config's ``pilot:`` section): ``debounceQuiet`` (seconds of quiet before a
push, default 0.1), ``debounceMax`` (longest a batch waits, default 1.0), ``egressDnsResolvers``
and ``gatewayCertsDir`` (see :class:`pilot.translate.traffic.TrafficOptions`).

Listener plugins (:mod:`pilot.plugins`) shape every listener and cluster; the hub passes mutual
TLS (:class:`~pilot.mtls_plugin.MtlsPlugin`) and a caller that changes a plugin's config calls
:meth:`PilotServer.plugins_changed`, which pushes only what changed.

Routing config (route rules, destination policies, egress rules, gateways) comes from config
stores: in the hub, a :class:`~pilot.config.store.FileConfigStore` over the mesh config's
``configPaths`` plus every store the hub's components declare for the routing topic
(``hub.config_stores(ROUTING)``: the Kubernetes CRD stores); standalone, whatever stores are
passed in. The file store this server creates runs under the hub's supervisor (standalone, a
supervisor of its own): a store that fails is restarted and shown as failing, never lost. A
snapshot change goes through the same debouncer as registry events, so a burst of rule edits
costs one push.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import grpc
from aiohttp import web

from meshfed.core.component import HubContext
from meshfed.core.configstore import ROUTING
from meshfed.core.supervisor import Supervisor
from meshfed.pilot import analysis, istio_debug, traffic_hooks, wire
from meshfed.pilot import metrics as M
from meshfed.pilot import xds_types as T
from meshfed.pilot.ads import DiscoveryServer
from meshfed.pilot.cache import CacheChange, ConfigCache
from meshfed.pilot.config import peer_authentication
from meshfed.pilot.config.parse import IngressSelection, routing_parsers
from meshfed.pilot.config.store import ConfigSnapshot, FileConfigStore
from meshfed.pilot.debounce import Batch, DebounceLoop
from meshfed.pilot.mtls_plugin import MtlsPlugin
from meshfed.pilot.plugins import ListenerPlugin
from meshfed.pilot.rbac_plugin import AuthorizationPlugin
from meshfed.pilot.translate.traffic import TrafficOptions
from meshfed.pilot.watch import Status
from meshfed.registry.aggregate import AggregateRegistry
from meshfed.registry.events import ChangeEvent
from meshfed.security import mtls

log = logging.getLogger("meshfed.pilot")

DEFAULT_QUIET = 0.1
DEFAULT_MAX_DELAY = 1.0
STAGE_WAIT = 2.0  # seconds a config change waits for proxies' ACKs between its two steps


def _triggers(names: Iterable[str]) -> list[str]:
    """Why a batch is pushed, one reason per entry (Istio's push trigger types)."""
    return [
        "config" if n == CONFIG_CHANGED else "plugins" if n == PLUGINS_CHANGED else "registry"
        for n in names
    ]


CONFIG_CHANGED = "\0config"  # a debouncer "hostname" no service can have: re-read the stores
PLUGINS_CHANGED = "\0plugins"  # likewise: a listener plugin's config changed


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
        config_stores: list[Any] | None = None,
        traffic_options: TrafficOptions | None = None,
        mtls_policy: mtls.Policy | None = None,
        plugins: Sequence[ListenerPlugin] | None = None,
    ) -> None:
        """``plugins`` shape every listener and cluster (:mod:`pilot.plugins`), in order. When
        None, Pilot runs mutual TLS alone (:class:`~pilot.mtls_plugin.MtlsPlugin`) with
        ``mtls_policy`` or, inside a hub, the mesh config's ``pilot.mtls``."""
        self.mtls_policy = mtls_policy or mtls.Policy(mtls.Mode.OFF)
        self._mtls_from_hub = mtls_policy is None
        self.plugins: list[ListenerPlugin] | None = list(plugins) if plugins is not None else None
        self.aggregate = aggregate
        self.config_stores: list[Any] = list(config_stores or [])
        self.traffic_options = traffic_options or TrafficOptions()
        self._supervisor: Supervisor | None = None
        self._own_supervisor = False
        self._store_tasks: list[str] = []  # supervised task names of the owned stores
        self._owned_stores: list[FileConfigStore] = []  # created here, so run and stopped here
        self._subscribed_stores: set[int] = set()  # stores have no unsubscribe; subscribe once
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
        self.push_record = istio_debug.PushRecord()

    async def start(self, hub: HubContext | None = None) -> None:
        if hub is not None:
            self._supervisor = hub.supervisor
            self.aggregate = hub.aggregate
            self.address = hub.mesh.discovery_address
            self.quiet, self.max_delay = debounce_settings(hub.mesh.pilot)
            self._hub_stores(hub)
            if self._mtls_from_hub:
                self.mtls_policy = mtls.policy_from_config(hub.mesh.pilot)
        if self.aggregate is None:
            raise ValueError("PilotServer needs an aggregate registry (or a hub)")
        if self._supervisor is None:
            self._supervisor, self._own_supervisor = Supervisor(), True
        plugins = (
            self.plugins
            if self.plugins is not None
            else [MtlsPlugin(self.mtls_policy), AuthorizationPlugin()]
        )
        # Built in full by _on_status once every registry has synced (now, if already so).
        self.cache = ConfigCache(self.aggregate, plugins)
        await self._start_stores()
        if self._fold_peer_authentication():
            self.cache.plugins_key = self.cache.plugins.key  # nothing was built yet
        self.discovery = DiscoveryServer(self.cache)
        M.DISCOVERY.servers.add(self.discovery)
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
        # State-of-the-world requests arrive with a fingerprint of their names (pilot.wire).
        wire.add_to_server(self.discovery, self._grpc)
        self._add_health_service(self._grpc)
        self.port = self._grpc.add_insecure_port(self.address)
        if self.port == 0:
            raise OSError(f"pilot: cannot listen on {self.address}")
        await self._grpc.start()
        await self._set_health()
        host = self.address.rpartition(":")[0]
        log.info(
            "discovery (ADS) on %s:%d, debounce %.3fs quiet / %.3fs max",
            host,
            self.port,
            self.quiet,
            self.max_delay,
        )

    # -- routing config ---------------------------------------------------------------------
    def _hub_stores(self, hub: HubContext) -> None:
        self.traffic_options = TrafficOptions.from_pilot_config(hub.mesh.pilot)
        if hub.mesh.config_paths and not any(
            isinstance(s, FileConfigStore) for s in self.config_stores
        ):
            files = FileConfigStore(
                hub.mesh.config_paths,
                routing_parsers(IngressSelection.from_pilot_config(hub.mesh.pilot)),
            )
            self.config_stores.append(files)
            self._owned_stores = [files]
        for store in hub.config_stores(ROUTING):  # e.g. the Kubernetes CRD config stores
            if store not in self.config_stores:
                self.config_stores.append(store)

    async def _start_stores(self) -> None:
        assert self.cache is not None
        assert self._supervisor is not None
        for index, store in enumerate(self.config_stores):
            if store in self._owned_stores:
                await store.refresh()  # rules in force before the first proxy is served
                name = f"pilot config files {index}"
                self._store_tasks.append(name)
                self._supervisor.spawn(name, store.run)
            if id(store) not in self._subscribed_stores:
                store.subscribe(self._on_config)
                self._subscribed_stores.add(id(store))
        self.cache.set_config(self.config_snapshot(), self.traffic_options)

    def config_snapshot(self) -> ConfigSnapshot:
        """Every store's objects as one snapshot (a single store's is used as is)."""
        if len(self.config_stores) == 1:
            return self.config_stores[0].snapshot
        objects: list[Any] = []
        for store in self.config_stores:
            snap = store.snapshot
            objects += [*snap.route_rules, *snap.destination_policies]
            objects += [*snap.egress_rules, *snap.gateways, *snap.peer_authentications]
            objects += [*snap.authorization_policies, *snap.sidecars]
            objects += [*snap.istio_gateways, *snap.gateway_routes, *snap.l4_routes]
        return ConfigSnapshot.of(objects)

    def _fold_peer_authentication(self) -> bool:
        """Give the mutual TLS plugin the mesh config's policy under the stores'
        PeerAuthentication objects, and the authorization plugin the stores'
        AuthorizationPolicies; True when either changed."""
        if self.cache is None:
            return False
        snapshot = self.config_snapshot()
        folded = peer_authentication.policy(self.mtls_policy, snapshot.peer_authentications)
        changed = False
        for plugin in self.cache.plugins.plugins:
            if isinstance(plugin, MtlsPlugin) and plugin.policy != folded.policy:
                plugin.policy, changed = folded.policy, True
            if (
                isinstance(plugin, AuthorizationPlugin)
                and plugin.policies != snapshot.authorization_policies
            ):
                plugin.policies, changed = snapshot.authorization_policies, True
        for note in folded.notes:
            log.warning("%s", note)
        return changed

    async def _apply_config(self, change: CacheChange, batch: Batch) -> CacheChange:
        """Make before break: add clusters, then switch routes, then remove old clusters.

        Each step is pushed once every proxy has ACKed the previous one; waits are bounded (a
        proxy that never ACKs delays a rule change by at most ``STAGE_WAIT`` s per step).
        Returns what is left to push (the removal step, or the switch if it was not pushed).
        """
        assert self.cache is not None and self.discovery is not None
        snapshot = self.config_snapshot()
        await self._wait_synced(STAGE_WAIT)  # the previous routes are in place everywhere
        staged = self.cache.stage_config(snapshot, self.traffic_options)
        staged = traffic_hooks.merge(change, staged)
        if staged.cluster_names or staged.endpoint_names:
            self.pushes += 1
            await self.discovery.push_all(staged, batch.first_at)
            await self._wait_synced(STAGE_WAIT, (T.CLUSTER, T.ENDPOINT))
            change = attrs.evolve(change, endpoint_names=frozenset(), cluster_names=frozenset())
        switched = traffic_hooks.merge(
            change, self.cache.set_config(snapshot, self.traffic_options)
        )
        if not (self.cache.traffic.extra_subsets or self.cache.traffic.extra_egress):
            return switched
        self.pushes += 1
        await self.discovery.push_all(switched, batch.first_at)
        await self._wait_synced(STAGE_WAIT)
        settled = self.cache.settle_config()
        return settled if settled is not None else attrs.evolve(switched, services_changed=False)

    async def _wait_synced(self, timeout: float, types: tuple[str, ...] | None = None) -> None:
        """Until every connected proxy has ACKed what it was sent (of ``types``), or timeout."""
        assert self.discovery is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = [
                conn
                for conn in self.discovery.connections.values()
                if any(
                    w.status is not Status.SYNCED and w.status is not Status.NOT_SENT
                    for t, w in conn.watches.items()
                    if types is None or t in types
                )
            ]
            if not pending:
                return
            await asyncio.sleep(0.01)
        log.info("config change: some proxies had not ACKed after %.1fs; continuing", timeout)

    def plugins_changed(self) -> None:
        """Call after changing a listener plugin's config: the next push re-sends only the
        listeners and clusters whose bytes changed (nothing, if the plugin's version did not
        move). Goes through the debouncer, so a burst of changes costs one push."""
        if self._debounce is not None:
            M.ISTIO_PUSH_TRIGGERS.inc(1, "config")
            self._debounce.submit({PLUGINS_CHANGED})

    def _on_config(self, snapshot: ConfigSnapshot) -> None:
        if self._debounce is not None:
            M.ISTIO_PUSH_TRIGGERS.inc(1, "config")
            self._debounce.submit({CONFIG_CHANGED})

    def configz(self) -> dict[str, Any]:
        index = self.cache.traffic if self.cache is not None else None
        return {
            "stores": [s.describe() for s in self.config_stores],
            "conflicts": [str(c) for c in self.config_snapshot().conflicts],
            "unresolved": list(index.unresolved) if index is not None else [],
        }

    def _add_health_service(self, server: grpc.aio.Server) -> None:
        """gRPC health checking (``grpc.health.v1``) when ``grpcio-health-checking`` is
        installed: SERVING once registries have synced, NOT_SERVING before."""
        try:
            from grpc_health.v1 import health, health_pb2, health_pb2_grpc
        except ImportError:
            log.debug("grpcio-health-checking not installed: no gRPC health service")
            return
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        self._health_status = health_pb2.HealthCheckResponse

    async def _set_health(self) -> None:
        servicer = getattr(self, "_health", None)
        if servicer is None or self.discovery is None:
            return
        status = self._health_status.SERVING
        if not self.discovery.serving.is_set():
            status = self._health_status.NOT_SERVING
        for service in ("", "envoy.service.discovery.v3.AggregatedDiscoveryService"):
            await servicer.set(service, status)

    def _on_status(self) -> None:
        discovery = self.discovery
        aggregate = self.aggregate
        if discovery is None or discovery.serving.is_set() or not aggregate or not aggregate.synced:
            return
        assert self.cache is not None
        # Everything the registries loaded so far, without waiting for the debouncer.
        self.cache.rebuild()
        discovery.serving.set()
        log.info("registries synced: serving xDS")
        with contextlib.suppress(RuntimeError):  # no running loop: start() sets it later
            asyncio.get_running_loop().create_task(self._set_health())

    def _on_event(self, event: ChangeEvent) -> None:
        if self._debounce is not None:
            M.DEBOUNCED_EVENTS.inc()
            if event.endpoints:
                M.ISTIO_PUSH_TRIGGERS.inc(1, "endpoint")
            if event.services_added or event.services_updated or event.services_removed:
                M.ISTIO_PUSH_TRIGGERS.inc(1, "service")
            self._debounce.submit(event.hostnames)

    async def _flush(self, batch: Batch) -> None:
        assert self.cache is not None and self.discovery is not None
        M.DEBOUNCE.observe(batch.waited)
        M.ISTIO_DEBOUNCE.observe(batch.waited)
        self.push_record.started(_triggers(batch.hostnames))
        started = time.perf_counter()
        change = self.cache.apply(batch.hostnames - {CONFIG_CHANGED, PLUGINS_CHANGED})
        folded = CONFIG_CHANGED in batch.hostnames and self._fold_peer_authentication()
        if PLUGINS_CHANGED in batch.hostnames or folded:
            refreshed = self.cache.refresh_plugins()
            if refreshed is not None:
                change = traffic_hooks.merge(change, refreshed)
        if CONFIG_CHANGED in batch.hostnames:
            change = await self._apply_config(change, batch)
        M.BUILD_TIME.observe(time.perf_counter() - started)
        if not (change.services_changed or change.endpoint_names or change.cluster_names):
            return
        self.pushes += 1
        responses = await self.discovery.push_all(change, batch.first_at)
        self.push_record.finished(
            responses, change.full, change.services_changed, change.endpoint_names
        )

    async def stop(self) -> None:
        for store in self._owned_stores:
            store.stop()
        if self._supervisor is not None:
            for name in self._store_tasks:
                await self._supervisor.retire(name)
        self._store_tasks = []
        if self._own_supervisor and self._supervisor is not None:
            await self._supervisor.stop(grace=5.0)
            self._supervisor, self._own_supervisor = None, False
        if self._debounce is not None:
            await self._debounce.stop()
            self._debounce = None
        if self._grpc is not None:
            await self._grpc.stop(grace=0.5)
            self._grpc = None
        if self.discovery is not None:
            for conn in list(self.discovery.connections.values()):
                self.discovery._close(conn)
            M.DISCOVERY.servers.discard(self.discovery)

    def routes(self) -> list[web.RouteDef]:
        from meshfed.pilot.status import routes

        async def configz(request: web.Request) -> web.Response:
            return web.json_response(self.configz())

        async def analyze(request: web.Request) -> web.Response:
            """cross-resource findings of the live config against the live catalog"""
            return web.json_response({"findings": [f.as_dict() for f in self.analyze()]})

        istio = istio_debug.routes(lambda: self.discovery, lambda: self.aggregate, self.push_record)
        return [
            *routes(lambda: self.discovery),
            web.get("/debug/configz", configz),
            web.get("/debug/analyze", analyze),
            *istio,
        ]

    def analyze(self) -> list[analysis.Finding]:
        """``meshfed analyze --hub``: the running config, checked as files would be."""
        if self.aggregate is None:
            return []
        return analysis.analyze(
            self.config_snapshot(), analysis.Catalog.of_aggregate(self.aggregate)
        )

    def not_ready(self) -> list[str]:
        if self._grpc is None or self.discovery is None:
            return ["pilot: discovery server not started"]
        if not self.discovery.serving.is_set():
            return ["pilot: waiting for registries to sync before serving xDS"]
        return []
