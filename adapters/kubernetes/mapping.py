"""Kubernetes objects to the mesh model: pure functions over the API's own JSON.

The adapter hands these functions plain dicts exactly as the API server serialises them
(camelCase keys, as ``kubectl get -o json`` shows), so the mapping can be tested without a client
and without the cost of the client's model classes (which matters at thousands of pods).

What a Kubernetes Service becomes:

- hostname ``<name>.<namespace>.svc.<clusterDomain>``; namespace and labels from the Service;
- ports with protocol from ``appProtocol`` when set, else from the port-name convention (the name
  itself, or its prefix before ``-``: ``http``, ``http2``, ``grpc``, ``tcp``, ``tls``,
  ``https``, ``mongo``, ``redis``), else TCP. UDP and SCTP ports are left out: Envoy's mesh
  listeners carry TCP only. An unnamed port (allowed when a Service has one) is called
  ``port-<number>`` on both the Service and its endpoints so the two still join;
- endpoints from the EndpointSlices labelled ``kubernetes.io/service-name``. The legacy Endpoints
  object is used only when a Service has no slice at all (an old controller). When a Service with
  a selector has neither, nothing runs the endpoint controllers (a bare API server, a virtual
  cluster), and the pods are read directly, by the controller's own rules: pods of the Service's
  namespace matching its selector, with an IP, not finished; ready when their ``Ready`` condition
  is true; named target ports resolved against the pod's container ports. Each
  endpoint carries its pod's labels, the SPIFFE identity of the pod's service account, and the
  locality from its node's ``topology.kubernetes.io/region`` / ``zone`` labels (the slice's
  ``zone`` when the node is unknown). An endpoint that is not ready is kept, marked unhealthy:
  Envoy takes it out of rotation and ``proxy-config`` still shows it;
- ``clusterIP: None`` (headless): no address, and every endpoint with a ``hostname`` (the
  StatefulSet case) also becomes its own one-endpoint service
  ``<hostname>.<service>.<namespace>.svc.<clusterDomain>``, so a request for one pod's name reaches
  that pod and no other;
- ``type: ExternalName``: a DNS-resolved, mesh-external service whose one endpoint is the external
  name.

Promises: the same objects, in any order, give equal model objects (endpoints sorted and
de-duplicated, a ready copy of an endpoint winning over a not-ready one); nothing here raises on
odd input: a field of the wrong shape is treated as absent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from meshfed.registry.model import (
    Endpoint,
    Locality,
    Location,
    Port,
    Protocol,
    Resolution,
    Service,
    spiffe_id,
)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
REGION_LABELS = ("topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/region")
ZONE_LABELS = ("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone")
SUBZONE_LABEL = "topology.meshfed.io/subzone"

# appProtocol values (IANA names and the kubernetes.io/ ones) that name a protocol we know.
APP_PROTOCOLS: dict[str, Protocol] = {
    "http": Protocol.HTTP,
    "http2": Protocol.HTTP2,
    "h2c": Protocol.HTTP2,
    "kubernetes.io/h2c": Protocol.HTTP2,
    "kubernetes.io/ws": Protocol.HTTP,
    "kubernetes.io/wss": Protocol.TLS,
    "grpc": Protocol.GRPC,
    "grpc-web": Protocol.GRPC,
    "tcp": Protocol.TCP,
    "tls": Protocol.TLS,
    "https": Protocol.TLS,
    "mongo": Protocol.MONGO,
    "redis": Protocol.REDIS,
}
# The Istio port-naming convention: the name, or its part before the first "-".
NAME_PREFIXES: dict[str, Protocol] = {
    "http": Protocol.HTTP,
    "http2": Protocol.HTTP2,
    "grpc": Protocol.GRPC,
    "tcp": Protocol.TCP,
    "tls": Protocol.TLS,
    "https": Protocol.TLS,
    "mongo": Protocol.MONGO,
    "redis": Protocol.REDIS,
}
MESH_PROTOCOLS = frozenset({"TCP", ""})  # Service/slice port protocols Envoy's listeners carry

ObjKey = tuple[str, str]  # (namespace, name); nodes use ("", name)


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return _map(obj.get("metadata"))


def obj_key(obj: Mapping[str, Any]) -> ObjKey:
    m = meta(obj)
    return (str(m.get("namespace") or ""), str(m.get("name") or ""))


def labels_of(obj: Mapping[str, Any] | None) -> dict[str, str]:
    if not obj:
        return {}
    return {str(k): str(v) for k, v in _map(meta(obj).get("labels")).items()}


def service_hostname(name: str, namespace: str, cluster_domain: str) -> str:
    return f"{name}.{namespace}.svc.{cluster_domain}"


def protocol_for(name: str, app_protocol: str | None = None) -> Protocol:
    """The port's protocol: ``appProtocol`` first, then the naming convention, then TCP."""
    if app_protocol:
        found = APP_PROTOCOLS.get(app_protocol.strip().lower())
        if found is not None:
            return found
    lowered = (name or "").lower()
    return NAME_PREFIXES.get(lowered) or NAME_PREFIXES.get(lowered.split("-", 1)[0], Protocol.TCP)


def port_name(name: Any, number: int) -> str:
    """A model port name; Kubernetes allows one unnamed port, the model needs a name."""
    return str(name) if name else f"port-{number}"


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


@attrs.frozen(slots=True)
class ServicePort:
    port: Port
    target: int | None  # numeric targetPort; None when named (resolved by the slices)


def service_ports(svc: Mapping[str, Any]) -> list[ServicePort]:
    out = []
    for raw in _list(_map(svc.get("spec")).get("ports")):
        raw = _map(raw)
        number = _int(raw.get("port"))
        if number is None or str(raw.get("protocol") or "TCP").upper() not in MESH_PROTOCOLS:
            continue
        name = port_name(raw.get("name"), number)
        protocol = protocol_for(str(raw.get("name") or ""), raw.get("appProtocol"))
        out.append(ServicePort(Port(number, name, protocol), _int(raw.get("targetPort"))))
    return out


def locality_for(node: Mapping[str, Any] | None, zone_hint: str = "") -> Locality:
    labels = labels_of(node)
    region = next((labels[k] for k in REGION_LABELS if labels.get(k)), "")
    zone = next((labels[k] for k in ZONE_LABELS if labels.get(k)), "") or zone_hint
    return Locality(region, zone, labels.get(SUBZONE_LABEL, ""))


@attrs.frozen(slots=True)
class RawEndpoint:
    """One address of a slice (or legacy Endpoints subset), before it meets its pod and node."""

    address: str
    ports: tuple[tuple[str, int], ...]  # slice port name ("" for unnamed) -> number
    ready: bool
    hostname: str
    node: str
    zone: str
    pod: ObjKey | None


def slice_endpoints(slice_obj: Mapping[str, Any]) -> list[RawEndpoint]:
    if str(slice_obj.get("addressType") or "IPv4") == "FQDN":
        return []  # FQDN slices are not produced for mesh services; nothing to dial directly
    ports = tuple(
        (str(p.get("name") or ""), int(p["port"]))
        for p in map(_map, _list(slice_obj.get("ports")))
        if _int(p.get("port")) is not None
        and str(p.get("protocol") or "TCP").upper() in MESH_PROTOCOLS
    )
    out = []
    for ep in map(_map, _list(slice_obj.get("endpoints"))):
        addresses = _list(ep.get("addresses"))
        if not addresses:
            continue
        conditions = _map(ep.get("conditions"))
        # The API says a nil "ready" means ready; "serving" covers terminating pods still up,
        # but the mesh takes terminating pods out of rotation like kube-proxy does.
        ready = conditions.get("ready") is not False
        ref = _map(ep.get("targetRef"))
        pod = None
        if ref.get("kind") == "Pod" and ref.get("name"):
            pod = (str(ref.get("namespace") or meta(slice_obj).get("namespace") or ""), ref["name"])
        out.append(
            RawEndpoint(
                address=str(addresses[0]),
                ports=ports,
                ready=ready,
                hostname=str(ep.get("hostname") or ""),
                node=str(ep.get("nodeName") or ""),
                zone=str(ep.get("zone") or ""),
                pod=pod,
            )
        )
    return out


def legacy_endpoints(endpoints_obj: Mapping[str, Any]) -> list[RawEndpoint]:
    """The legacy core/v1 Endpoints object, for Services that have no EndpointSlice."""
    namespace = str(meta(endpoints_obj).get("namespace") or "")
    out = []
    for subset in map(_map, _list(endpoints_obj.get("subsets"))):
        ports = tuple(
            (str(p.get("name") or ""), int(p["port"]))
            for p in map(_map, _list(subset.get("ports")))
            if _int(p.get("port")) is not None
            and str(p.get("protocol") or "TCP").upper() in MESH_PROTOCOLS
        )
        for key, ready in (("addresses", True), ("notReadyAddresses", False)):
            for addr in map(_map, _list(subset.get(key))):
                if not addr.get("ip"):
                    continue
                ref = _map(addr.get("targetRef"))
                pod = None
                if ref.get("kind") == "Pod" and ref.get("name"):
                    pod = (str(ref.get("namespace") or namespace), str(ref["name"]))
                out.append(
                    RawEndpoint(
                        address=str(addr["ip"]),
                        ports=ports,
                        ready=ready,
                        hostname=str(addr.get("hostname") or ""),
                        node=str(addr.get("nodeName") or ""),
                        zone="",
                        pod=pod,
                    )
                )
    return out


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    if meta(pod).get("deletionTimestamp"):
        return False  # terminating pods leave rotation, as the slice controller marks them
    for cond in map(_map, _list(_map(pod.get("status")).get("conditions"))):
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def _container_port(pod: Mapping[str, Any], name: str) -> int | None:
    for container in map(_map, _list(_map(pod.get("spec")).get("containers"))):
        for port in map(_map, _list(container.get("ports"))):
            if port.get("name") == name:
                return _int(port.get("containerPort"))
    return None


def selector_endpoints(
    svc: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]
) -> list[RawEndpoint]:
    """Endpoints of a selector Service computed from its pods, as the slice controller would."""
    namespace, name = obj_key(svc)
    spec = _map(svc.get("spec"))
    selector = {str(k): str(v) for k, v in _map(spec.get("selector")).items()}
    if not selector:
        return []  # a Service without selector has manually managed endpoints only
    raw_ports = [_map(p) for p in _list(spec.get("ports"))]
    out = []
    for pod in pods:
        labels = labels_of(pod)
        if any(labels.get(k) != v for k, v in selector.items()):
            continue
        status = _map(pod.get("status"))
        address = status.get("podIP")
        if not address or status.get("phase") in ("Succeeded", "Failed"):
            continue
        ports = []
        for raw in raw_ports:
            number = _int(raw.get("port"))
            if number is None or str(raw.get("protocol") or "TCP").upper() not in MESH_PROTOCOLS:
                continue
            target = raw.get("targetPort")
            if isinstance(target, str) and not target.isdigit():
                resolved = _container_port(pod, target)
                if resolved is None:
                    continue  # the controller leaves out ports a pod does not expose
            else:
                resolved = _int(target) or number
            ports.append((str(raw.get("name") or ""), resolved))
        pod_spec = _map(pod.get("spec"))
        hostname = ""
        if pod_spec.get("hostname") and pod_spec.get("subdomain") == name:
            hostname = str(pod_spec["hostname"])
        out.append(
            RawEndpoint(
                address=str(address),
                ports=tuple(ports),
                ready=_pod_ready(pod),
                hostname=hostname,
                node=str(pod_spec.get("nodeName") or ""),
                zone="",
                pod=(namespace, str(meta(pod).get("name") or "")),
            )
        )
    return out


@attrs.frozen(slots=True)
class Mapped:
    """What one Kubernetes Service contributes to the mesh, and what it was computed from."""

    services: tuple[Service, ...]
    endpoints: Mapping[str, tuple[Endpoint, ...]]
    pods: frozenset[ObjKey] = frozenset()  # pods it read (recompute when one changes)
    nodes: frozenset[str] = frozenset()  # nodes it read
    from_pods: bool = False  # endpoints computed from the selector (no slices, no Endpoints)

    @property
    def hostnames(self) -> frozenset[str]:
        return frozenset(s.hostname for s in self.services)


def _endpoint(
    raw: RawEndpoint,
    ports: list[ServicePort],
    pods: Mapping[ObjKey, Mapping[str, Any]],
    nodes: Mapping[str, Mapping[str, Any]],
    trust_domain: str,
    registry: str,
    hostname: str,
) -> Endpoint:
    pod = pods.get(raw.pod) if raw.pod else None
    pod_spec = _map(pod.get("spec")) if pod else {}
    node_name = raw.node or str(pod_spec.get("nodeName") or "")
    by_name = dict(raw.ports)
    target_ports = {}
    for sp in ports:
        # The slice names ports as the Service does ("" when the Service's one port is unnamed).
        slice_name = "" if sp.port.name == f"port-{sp.port.number}" else sp.port.name
        number = by_name.get(slice_name, by_name.get(sp.port.name))
        target_ports[sp.port.name] = number or sp.target or sp.port.number
    identity = ""
    if pod is not None:
        account = str(pod_spec.get("serviceAccountName") or "default")
        identity = spiffe_id(trust_domain, raw.pod[0] if raw.pod else "", account)
    return Endpoint(
        address=raw.address,
        ports=target_ports,
        labels=labels_of(pod),
        identity=identity,
        locality=locality_for(nodes.get(node_name), raw.zone),
        healthy=raw.ready,
        weight=1,
        registry=registry,
        hostname=hostname,
        workload=raw.pod[1] if raw.pod else "",
    )


def _dedupe(endpoints: Iterable[Endpoint]) -> tuple[Endpoint, ...]:
    """One endpoint per (address, ports); a ready copy wins over a not-ready one."""
    best: dict[tuple[str, tuple[tuple[str, int], ...]], Endpoint] = {}
    for ep in endpoints:
        key = (ep.address, ep.ports.items_tuple)
        old = best.get(key)
        if (
            old is None
            or (ep.healthy and not old.healthy)
            or (
                ep.healthy == old.healthy
                and (ep.hostname, ep.identity) < (old.hostname, old.identity)
            )
        ):
            best[key] = ep
    return tuple(sorted(best.values(), key=lambda e: e.key))


def map_service(
    svc: Mapping[str, Any],
    slices: Iterable[Mapping[str, Any]],
    legacy: Mapping[str, Any] | None,
    pods: Mapping[ObjKey, Mapping[str, Any]],
    nodes: Mapping[str, Mapping[str, Any]],
    cluster_domain: str,
    trust_domain: str,
    registry: str = "",
    selector_pods: Iterable[Mapping[str, Any]] | None = None,
) -> Mapped:
    """Map one Service with its slices (or legacy Endpoints), pods and nodes to the model.

    ``selector_pods`` (the pods of the Service's namespace) enables the no-controller fallback:
    used only when the Service has neither slices nor a legacy Endpoints object.
    """
    namespace, name = obj_key(svc)
    spec = _map(svc.get("spec"))
    host = service_hostname(name, namespace, cluster_domain)
    ports = service_ports(svc)
    labels = labels_of(svc)
    if spec.get("type") == "ExternalName":
        external = str(spec.get("externalName") or "").rstrip(".").lower()
        service = Service(
            hostname=host,
            namespace=namespace,
            ports=[sp.port for sp in ports],
            address=None,
            resolution=Resolution.DNS,
            location=Location.MESH_EXTERNAL,
            labels=labels,
            registries=(registry,) if registry else (),
        )
        eps: tuple[Endpoint, ...] = ()
        if external:
            eps = (
                Endpoint(
                    address=external,
                    ports={sp.port.name: sp.port.number for sp in ports},
                    registry=registry,
                ),
            )
        return Mapped((service,), {host: eps} if eps else {})

    cluster_ip = spec.get("clusterIP")
    headless = cluster_ip in (None, "", "None")
    service = Service(
        hostname=host,
        namespace=namespace,
        ports=[sp.port for sp in ports],
        address=None if headless else str(cluster_ip),
        resolution=Resolution.STATIC,
        location=Location.MESH_INTERNAL,
        labels=labels,
        registries=(registry,) if registry else (),
    )
    slice_list = list(slices)
    raws = [r for s in slice_list for r in slice_endpoints(s)]
    from_pods = False
    if not slice_list and legacy is not None:
        raws = legacy_endpoints(legacy)
    elif not slice_list and selector_pods is not None:
        raws = selector_endpoints(svc, selector_pods)
        from_pods = bool(_map(spec.get("selector")))
    endpoints = []
    per_pod: dict[str, list[Endpoint]] = {}
    for raw in raws:
        pod_host = ""
        if headless and raw.hostname:
            pod_host = f"{raw.hostname}.{name}.{namespace}.svc.{cluster_domain}"
        ep = _endpoint(raw, ports, pods, nodes, trust_domain, registry, pod_host)
        endpoints.append(ep)
        if pod_host:
            per_pod.setdefault(pod_host, []).append(ep)
    services = [service]
    by_host: dict[str, tuple[Endpoint, ...]] = {}
    merged = _dedupe(endpoints)
    if merged:
        by_host[host] = merged
    for pod_host in sorted(per_pod):
        services.append(attrs.evolve(service, hostname=pod_host))
        by_host[pod_host] = _dedupe(per_pod[pod_host])
    used_pods = frozenset(r.pod for r in raws if r.pod)
    used_nodes = frozenset(r.node for r in raws if r.node) | frozenset(
        str(_map(pods[r.pod].get("spec")).get("nodeName") or "")
        for r in raws
        if r.pod and r.pod in pods and not r.node
    )
    return Mapped(tuple(services), by_host, used_pods, used_nodes - {""}, from_pods)
