"""Eureka instances to mesh services and endpoints.

Why a module of its own: the translation embodies the adapter's contract with operators (which
hostname a Eureka app gets, which instances take traffic, which ports and protocols exist), so it
is kept pure and small enough to read in one sitting, and documented in ``docs/eureka.md``.

Rules (each is pinned by a unit test):

- **Hostname.** Every VIP in the instance's ``vipAddress`` (Eureka allows a comma-separated list)
  names a service; without a VIP the ``secureVipAddress``, then the app name, is used. The name is
  put through ``hostnameTemplate`` (``{vip}``, ``{app}``), lower-cased, and characters a DNS name
  cannot hold become ``-``. ``{vip}.eureka`` gives a DNS-like suffix; a template that yields the
  hostname another registry uses merges the two services in the aggregate.
- **Health.** Only an instance whose status is ``UP`` and whose override (set with
  ``PUT .../status?value=``) is ``UP`` or absent is healthy. ``DOWN``, ``STARTING``,
  ``OUT_OF_SERVICE`` and ``UNKNOWN`` leave rotation but stay listed (unhealthy), so the debug view
  shows why an instance takes no traffic. The server already folds the override into ``status``;
  checking the override too keeps an instance out even from a server whose rules would not.
- **Ports.** The plain port becomes service port ``http`` (number ``servicePort``, default 80,
  the port a Spring client's ``http://app-name/`` implies) and the secure port service port
  ``https`` (``secureServicePort``, default 443); each endpoint's target port is its instance's
  own port. A port is declared only when *every* instance of the service enables it: the model
  sends an endpoint to every service port, and a port an instance disabled must never get traffic.
  A port left out that way is reported as a problem.
- **Protocol.** The ``protocol`` metadata key sets the plain port's protocol, else Istio 0.2's
  ``istio.protocol`` key (so instances registered for Istio 0.2 keep their protocol); default
  HTTP: by Eureka convention ``port`` is the instance's HTTP port, its ``homePageUrl``.
  ``secureProtocol`` sets the secure port's (default TLS: the instance terminates TLS itself on
  ``securePort``, so the mesh can only route the encrypted stream by SNI and must not parse it
  as HTTP). When
  instances disagree the most common value wins (ties by name), so one instance cannot flip it.
- **Labels and locality.** Metadata entries become endpoint labels as they are. Locality: zone
  from Amazon data-centre info ``availability-zone``, else metadata ``zone`` or
  ``availability-zone``; region from the region the instance was fetched from (``region`` /
  ``remoteRegions``, when configured), else metadata ``region``, else derived from an AWS zone
  name (``us-east-1a`` -> ``us-east-1``); subzone from metadata ``subzone``.
- **Addresses.** ``ipAddr`` must be an IP address: anything else (a host name, garbage from a
  hand-written registration) is left out and reported, because one bad address makes Envoy
  reject the whole endpoint update it is part of.
- **Duplicates.** Two instances with the same address and ports are one endpoint (the healthy
  one, if any), since they are the same socket.

Promise: the output depends only on the set of instances, never on their order, so an unchanged
registry maps to equal objects and causes no push.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter, defaultdict
from collections.abc import Iterable

import attrs

from meshfed.adapters.eureka.reconcile import Apps
from meshfed.adapters.eureka.wire import AMAZON_DATA_CENTER, UNKNOWN, UP, Instance
from meshfed.registry.model import Endpoint, Locality, Port, Protocol, Service

HTTP_PORT_NAME = "http"
SECURE_PORT_NAME = "https"
PROTOCOL_KEY = "protocol"
ISTIO_PROTOCOL_KEY = "istio.protocol"  # Istio 0.2's Eureka platform read the protocol here
SECURE_PROTOCOL_KEY = "secureProtocol"

_NOT_DNS = re.compile(r"[^a-z0-9.-]+")
_AWS_ZONE = re.compile(r"^([a-z]{2}(?:-[a-z]+)+-\d+)[a-z]$")


@attrs.frozen(slots=True)
class MappingSettings:
    """The mesh-config knobs that shape the translation."""

    registry: str
    hostname_template: str = "{vip}"
    namespace: str = "default"
    service_port: int = 80
    secure_service_port: int = 443


@attrs.frozen(slots=True)
class Model:
    """What a Eureka registry contributes to the mesh, plus what could not be translated."""

    services: tuple[Service, ...]
    endpoints: dict[str, tuple[Endpoint, ...]]
    problems: tuple[str, ...] = ()


def dns_name(value: str) -> str:
    """``value`` lower-cased with characters a DNS name cannot hold replaced by ``-``."""
    return _NOT_DNS.sub("-", value.strip().lower()).strip(".-")


def hostnames(instance: Instance, template: str) -> list[str]:
    """The service hostnames an instance belongs to (one per VIP)."""
    vips = [v.strip() for v in instance.vip_address.split(",") if v.strip()]
    if not vips:
        vips = [v.strip() for v in instance.secure_vip_address.split(",") if v.strip()]
    if not vips:
        vips = [instance.app]
    app = instance.app.lower()
    names = {dns_name(template.format(vip=vip.lower(), app=app)) for vip in vips}
    return sorted(n for n in names if n)


def healthy(instance: Instance) -> bool:
    """In rotation: status UP and no override other than UP."""
    return instance.status == UP and instance.overridden_status in (UP, UNKNOWN)


def locality(instance: Instance) -> Locality:
    zone = ""
    if instance.data_center.name == AMAZON_DATA_CENTER:
        zone = instance.data_center.get("availability-zone")
    zone = zone or instance.meta("zone") or instance.meta("availability-zone")
    # The region the adapter fetched the instance from (the cluster's own ``region`` or a
    # ``remoteRegions`` entry) is the cluster topology, which the registrant cannot misstate.
    region = instance.region or instance.meta("region")
    if not region and (match := _AWS_ZONE.match(zone)):
        region = match.group(1)
    return Locality(region=region, zone=zone, subzone=instance.meta("subzone"))


def _protocol(
    instances: Iterable[Instance],
    keys: tuple[str, ...],
    default: Protocol,
    host: str,
    problems: list[str],
) -> Protocol:
    votes: Counter[Protocol] = Counter()
    for instance in instances:
        key, value = next(((k, v) for k in keys if (v := instance.meta(k))), (keys[0], ""))
        if not value:
            votes[default] += 1
            continue
        try:
            votes[Protocol.parse(value)] += 1
        except ValueError:
            problems.append(
                f"{host}: instance {instance.instance_id} has metadata {key}={value!r}, "
                f"expected one of {', '.join(p.value for p in Protocol)}; counted as "
                f"{default.value}"
            )
            votes[default] += 1
    return min(votes, key=lambda p: (-votes[p], p.value))


def _service(
    host: str, instances: list[Instance], settings: MappingSettings, problems: list[str]
) -> tuple[Service, tuple[Endpoint, ...]]:
    plain = all(i.port.enabled and i.port.number > 0 for i in instances)
    secure = all(i.secure_port.enabled and i.secure_port.number > 0 for i in instances)
    for name, declared, enabled_somewhere in (
        (HTTP_PORT_NAME, plain, any(i.port.enabled for i in instances)),
        (SECURE_PORT_NAME, secure, any(i.secure_port.enabled for i in instances)),
    ):
        if enabled_somewhere and not declared:
            problems.append(
                f"{host}: port {name} is not declared because some instances disable it"
            )
    ports: list[Port] = []
    if plain:
        protocol = _protocol(
            instances, (PROTOCOL_KEY, ISTIO_PROTOCOL_KEY), Protocol.HTTP, host, problems
        )
        ports.append(Port(settings.service_port, HTTP_PORT_NAME, protocol))
    if secure:
        protocol = _protocol(instances, (SECURE_PROTOCOL_KEY,), Protocol.TLS, host, problems)
        ports.append(Port(settings.secure_service_port, SECURE_PORT_NAME, protocol))
    service = Service(
        hostname=host,
        namespace=settings.namespace,
        ports=ports,
        registries=(settings.registry,),
    )
    by_socket: dict[tuple[str, tuple[tuple[str, int], ...]], Endpoint] = {}
    # Sorted so that, among duplicates, the choice below never depends on arrival order.
    for instance in sorted(instances, key=lambda i: (not healthy(i), i.instance_id)):
        target: dict[str, int] = {}
        if plain:
            target[HTTP_PORT_NAME] = instance.port.number
        if secure:
            target[SECURE_PORT_NAME] = instance.secure_port.number
        endpoint = Endpoint(
            address=instance.ip_addr,
            ports=target,
            labels=dict(instance.metadata),
            locality=locality(instance),
            healthy=healthy(instance),
            registry=settings.registry,
            workload=instance.instance_id,
        )
        by_socket.setdefault((endpoint.address, endpoint.ports.items_tuple), endpoint)
    return service, tuple(sorted(by_socket.values(), key=lambda e: e.key))


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _placement(
    app: str, instance_id: str, instance: Instance, settings: MappingSettings
) -> tuple[list[str], str | None]:
    """The hostnames an instance joins, or none and the reason it is left out."""
    if not _is_ip(instance.ip_addr):
        return [], (
            f"{app}/{instance_id}: ipAddr {instance.ip_addr!r} is not an IP address; "
            "left out of the mesh"
        )
    names = hostnames(instance, settings.hostname_template)
    if not names:
        return [], f"{app}/{instance_id}: no usable hostname; left out of the mesh"
    return names, None


def build_model(apps: Apps, settings: MappingSettings) -> Model:
    """Translate every instance of ``apps`` into services and endpoints (the reference path)."""
    problems: list[str] = []
    by_host: dict[str, list[Instance]] = defaultdict(list)
    for app in sorted(apps):
        for instance_id in sorted(apps[app]):
            instance = apps[app][instance_id]
            names, problem = _placement(app, instance_id, instance, settings)
            if problem:
                problems.append(problem)
            for host in names:
                by_host[host].append(instance)
    services: list[Service] = []
    endpoints: dict[str, tuple[Endpoint, ...]] = {}
    for host in sorted(by_host):
        service, eps = _service(host, by_host[host], settings, problems)
        services.append(service)
        endpoints[host] = eps
    return Model(tuple(services), endpoints, tuple(problems))


class IncrementalMapper:
    """The model of one Eureka registry, re-mapping only the hostnames a change touches.

    Why: a delta usually changes one instance, but mapping every instance again costs time
    linear in the registry (about 35 ms per 2,000 instances) on the event loop the hub shares
    with Pilot. The mapper indexes which hostnames each application's instances join and which
    applications feed each hostname; :meth:`update` re-maps just the hostnames of the changed
    applications, before and after the change. Its result always equals :func:`build_model` of
    the same applications (a unit test checks that over random changes).
    """

    def __init__(self, settings: MappingSettings) -> None:
        self.settings = settings
        self._reset()

    def _reset(self) -> None:
        self._services: dict[str, Service] = {}
        self._endpoints: dict[str, tuple[Endpoint, ...]] = {}
        self._hosts_of_app: dict[str, tuple[str, ...]] = {}
        self._apps_of_host: dict[str, set[str]] = {}
        self._app_problems: dict[str, tuple[str, ...]] = {}
        self._host_problems: dict[str, tuple[str, ...]] = {}

    def rebuild(self, apps: Apps) -> Model:
        """Forget everything and map ``apps`` from scratch."""
        self._reset()
        return self.update(apps, apps.keys())

    def update(self, apps: Apps, changed_apps: Iterable[str]) -> Model:
        """Re-map the hostnames that the ``changed_apps`` of ``apps`` join or used to join."""
        touched: set[str] = set()
        for app in changed_apps:
            for host in self._hosts_of_app.pop(app, ()):
                touched.add(host)
                feeding = self._apps_of_host.get(host)
                if feeding is not None:
                    feeding.discard(app)
            self._app_problems.pop(app, None)
            hosts: set[str] = set()
            problems: list[str] = []
            instances = apps.get(app, {})
            for instance_id in sorted(instances):
                names, problem = _placement(app, instance_id, instances[instance_id], self.settings)
                if problem:
                    problems.append(problem)
                hosts.update(names)
            if hosts:
                self._hosts_of_app[app] = tuple(sorted(hosts))
                for host in hosts:
                    self._apps_of_host.setdefault(host, set()).add(app)
            if problems:
                self._app_problems[app] = tuple(problems)
            touched |= hosts
        for host in touched:
            self._remap(apps, host)
        return self.model()

    def _remap(self, apps: Apps, host: str) -> None:
        self._host_problems.pop(host, None)
        feeding = self._apps_of_host.get(host)
        if not feeding:
            self._apps_of_host.pop(host, None)
            self._services.pop(host, None)
            self._endpoints.pop(host, None)
            return
        # The same instance order as build_model: by application, then by instance id.
        instances = [
            instance
            for app in sorted(feeding)
            for instance_id, instance in sorted(apps.get(app, {}).items())
            if host in _placement(app, instance_id, instance, self.settings)[0]
        ]
        problems: list[str] = []
        self._services[host], self._endpoints[host] = _service(
            host, instances, self.settings, problems
        )
        if problems:
            self._host_problems[host] = tuple(problems)

    def model(self) -> Model:
        problems = [p for app in sorted(self._app_problems) for p in self._app_problems[app]]
        problems += [p for host in sorted(self._host_problems) for p in self._host_problems[host]]
        return Model(
            tuple(self._services[h] for h in sorted(self._services)),
            {h: self._endpoints[h] for h in sorted(self._endpoints)},
            tuple(problems),
        )
