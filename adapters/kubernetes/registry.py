"""The Kubernetes registry adapter: a cluster's Services, EndpointSlices, Pods and Nodes (and its
ServiceEntry / WorkloadEntry custom resources), followed into one member of the aggregate.

Shape: one :class:`~adapters.kubernetes.watcher.Watcher` thread per resource (Services,
EndpointSlices, legacy Endpoints, Pods, Nodes; Namespaces when a selector is configured;
ServiceEntry and WorkloadEntry), each handing complete lists and single events to the loop. The
adapter keeps the objects (pods and nodes slimmed to the fields the mapping reads), indexes which
Service read which slices, pods and nodes, and on every change recomputes only the affected
Services with the pure :func:`~adapters.kubernetes.mapping.map_service`.

Promises:

- Synced once: ``member.mark_synced()`` is called after *every* resource has been listed once and
  the whole state applied in one ``member.replace`` -- the hub never reports ready with half a
  cluster.
- Only real differences are pushed: events arriving together are coalesced (one flush per loop
  turn), each affected hostname is recomputed from normalised objects, and the aggregate drops
  equal results. A relist after ``410 Gone`` is diffed against what we hold, so it is exact and
  quiet.
- Outages never empty the mesh: a failing watch keeps its objects, marks the member degraded
  (``/healthz/ready``, ``/debug/registryz``, ``meshfed_registry_degraded``) and retries with
  jittered backoff; ``run()`` never raises because the API server is away, and returns only after
  ``stop()``.
- ServiceEntry / WorkloadEntry custom resources are this member's too (parameter
  ``serviceEntries``, default on), translated by the static registry's own code. When a custom
  resource declares the hostname of a Kubernetes Service, the Service wins and the entry is
  reported in the log (merging a cluster with VMs is done across members, by the aggregate).

Parameters (the registry entry's keys in the mesh config): ``kubeconfig``, ``context``,
``clusterDomain`` (``cluster.local``), ``namespaces`` (a list) or ``namespaceSelector``
(``"key=value,..."``), ``systemNamespace`` (``meshfed-system``), ``serviceEntries`` (true),
``legacyEndpoints`` (true: read core/v1 Endpoints for Services without slices),
``selectorEndpoints`` (true: for a selector Service with neither slices nor Endpoints -- an API
server without controllers -- compute endpoints from its pods, see :mod:`.mapping`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import attrs
from kubernetes import client as k8s

from meshfed.adapters.contract import AdapterContext
from meshfed.adapters.kubernetes import metrics
from meshfed.adapters.kubernetes.client import load_api_client
from meshfed.adapters.kubernetes.configstore import REGISTRY_KINDS, CustomResourceSet, EventRecorder
from meshfed.adapters.kubernetes.mapping import (
    SERVICE_NAME_LABEL,
    Mapped,
    ObjKey,
    map_service,
    obj_key,
)
from meshfed.adapters.kubernetes.namespaces import DEFAULT_SYSTEM_NAMESPACE, NamespaceFilter
from meshfed.adapters.kubernetes.watcher import Watcher, WatchEvent
from meshfed.adapters.static.kinds import PARSERS as STATIC_PARSERS
from meshfed.adapters.static.kinds import ServiceEntrySpec, WorkloadSpec
from meshfed.adapters.static.translate import translate
from meshfed.registry.aggregate import Member
from meshfed.registry.model import Endpoint, Service

log = logging.getLogger("meshfed.adapters.kubernetes")

CORE = ("services", "endpointslices", "endpoints", "pods", "nodes")


@attrs.frozen(slots=True)
class KubeParams:
    kubeconfig: str | None = None
    context: str | None = None
    cluster_domain: str = "cluster.local"
    namespaces: tuple[str, ...] | None = None
    namespace_selector: str | None = None
    system_namespace: str = DEFAULT_SYSTEM_NAMESPACE
    service_entries: bool = True
    legacy_endpoints: bool = True
    selector_endpoints: bool = True


def parse_params(
    params: Mapping[str, Any], system_namespace: str = DEFAULT_SYSTEM_NAMESPACE
) -> KubeParams:
    """The registry entry's parameters; raises ValueError naming the field and what was expected."""
    known = {
        "kubeconfig",
        "context",
        "clusterDomain",
        "namespaces",
        "namespaceSelector",
        "systemNamespace",
        "serviceEntries",
        "legacyEndpoints",
        "selectorEndpoints",
        "configStore",
    }
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(
            f"kubernetes registry: unknown parameter(s) {', '.join(unknown)} "
            f"(expected {', '.join(sorted(known))})"
        )
    namespaces = params.get("namespaces")
    if namespaces is not None and (
        not isinstance(namespaces, list) or not all(isinstance(n, str) and n for n in namespaces)
    ):
        raise ValueError("kubernetes registry: namespaces: expected a list of namespace names")
    if namespaces is not None and params.get("namespaceSelector"):
        raise ValueError("kubernetes registry: expected namespaces or namespaceSelector, not both")
    for flag in ("serviceEntries", "legacyEndpoints", "selectorEndpoints", "configStore"):
        if flag in params and not isinstance(params[flag], bool):
            raise ValueError(f"kubernetes registry: {flag}: expected true or false")
    for text in ("kubeconfig", "context", "clusterDomain", "namespaceSelector", "systemNamespace"):
        if params.get(text) is not None and not isinstance(params[text], str):
            raise ValueError(f"kubernetes registry: {text}: expected a string")
    return KubeParams(
        kubeconfig=params.get("kubeconfig"),
        context=params.get("context"),
        cluster_domain=str(params.get("clusterDomain") or "cluster.local").strip("."),
        namespaces=tuple(namespaces) if namespaces is not None else None,
        namespace_selector=params.get("namespaceSelector") or None,
        system_namespace=params.get("systemNamespace") or system_namespace,
        service_entries=params.get("serviceEntries", True),
        legacy_endpoints=params.get("legacyEndpoints", True),
        selector_endpoints=params.get("selectorEndpoints", True),
    )


POD_META = ("name", "namespace", "labels", "resourceVersion", "deletionTimestamp")
POD_SPEC = ("serviceAccountName", "nodeName", "hostname", "subdomain")


def _slim(resource: str, obj: dict[str, Any]) -> dict[str, Any]:
    """Keep only what the mapping reads of pods and nodes (a large cluster has many)."""
    if resource not in ("pods", "nodes"):
        return obj
    meta = obj.get("metadata") or {}
    keep = POD_META if resource == "pods" else ("name", "labels", "resourceVersion")
    out: dict[str, Any] = {"metadata": {k: meta[k] for k in keep if k in meta}}
    if resource == "pods":
        spec = obj.get("spec") or {}
        slim_spec = {k: spec[k] for k in POD_SPEC if k in spec}
        ports = [
            {
                "ports": [
                    {"name": p.get("name"), "containerPort": p.get("containerPort")}
                    for p in c.get("ports") or []
                    if p.get("name")
                ]
            }
            for c in spec.get("containers") or []
        ]
        if any(c["ports"] for c in ports):
            slim_spec["containers"] = ports
        status = obj.get("status") or {}
        out["spec"] = slim_spec
        out["status"] = {
            "podIP": status.get("podIP"),
            "phase": status.get("phase"),
            "conditions": [c for c in status.get("conditions") or [] if c.get("type") == "Ready"],
        }
    return out


def _without_version(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "resourceVersion"}
    return {**obj, "metadata": meta}


def _version(obj: Mapping[str, Any] | None) -> str:
    return str(((obj or {}).get("metadata") or {}).get("resourceVersion") or "")


class KubernetesRegistry:
    """A member of the aggregate fed by one Kubernetes cluster."""

    kind = "kubernetes"

    def __init__(
        self,
        member: Member,
        params: KubeParams,
        trust_domain: str,
        api_client: k8s.ApiClient | None = None,
    ) -> None:
        self.member = member
        self.params = params
        self.trust_domain = trust_domain
        self._api_client = api_client
        self.namespaces = NamespaceFilter(
            params.namespaces, params.namespace_selector, params.system_namespace
        )
        self.stores: dict[str, dict[ObjKey, dict[str, Any]]] = {r: {} for r in CORE}
        self.watchers: dict[str, Watcher] = {}
        self.custom: CustomResourceSet | None = None
        self._slices_by_svc: dict[ObjKey, set[ObjKey]] = {}
        self._slice_svc: dict[ObjKey, ObjKey] = {}
        self._mapped: dict[ObjKey, Mapped] = {}
        self._pod_svcs: dict[ObjKey, set[ObjKey]] = {}
        self._node_svcs: dict[str, set[ObjKey]] = {}
        self._pods_by_ns: dict[str, set[ObjKey]] = {}
        self._from_pods_by_ns: dict[str, set[ObjKey]] = {}  # selector-fallback Services
        self._host_owner: dict[str, ObjKey] = {}
        self._cr_hosts: dict[str, tuple[Service, tuple[Endpoint, ...]]] = {}
        self._shadowed: set[str] = set()  # ServiceEntry hosts hidden by a Service (logged once)
        self._dirty: set[ObjKey] = set()
        self._dirty_custom = False
        self._flush_scheduled = False
        self._synced = False
        self._watch_errors: dict[str, str] = {}
        self._stopped = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.started_at: float | None = None
        self.synced_at: float | None = None
        self.flushes = 0

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def api_client(self) -> k8s.ApiClient:
        if self._api_client is None:
            self._api_client = load_api_client(self.params.kubeconfig, self.params.context)
        return self._api_client

    def _make_watchers(self) -> dict[str, Watcher]:
        core = k8s.CoreV1Api(self.api_client)
        discovery = k8s.DiscoveryV1Api(self.api_client)
        name = self.member.name
        specs: list[tuple[str, Any, str, str]] = [
            ("services", core.list_service_for_all_namespaces, "v1", "Service"),
            (
                "endpointslices",
                discovery.list_endpoint_slice_for_all_namespaces,
                "discovery.k8s.io/v1",
                "EndpointSlice",
            ),
            ("pods", core.list_pod_for_all_namespaces, "v1", "Pod"),
            ("nodes", core.list_node, "v1", "Node"),
        ]
        if self.params.legacy_endpoints:
            specs.append(("endpoints", core.list_endpoints_for_all_namespaces, "v1", "Endpoints"))
        if self.namespaces.needs_namespace_watch:
            specs.append(("namespaces", core.list_namespace, "v1", "Namespace"))
        watchers = {
            resource: Watcher(
                resource,
                fn,
                self._sink,
                self._health,
                registry=name,
                api_version=api_version,
                kind=kind,
            )
            for resource, fn, api_version, kind in specs
        }
        if self.params.service_entries:
            self.custom = CustomResourceSet(
                REGISTRY_KINDS,
                STATIC_PARSERS,
                self.namespaces,
                EventRecorder(self.api_client),
                f"kubernetes registry {name}",
            )
            for kind in REGISTRY_KINDS:
                watchers[kind.resource] = Watcher(
                    kind.resource,
                    kind.list_fn(self.api_client),
                    self._sink,
                    self._health,
                    registry=name,
                    api_version=kind.api_version,
                    kind=kind.kind,
                )
        return watchers

    async def run(self) -> None:
        """List everything, ``mark_synced``, then follow changes until :meth:`stop`."""
        self.started_at = time.time()
        self._loop = asyncio.get_running_loop()
        if self._api_client is None:  # reads the kubeconfig: off the event loop
            self._api_client = await asyncio.to_thread(
                load_api_client, self.params.kubeconfig, self.params.context
            )
        self.watchers = self._make_watchers()
        for watcher in self.watchers.values():
            watcher.start(self._loop)
        try:
            await self._stopped.wait()
        finally:
            for watcher in self.watchers.values():
                watcher.stop()
            await asyncio.gather(*(w.join() for w in self.watchers.values()))

    async def stop(self) -> None:
        self._stopped.set()
        for watcher in self.watchers.values():
            watcher.stop()

    @property
    def synced(self) -> bool:
        return self._synced

    # -- events from the watch threads (on the loop) -----------------------------------------
    def _health(self, resource: str, error: str | None) -> None:
        if error:
            self._watch_errors[resource] = error
        else:
            self._watch_errors.pop(resource, None)
        # Group resources failing alike: an outage reads "services, pods, ...: refused" once.
        by_error: dict[str, list[str]] = {}
        for res, err in sorted(self._watch_errors.items()):
            by_error.setdefault(err, []).append(res)
        reason = "; ".join(f"{', '.join(rs)}: {err}" for err, rs in by_error.items()) or None
        self.member.set_degraded(f"kubernetes API: {reason}" if reason else None)

    def _sink(self, resource: str, events: list[WatchEvent]) -> None:
        if self._stopped.is_set():
            return
        if self.custom is not None and self.custom.owns(resource):
            if self.custom.apply(resource, events):
                self._dirty_custom = True
        elif resource == "namespaces":
            self._namespace_events(events)
        else:
            for event in events:
                if event.type == "SYNC":
                    self._replace_store(resource, event.objects)
                elif event.obj is not None:
                    key = obj_key(event.obj)
                    new = None if event.type == "DELETED" else _slim(resource, event.obj)
                    self._update_store(resource, key, new)
        if not self._synced:
            if all(w.synced for w in self.watchers.values()):
                self._initial_sync()
            return
        self._schedule_flush()

    def _namespace_events(self, events: list[WatchEvent]) -> None:
        changed: set[str] = set()
        for event in events:
            if event.type == "SYNC":
                changed |= self.namespaces.set_namespaces(event.objects)
            elif event.obj is not None and self.namespaces.update_namespace(
                event.obj, deleted=event.type == "DELETED"
            ):
                changed.add(str((event.obj.get("metadata") or {}).get("name") or ""))
        if changed:
            self._dirty.update(k for k in self.stores["services"] if k[0] in changed)
            self._dirty_custom = True

    def _replace_store(self, resource: str, objects: tuple[dict[str, Any], ...]) -> None:
        """A full list: apply exactly the differences to what we hold (a relist is exact)."""
        store = self.stores[resource]
        fresh = {obj_key(o): o for o in objects}
        for key in [k for k in store if k not in fresh]:
            self._update_store(resource, key, None)
        for key, obj in fresh.items():
            old = store.get(key)
            if old is None or _version(old) != _version(obj) or not _version(obj):
                self._update_store(resource, key, _slim(resource, obj))

    def _update_store(self, resource: str, key: ObjKey, obj: dict[str, Any] | None) -> None:
        store = self.stores[resource]
        # Node heartbeats and most pod status updates change nothing the mapping reads; without
        # this, every heartbeat would remap every Service with a pod on the node.
        if (
            resource in ("pods", "nodes")
            and obj is not None
            and key in store
            and _without_version(store[key]) == _without_version(obj)
        ):
            store[key] = obj
            return
        if obj is None:
            store.pop(key, None)
        else:
            store[key] = obj
        if resource in ("services", "endpoints"):
            self._dirty.add(key)
        elif resource == "endpointslices":
            old_svc = self._slice_svc.pop(key, None)
            if old_svc is not None:
                self._slices_by_svc.get(old_svc, set()).discard(key)
                self._dirty.add(old_svc)
            if obj is not None:
                svc_name = ((obj.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL)
                if svc_name:
                    svc = (key[0], str(svc_name))
                    self._slice_svc[key] = svc
                    self._slices_by_svc.setdefault(svc, set()).add(key)
                    self._dirty.add(svc)
        elif resource == "pods":
            if obj is None:
                self._pods_by_ns.get(key[0], set()).discard(key)
            else:
                self._pods_by_ns.setdefault(key[0], set()).add(key)
            self._dirty.update(self._pod_svcs.get(key, ()))
            # A pod may start or stop matching a selector Service computed from pods.
            self._dirty.update(self._from_pods_by_ns.get(key[0], ()))
        elif resource == "nodes":
            self._dirty.update(self._node_svcs.get(key[1], ()))

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and (self._dirty or self._dirty_custom):
            self._flush_scheduled = True
            assert self._loop is not None
            # Coalesce: everything the watch threads queued before this turn is flushed at once.
            self._loop.call_soon(self._flush)

    # -- mapping and applying ---------------------------------------------------------------
    def _remap(self, key: ObjKey) -> set[str]:
        """Recompute one Service; returns every hostname whose state may have changed."""
        old = self._mapped.pop(key, None)
        if old is not None:
            for pod in old.pods:
                self._pod_svcs.get(pod, set()).discard(key)
            for node in old.nodes:
                self._node_svcs.get(node, set()).discard(key)
            for host in old.hostnames:
                if self._host_owner.get(host) == key:
                    del self._host_owner[host]
            if old.from_pods:
                self._from_pods_by_ns.get(key[0], set()).discard(key)
        new = self._compute(key)
        touched = set(old.hostnames) if old is not None else set()
        if new is not None:
            self._mapped[key] = new
            for pod in new.pods:
                self._pod_svcs.setdefault(pod, set()).add(key)
            for node in new.nodes:
                self._node_svcs.setdefault(node, set()).add(key)
            for host in new.hostnames:
                self._host_owner[host] = key
            if new.from_pods:
                self._from_pods_by_ns.setdefault(key[0], set()).add(key)
            touched |= new.hostnames
        return touched

    def _compute(self, key: ObjKey) -> Mapped | None:
        svc = self.stores["services"].get(key)
        if svc is None or not self.namespaces.allows(key[0]):
            return None
        slices_store = self.stores["endpointslices"]
        slices = [
            slices_store[k] for k in sorted(self._slices_by_svc.get(key, ())) if k in slices_store
        ]
        pods = self.stores["pods"]
        selector_pods = None
        legacy = self.stores["endpoints"].get(key)
        if self.params.selector_endpoints and not slices and legacy is None:
            selector_pods = [pods[k] for k in sorted(self._pods_by_ns.get(key[0], ()))]
        return map_service(
            svc,
            slices,
            legacy,
            pods,
            _NodesByName(self.stores["nodes"]),
            self.params.cluster_domain,
            self.trust_domain,
            self.member.name,
            selector_pods,
        )

    def _recompute_custom(self) -> set[str]:
        old = set(self._cr_hosts)
        self._cr_hosts = {}
        if self.custom is not None:
            objects = self.custom.objects()
            services, endpoints, errors = translate(
                [o for o in objects if isinstance(o, ServiceEntrySpec)],
                [o for o in objects if isinstance(o, WorkloadSpec)],
                self.trust_domain,
                self.member.name,
            )
            for error in errors:
                log.error("kubernetes registry %s: %s", self.member.name, error)
            for service in services:
                eps = tuple(endpoints.get(service.hostname, ()))
                self._cr_hosts[service.hostname] = (service, eps)
        return old | set(self._cr_hosts)

    def _desired(self, host: str) -> tuple[Service, tuple[Endpoint, ...]] | None:
        owner = self._host_owner.get(host)
        if owner is not None:
            mapped = self._mapped[owner]
            service = next(s for s in mapped.services if s.hostname == host)
            if host in self._cr_hosts and host not in self._shadowed:
                self._shadowed.add(host)  # said once per hostname, not on every recompute
                log.warning(
                    "kubernetes registry %s: ServiceEntry host %s is also Service %s/%s; "
                    "the Service wins",
                    self.member.name,
                    host,
                    *owner,
                )
            return service, tuple(mapped.endpoints.get(host, ()))
        self._shadowed.discard(host)
        return self._cr_hosts.get(host)

    def _initial_sync(self) -> None:
        started = time.perf_counter()
        for key in list(self.stores["services"]):
            self._remap(key)
        self._recompute_custom()
        hosts = set(self._host_owner) | set(self._cr_hosts)
        services, endpoints = [], {}
        for host in sorted(hosts):
            desired = self._desired(host)
            if desired is not None:
                services.append(desired[0])
                if desired[1]:
                    endpoints[host] = desired[1]
        self._dirty.clear()
        self._dirty_custom = False
        self.member.replace(services, endpoints)
        self._synced = True
        self.synced_at = time.time()
        metrics.APPLY_SECONDS.labels(self.member.name).observe(time.perf_counter() - started)
        self.member.mark_synced()
        log.info(
            "kubernetes registry %s synced: %d services, %d pods",
            self.member.name,
            len(services),
            len(self.stores["pods"]),
        )

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._stopped.is_set():
            return
        started = time.perf_counter()
        dirty, self._dirty = self._dirty, set()
        touched: set[str] = set()
        for key in sorted(dirty):
            touched |= self._remap(key)
        if self._dirty_custom:
            self._dirty_custom = False
            touched |= self._recompute_custom()
        for host in sorted(touched):
            desired = self._desired(host)
            if desired is None:
                if host in self.member.services or host in self.member.endpoints:
                    self.member.delete_service(host)
            else:
                self.member.put_service(desired[0], desired[1])
        self.flushes += 1
        metrics.APPLY_SECONDS.labels(self.member.name).observe(time.perf_counter() - started)

    # -- introspection ----------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "clusterDomain": self.params.cluster_domain,
            "kubeconfig": self.params.kubeconfig or "(in-cluster or default)",
            "context": self.params.context,
            "namespaces": self.namespaces.describe(),
            "synced": self._synced,
            "objects": {r: len(s) for r, s in self.stores.items()},
            "watches": {name: w.describe() for name, w in self.watchers.items()},
            "errors": dict(self._watch_errors),
        }
        if self.custom is not None:
            out["customResources"] = self.custom.describe()
        return out


class _NodesByName(Mapping[str, Mapping[str, Any]]):
    """Nodes are cluster-scoped: stored under ("", name), looked up by name."""

    def __init__(self, store: Mapping[ObjKey, Mapping[str, Any]]) -> None:
        self._store = store

    def __getitem__(self, name: str) -> Mapping[str, Any]:
        return self._store[("", name)]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return (k[1] for k in self._store)

    def __len__(self) -> int:
        return len(self._store)


def create(context: AdapterContext) -> KubernetesRegistry:
    """Entry point for the ``kubernetes`` registry kind (see the module doc for parameters)."""
    params = parse_params(context.params, context.system_namespace)
    return KubernetesRegistry(context.member, params, context.trust_domain)
