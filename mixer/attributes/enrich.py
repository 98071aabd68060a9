"""Attributes derived from the federated registry: who is at ``source.ip`` / ``destination.ip``,
or who is ``source.uid`` / ``destination.uid``.

Istio 0.2 filled ``source.labels``, ``destination.service`` and friends only for Kubernetes pods.
Here they come from the unified model through the aggregate's indexes -- by endpoint address
(:meth:`AggregateRegistry.at_address`, the one Pilot uses) and by workload name and namespace
(:meth:`AggregateRegistry.of_workload`) -- so a Consul node, a Eureka instance and a VM get the
same attributes as a pod. For each side (``source``, ``destination``) with an ``.ip`` (or, when
it has none, a ``.uid``):

- ``labels``: the endpoint's labels; ``service``: the service hostname (a given
  ``destination.service`` picks among several services of that workload);
- ``namespace``: the workload's namespace (its identity's, else its service's);
- ``serviceAccount``: the account of the endpoint's SPIFFE identity;
- ``name``: the workload's name (:func:`~meshfed.registry.model.workload_name`: the pod, the
  WorkloadEntry, the Consul node, the Eureka instance id; else the endpoint's address);
- ``uid``: ``<registry>://<name>.<namespace>`` (Istio: ``kubernetes://<pod>.<namespace>``);
- ``ip``: the endpoint's address, when the side was found by its uid.

A uid is read as ``<scheme>://<name>.<namespace>``: the workload ``name`` in ``namespace``,
the scheme choosing among registries when it names one (so Istio's ``kubernetes://`` finds
a pod of a Kubernetes registry of any name). What the client sent always wins: enrichment only
adds attributes that are absent. Referenced attributes: a derived attribute the client did not
send is reported as absent, plus the ``.ip`` (or ``.uid``) it was derived from
(:func:`client_refs`), so a client cache keys on what identified the workload.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Mapping
from typing import Any, Protocol

from meshfed.mixer.attributes.types import as_ip
from meshfed.registry.model import Endpoint, Service, parse_spiffe_id, workload_name

SIDES = ("source", "destination")
DERIVED = ("labels", "service", "namespace", "name", "serviceAccount", "uid", "ip")
KEYS = ("ip", "uid")  # what identifies a side's workload, in order of preference
EXACT, ABSENCE = 2, 1


class AddressIndex(Protocol):
    def at_address(self, address: str) -> tuple[tuple[Service, Endpoint], ...]: ...

    def of_workload(self, name: str, namespace: str) -> tuple[tuple[Service, Endpoint], ...]: ...


def parse_uid(uid: str) -> tuple[str, str, str] | None:
    """``scheme://name.namespace`` -> (scheme, name, namespace); None if not of that form."""
    scheme, sep, rest = uid.partition("://")
    name, dot, namespace = rest.rpartition(".")
    if not sep or not dot or not name or not namespace:
        return None
    return scheme, name, namespace


def _workload(
    pairs: tuple[tuple[Service, Endpoint], ...],
    wanted_service: Any,
    bag: Mapping[str, Any],
    side: str,
) -> dict[str, Any]:
    """The attributes of the chosen workload that ``bag`` lacks, by full name."""
    chosen = pairs[0]
    if isinstance(wanted_service, str):
        chosen = next((p for p in pairs if p[0].hostname == wanted_service), chosen)
    service, endpoint = chosen
    account = ""
    namespace = service.namespace
    if endpoint.identity:  # workload_namespace's rule, with the account from the same parse
        with contextlib.suppress(ValueError):  # not a workload identity: the service's
            _, namespace, account = parse_spiffe_id(endpoint.identity)
    name = workload_name(endpoint)
    out: dict[str, Any] = {
        f"{side}.labels": dict(endpoint.labels),
        f"{side}.service": service.hostname,
        f"{side}.namespace": namespace,
        f"{side}.name": name,
        f"{side}.uid": f"{endpoint.registry or service.registry}://{name}.{namespace}",
    }
    if account:
        out[f"{side}.serviceAccount"] = account
    if f"{side}.ip" not in bag:  # found by uid (parsing an address is not free: only then)
        with contextlib.suppress(ValueError):  # a DNS name is no IP_ADDRESS
            out[f"{side}.ip"] = ipaddress.ip_address(endpoint.address)
    return {k: v for k, v in out.items() if k not in bag}


def _address(value: Any) -> str:
    """The index's form of an IP_ADDRESS attribute value (``inet_ntoa`` for the usual 4 bytes:
    a tenth of ``ipaddress``'s cost, on every Check)."""
    if isinstance(value, bytes) and len(value) == 4:
        return socket.inet_ntoa(value)
    return str(as_ip(value))


class Enricher:
    """Adds registry-derived attributes to a bag."""

    def __init__(self, index: AddressIndex) -> None:
        self.index = index

    def _pairs(self, bag: Mapping[str, Any], side: str) -> tuple[tuple[Service, Endpoint], ...]:
        ip = bag.get(f"{side}.ip")
        if ip is not None:
            return self.index.at_address(_address(ip))
        uid = bag.get(f"{side}.uid")
        parsed = parse_uid(uid) if isinstance(uid, str) else None
        if parsed is None:
            return ()
        scheme, name, namespace = parsed
        pairs = self.index.of_workload(name, namespace)
        # the scheme picks a registry when it names one of those the workload is in
        mine = tuple(p for p in pairs if (p[1].registry or p[0].registry) == scheme)
        return mine or pairs

    def derived(self, bag: Mapping[str, Any]) -> dict[str, Any]:
        """The attributes the registry adds to ``bag`` (absent ones only)."""
        out: dict[str, Any] = {}
        for side in SIDES:
            pairs = self._pairs(bag, side)
            if not pairs:
                continue
            out.update(_workload(pairs, bag.get(f"{side}.service"), bag, side))
        return out

    def enrich(self, bag: Mapping[str, Any]) -> dict[str, Any]:
        derived = self.derived(bag)
        if not derived:
            return bag if isinstance(bag, dict) else dict(bag)
        derived.update(bag)
        return derived


def client_refs(refs: Mapping[Any, int], wire: Mapping[str, Any]) -> dict[Any, int]:
    """Referenced attributes in terms of what the client sent (see the module docstring)."""
    out: dict[Any, int] = {}
    for key, condition in refs.items():
        name = key if isinstance(key, str) else key[0]
        side, _, attr = name.partition(".")
        if name in wire or side not in SIDES or attr not in DERIVED:
            out[key] = condition
            continue
        out[name] = ABSENCE
        # derived from the first identifying attribute the client sent (none: the address)
        source = next((f"{side}.{k}" for k in KEYS if f"{side}.{k}" in wire), f"{side}.ip")
        out[source] = EXACT if source in wire else ABSENCE
        if source.endswith(".uid"):
            out[f"{side}.ip"] = ABSENCE  # an address sent would have been preferred
    return out
