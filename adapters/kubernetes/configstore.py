"""Mesh config as Kubernetes custom resources, managed with ``kubectl``.

Two consumers share one mechanism (:class:`CustomResourceSet`): watch some custom resource kinds,
turn each object into the same :class:`~meshfed.core.resources.Document` a YAML file would
give, parse it with the *same* parsers the file stores use, and keep per object the last
version that parsed.

- :class:`KubeConfigStore` is the CRD source of the config-store interface
  (:class:`~core.configstore.ConfigStore`): ``snapshot``, ``subscribe(cb)``, ``errors``,
  ``async run()``, ``stop()``, ``describe()``. It knows no feature: the composition root hands
  it the kinds to watch (:data:`ROUTING_KINDS` for Pilot: RouteRule, DestinationPolicy,
  EgressRule, Gateway in ``config.meshfed.io/v1alpha1`` and Istio 0.2's
  ``config.istio.io/v1alpha2``, today's Istio VirtualService, DestinationRule, Sidecar and
  Gateway in
  ``networking.istio.io``, PeerAuthentication and AuthorizationPolicy in
  ``security.istio.io``, plus ``networking.k8s.io/v1`` Ingress), the feature's parsers
  and its :class:`~core.configstore.Snapshots`. Subscribers hear only about real changes of the
  snapshot.
- The Kubernetes registry adapter (:mod:`adapters.kubernetes.registry`) holds ServiceEntry and
  WorkloadEntry (``networking.meshfed.io/v1alpha1``) and feeds them, translated by the static
  registry's own :func:`~adapters.static.translate.translate`, into *its* member of the aggregate,
  next to the cluster's Services. So one ``kind: kubernetes`` registry entry is everything a
  cluster contributes, and ``kubectl apply`` of a ServiceEntry adds a mesh service.

Invalid objects: the API server's OpenAPI schema catches bad shapes at ``kubectl apply``; what it
cannot check (weights summing to 100, unique port names, a regex that compiles) is caught here.
The error text is the parsers' own -- field path and what was expected -- with the object's API
path where a file store names the file. It is logged, counted
(``meshfed_kube_config_invalid_objects``) and recorded as a ``Warning`` Event on the object, so
``kubectl describe`` shows it; the object's last good version (if it ever had one) stays in force.
Fixing the object records a ``Normal`` ``Valid`` event.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import tenacity
from aiohttp import web
from kubernetes import client as k8s

from meshfed.adapters.kubernetes import metrics
from meshfed.adapters.kubernetes.client import load_api_client
from meshfed.adapters.kubernetes.namespaces import DEFAULT_SYSTEM_NAMESPACE, NamespaceFilter
from meshfed.adapters.kubernetes.watcher import Watcher, WatchEvent
from meshfed.core.component import HubContext
from meshfed.core.configstore import ROUTING, ConfigStore, Snapshots
from meshfed.core.resources import ConfigError, Document
from meshfed.core.supervisor import Supervisor

log = logging.getLogger("meshfed.adapters.kubernetes.config")

Parser = Callable[[Document], tuple[Any, list[ConfigError]]]
ObjectKey = tuple[str, str, str]  # (resource, namespace, name)


@attrs.frozen(slots=True)
class ResourceKind:
    """One watched API resource (a CRD's version, or a built-in kind)."""

    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def resource(self) -> str:
        """A unique name, used for watch names and metrics: ``routerules.config.meshfed.io``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def path(self, namespace: str, name: str) -> str:
        prefix = f"apis/{self.group}" if self.group else "api"
        return f"{prefix}/{self.version}/namespaces/{namespace}/{self.plural}/{name}"

    def list_fn(self, api_client: k8s.ApiClient) -> Callable[..., Any]:
        if self.group == "networking.k8s.io" and self.kind == "Ingress":
            return k8s.NetworkingV1Api(api_client).list_ingress_for_all_namespaces
        custom = k8s.CustomObjectsApi(api_client)

        def list_objects(**kwargs: Any) -> Any:
            return custom.list_cluster_custom_object(
                self.group, self.version, self.plural, **kwargs
            )

        return list_objects


def _routing_kinds() -> tuple[ResourceKind, ...]:
    out = []
    for group, version in (("config.meshfed.io", "v1alpha1"), ("config.istio.io", "v1alpha2")):
        for plural, kind in (
            ("routerules", "RouteRule"),
            ("destinationpolicies", "DestinationPolicy"),
            ("egressrules", "EgressRule"),
            ("gateways", "Gateway"),
        ):
            out.append(ResourceKind(group, version, plural, kind))
    # Today's Istio kinds are served in several versions of one CRD; one is watched (the API
    # server gives every object in it). v1beta1 is the one Istio's CRDs have served longest.
    for plural, kind in (
        ("virtualservices", "VirtualService"),
        ("destinationrules", "DestinationRule"),
        ("sidecars", "Sidecar"),
        ("gateways", "Gateway"),
    ):
        out.append(ResourceKind("networking.istio.io", "v1beta1", plural, kind))
    for plural, kind in (
        ("peerauthentications", "PeerAuthentication"),
        ("authorizationpolicies", "AuthorizationPolicy"),
    ):
        out.append(ResourceKind("security.istio.io", "v1beta1", plural, kind))
    out.append(ResourceKind("networking.k8s.io", "v1", "ingresses", "Ingress"))
    return tuple(out)


ROUTING_KINDS = _routing_kinds()
REGISTRY_KINDS = (
    ResourceKind("networking.meshfed.io", "v1alpha1", "serviceentries", "ServiceEntry"),
    ResourceKind("networking.meshfed.io", "v1alpha1", "workloadentries", "WorkloadEntry"),
)


def document_of(obj: Mapping[str, Any], kind: ResourceKind) -> Document:
    """The Document a YAML file with this object would give; its "file" is the API path."""
    meta = obj.get("metadata") or {}
    name, namespace = str(meta.get("name") or ""), str(meta.get("namespace") or "default")
    spec = obj.get("spec")
    if kind.kind == "Ingress" and spec is None:
        spec = {}
    return Document(
        file=kind.path(namespace, name),
        index=0,
        api_version=str(obj.get("apiVersion") or kind.api_version),
        kind=str(obj.get("kind") or kind.kind),
        name=name,
        namespace=namespace,
        labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
        spec=spec if isinstance(spec, Mapping) else {},
        annotations=meta.get("annotations") or {},
    )


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    """Records core/v1 Events on objects (what ``kubectl describe`` lists); never raises."""

    def __init__(self, api_client: k8s.ApiClient, component: str = "meshfed") -> None:
        self.core = k8s.CoreV1Api(api_client)
        self.component = component
        self.instance = socket.gethostname()
        self.recorded = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def record(self, obj: Mapping[str, Any], event_type: str, reason: str, message: str) -> None:
        """Schedule an Event for ``obj`` (call from the event loop)."""
        task = asyncio.get_running_loop().create_task(
            self._create(obj, event_type, reason, message)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _create(
        self, obj: Mapping[str, Any], event_type: str, reason: str, message: str
    ) -> None:
        meta = obj.get("metadata") or {}
        namespace = str(meta.get("namespace") or "default")
        now = _now()
        body = {
            "metadata": {"generateName": f"{meta.get('name', 'object')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message if len(message) <= 1024 else message[:1021] + "...",
            "type": event_type,
            "source": {"component": self.component},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": self.component,
            "reportingInstance": self.instance,
        }
        try:
            await asyncio.to_thread(self.core.create_namespaced_event, namespace, body)
            self.recorded += 1
        except Exception as exc:  # events are best effort; the log has the error already
            log.warning("cannot record event on %s/%s: %s", namespace, meta.get("name"), exc)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def error_text(errors: Iterable[ConfigError]) -> str:
    """The parsers' errors without the file part (the Event is on the object already)."""
    return "; ".join(f"{e.field}: {e.message}" if e.field else e.message for e in errors)


class CustomResourceSet:
    """Last good parse per object of some watched kinds, with errors reported on the objects."""

    def __init__(
        self,
        kinds: Iterable[ResourceKind],
        parsers: Mapping[str, Parser],
        namespaces: NamespaceFilter,
        recorder: EventRecorder | None,
        store: str,
    ) -> None:
        self.kinds = {k.resource: k for k in kinds}
        self.parsers = parsers
        self.namespaces = namespaces
        self.recorder = recorder
        self.store = store
        self.raw: dict[ObjectKey, dict[str, Any]] = {}
        self.good: dict[ObjectKey, Any] = {}
        self._errors: dict[ObjectKey, list[ConfigError]] = {}
        self._reported: dict[ObjectKey, tuple[str, str]] = {}  # key -> (uid, message)

    def owns(self, resource: str) -> bool:
        return resource in self.kinds

    @property
    def errors(self) -> list[ConfigError]:
        return [
            e
            for key in sorted(self._errors)
            if self.namespaces.allows(key[1])
            for e in self._errors[key]
        ]

    def objects(self) -> list[Any]:
        """Every object's last good parse, in namespaces the mesh manages, in a stable order."""
        return [self.good[k] for k in sorted(self.good) if self.namespaces.allows(k[1])]

    def apply(self, resource: str, events: list[WatchEvent]) -> bool:
        """Apply watch events of one resource; True when a last good parse changed."""
        kind = self.kinds[resource]
        changed = False
        for event in events:
            if event.type == "SYNC":
                fresh = {}
                for obj in event.objects:
                    ns, name = _ns_name(obj)
                    fresh[(resource, ns, name)] = obj
                for key in [k for k in self.raw if k[0] == resource and k not in fresh]:
                    changed |= self._delete(key)
                for key, obj in fresh.items():
                    changed |= self._put(key, obj, kind)
            elif event.obj is not None:
                ns, name = _ns_name(event.obj)
                key = (resource, ns, name)
                if event.type == "DELETED":
                    changed |= self._delete(key)
                else:
                    changed |= self._put(key, event.obj, kind)
        metrics.CONFIG_ERRORS.labels(self.store).set(len(self._errors))
        return changed

    def _delete(self, key: ObjectKey) -> bool:
        self.raw.pop(key, None)
        self._errors.pop(key, None)
        self._reported.pop(key, None)
        return self.good.pop(key, None) is not None

    def _put(self, key: ObjectKey, obj: dict[str, Any], kind: ResourceKind) -> bool:
        old = self.raw.get(key)
        if old is not None and _version(old) == _version(obj) and _version(obj):
            return False  # a relist hands back objects we already hold
        self.raw[key] = obj
        doc = document_of(obj, kind)
        parser = self.parsers.get(doc.kind)
        if parser is None:
            return False
        parsed, errors = parser(doc)
        if parsed is None and not errors:
            # Not ours (an Ingress of another class): no error, no Event on another
            # controller's object; one re-classed away is withdrawn.
            self._errors.pop(key, None)
            return self.good.pop(key, None) is not None
        if errors or parsed is None:
            errors = errors or [ConfigError(doc.file, doc.ref, "", "could not be parsed")]
            self._errors[key] = errors
            kept = "keeping its last good version" if key in self.good else "not applied"
            for error in errors:
                log.error("%s error (%s): %s", self.store, kept, error)
            self._report(key, obj, "Warning", "InvalidConfig", error_text(errors))
            return False
        was_invalid = self._errors.pop(key, None) is not None
        if was_invalid:
            self._report(key, obj, "Normal", "Valid", "the object is valid and applied")
        if self.good.get(key) == parsed:
            return False
        self.good[key] = parsed
        return True

    def _report(
        self, key: ObjectKey, obj: Mapping[str, Any], event_type: str, reason: str, text: str
    ) -> None:
        uid = str((obj.get("metadata") or {}).get("uid") or "")
        if self._reported.get(key) == (uid, text):
            return  # the same verdict on the same object was already recorded
        self._reported[key] = (uid, text)
        if self.recorder is not None and self.namespaces.allows(key[1]):
            self.recorder.record(obj, event_type, reason, text)

    def describe(self) -> dict[str, Any]:
        return {
            "objects": [f"{k[0]} {k[1]}/{k[2]}" for k in sorted(self.good)],
            "errors": [str(e) for e in self.errors],
        }


def _ns_name(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or "default"), str(meta.get("name") or "")


def _version(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


class KubeConfigStore:
    """Config objects from custom resources, applied live (a :class:`ConfigStore`)."""

    def __init__(
        self,
        api_client: k8s.ApiClient | Callable[[], k8s.ApiClient],
        namespaces: NamespaceFilter | None = None,
        *,
        parsers: Mapping[str, Parser],
        snapshots: Snapshots[Any],
        name: str = "kubernetes",
        kinds: Iterable[ResourceKind] = ROUTING_KINDS,
        record_events: bool = True,
    ) -> None:
        # A factory is resolved in run(), so a bad kubeconfig is a logged, retried error of this
        # store (it stays not-ready) rather than an exception while the hub is being built.
        self._api_client = api_client if isinstance(api_client, k8s.ApiClient) else None
        self._api_factory = None if self._api_client is not None else api_client
        self.name = name
        self.namespaces = namespaces or NamespaceFilter()
        self.record_events = record_events
        self.recorder: EventRecorder | None = None
        self.resources = CustomResourceSet(kinds, parsers, self.namespaces, None, "config")
        self.snapshots = snapshots
        self.snapshot: Any = snapshots.empty()
        self.watchers: dict[str, Watcher] = {}
        self._subscribers: list[Callable[[Any], None]] = []
        self._stopped = asyncio.Event()
        self._synced = asyncio.Event()
        self.errors_by_watch: dict[str, str] = {}

    @classmethod
    def from_params(
        cls,
        params: Mapping[str, Any],
        *,
        parsers: Mapping[str, Parser],
        snapshots: Snapshots[Any],
        system_namespace: str = DEFAULT_SYSTEM_NAMESPACE,
    ) -> KubeConfigStore:
        """A store for the cluster a ``kind: kubernetes`` registry entry names (same params)."""
        namespaces = NamespaceFilter(
            params.get("namespaces"),
            params.get("namespaceSelector"),
            params.get("systemNamespace") or system_namespace,
        )

        def api() -> k8s.ApiClient:
            return load_api_client(params.get("kubeconfig"), params.get("context"))

        name = str(params.get("name") or "kubernetes")
        return cls(api, namespaces, name=name, parsers=parsers, snapshots=snapshots)

    @property
    def api_client(self) -> k8s.ApiClient:
        if self._api_client is None:
            assert self._api_factory is not None
            self._api_client = self._api_factory()
        return self._api_client

    @property
    def errors(self) -> list[ConfigError]:
        return self.resources.errors

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def subscribe(self, callback: Callable[[Any], None]) -> None:
        self._subscribers.append(callback)

    def _publish(self) -> None:
        snapshot = self.snapshots.of(self.resources.objects())
        if snapshot == self.snapshot:
            return
        for warning in self.snapshots.warnings(self.snapshot, snapshot):
            log.warning("config store %s: %s", self.name, warning)
        self.snapshot = snapshot
        for callback in list(self._subscribers):
            callback(snapshot)

    def _sink(self, resource: str, events: list[WatchEvent]) -> None:
        if resource == "namespaces":
            changed = False
            for event in events:
                if event.type == "SYNC":
                    changed |= bool(self.namespaces.set_namespaces(event.objects))
                elif event.obj is not None:
                    changed |= self.namespaces.update_namespace(
                        event.obj, deleted=event.type == "DELETED"
                    )
        else:
            changed = self.resources.apply(resource, events)
        if self._synced.is_set() and changed:
            self._publish()
        elif not self._synced.is_set() and all(w.synced for w in self.watchers.values()):
            self._synced.set()
            self._publish()
            log.info("%s config store synced: %d objects", self.name, len(self.resources.good))

    def _health(self, resource: str, error: str | None) -> None:
        if error:
            self.errors_by_watch[resource] = error
        else:
            self.errors_by_watch.pop(resource, None)

    def _watchers(self) -> dict[str, Watcher]:
        out = {}
        for kind in self.resources.kinds.values():
            out[kind.resource] = Watcher(
                kind.resource,
                kind.list_fn(self.api_client),
                self._sink,
                self._health,
                registry=self.name,
                api_version=kind.api_version,
                kind=kind.kind,
            )
        if self.namespaces.needs_namespace_watch:
            out["namespaces"] = Watcher(
                "namespaces",
                k8s.CoreV1Api(self.api_client).list_namespace,
                self._sink,
                self._health,
                registry=self.name,
            )
        return out

    async def wait_synced(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._synced.wait(), timeout)

    async def run(self) -> None:
        """Watch every routing kind until :meth:`stop`; never raises on API outages."""
        loop = asyncio.get_running_loop()
        retrying = tenacity.AsyncRetrying(
            wait=tenacity.wait_random_exponential(multiplier=0.5, max=30),
            retry=tenacity.retry_if_exception_type(Exception),
            before_sleep=lambda state: log.error(
                "config store %s: cannot build a Kubernetes client (%s); retrying",
                self.name,
                state.outcome.exception() if state.outcome else "?",
            ),
        )
        async for attempt in retrying:
            with attempt:
                if self._stopped.is_set():
                    return
                api = await asyncio.to_thread(lambda: self.api_client)  # reads files
        if self.record_events:
            self.recorder = EventRecorder(api)
            self.resources.recorder = self.recorder
        self.watchers = self._watchers()
        for watcher in self.watchers.values():
            watcher.start(loop)
        try:
            await self._stopped.wait()
        finally:
            for watcher in self.watchers.values():
                watcher.stop()
            await asyncio.gather(*(w.join() for w in self.watchers.values()))
            if self.recorder is not None:
                await self.recorder.drain()

    def stop(self) -> None:
        self._stopped.set()
        for watcher in self.watchers.values():
            watcher.stop()

    def describe(self) -> dict[str, Any]:
        return {
            "source": f"kubernetes ({self.name})",
            "synced": self.synced,
            "namespaces": self.namespaces.describe(),
            **self.snapshots.describe(self.snapshot),
            "errors": [str(e) for e in self.errors],
            "watch_errors": dict(self.errors_by_watch),
            "watches": {name: w.describe() for name, w in self.watchers.items()},
        }


class KubeConfigComponent:
    """A config store as a hub component: runs under the hub's supervisor, reports readiness,
    and declares its store for its topic (:data:`~core.configstore.ROUTING` by default)."""

    def __init__(self, store: KubeConfigStore, topic: str = ROUTING) -> None:
        self.store = store
        self.topic = topic
        self._supervisor: Supervisor | None = None
        self._wait_until: float | None = None  # monotonic; None: wait for the sync forever

    @property
    def task_name(self) -> str:
        return f"config store {self.store.name}"

    def config_stores_for(self, topic: str) -> list[ConfigStore[Any]]:
        return [self.store] if topic == self.topic else []

    async def start(self, hub: HubContext) -> None:
        self._supervisor = hub.supervisor
        timeout = hub.mesh.initial_sync_timeout
        self._wait_until = time.monotonic() + timeout if timeout > 0 else None
        hub.supervisor.spawn(self.task_name, self.store.run)

    async def stop(self) -> None:
        self.store.stop()
        if self._supervisor is not None:
            await self._supervisor.retire(self.task_name, grace=10.0)

    def routes(self) -> list[web.RouteDef]:
        async def configz(request: web.Request) -> web.Response:
            return web.json_response(self.store.describe())

        return [web.get(f"/debug/configz/{self.store.name}", configz)]

    def not_ready(self) -> list[str]:
        # Like a late registry, a cluster that cannot be reached holds readiness only until
        # the mesh's initial-sync timeout: the hub then serves the config it has (the
        # cluster's registry member says it is degraded; /debug/configz/<name> says unsynced).
        if self.store.synced:
            return []
        if self._wait_until is not None and time.monotonic() >= self._wait_until:
            return []
        return [f"config store {self.store.name} has not synced"]
