"""Attributes derived from the federated registry: who is at ``source.ip`` / ``destination.ip``.

Istio 0.2 filled ``source.labels``, ``destination.service`` and friends only for Kubernetes pods.
Here they come from the unified model through the aggregate's one endpoint-by-address index
(:meth:`AggregateRegistry.at_address`), so a Consul node, a Eureka instance and a VM get the same
attributes as a pod. For each side (``source``, ``destination``) with an ``.ip``:

- ``labels``: the endpoint's labels; ``service``: the service hostname (a given
  ``destination.service`` picks among several services at that address);
- ``namespace``: the service's namespace (the identity's, if it has one);
- ``serviceAccount``: the account of the endpoint's SPIFFE identity;
- ``name``: the endpoint's own hostname's first label, else its address;
- ``uid``: ``<registry>://<name>.<namespace>`` (Istio: ``kubernetes://<pod>.<namespace>``).

What the client sent always wins: enrichment only adds attributes that are absent.
Referenced attributes: a derived attribute the client did not send is reported as absent, plus
the ``.ip`` it was derived from (:func:`client_refs`), so a client cache keys on the address.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Protocol

from meshfed.mixer.attributes.types import as_ip
from meshfed.registry.model import Endpoint, Service, parse_spiffe_id

SIDES = ("source", "destination")
DERIVED = ("labels", "service", "namespace", "name", "serviceAccount", "uid")
DERIVED_FROM: Mapping[str, str] = {
    f"{side}.{attr}": f"{side}.ip" for side in SIDES for attr in DERIVED
}
EXACT, ABSENCE = 2, 1


class AddressIndex(Protocol):
    def at_address(self, address: str) -> tuple[tuple[Service, Endpoint], ...]: ...


def _workload(pairs: tuple[tuple[Service, Endpoint], ...], wanted_service: Any) -> dict[str, Any]:
    chosen = pairs[0]
    if isinstance(wanted_service, str):
        chosen = next((p for p in pairs if p[0].hostname == wanted_service), chosen)
    service, endpoint = chosen
    namespace, account = service.namespace, ""
    if endpoint.identity:
        with contextlib.suppress(ValueError):  # not a workload identity: keep the service's
            _, namespace, account = parse_spiffe_id(endpoint.identity)
    name = endpoint.hostname.split(".")[0] if endpoint.hostname else endpoint.address
    out: dict[str, Any] = {
        "labels": dict(endpoint.labels),
        "service": service.hostname,
        "namespace": namespace,
        "name": name,
        "uid": f"{endpoint.registry or service.registry}://{name}.{namespace}",
    }
    if account:
        out["serviceAccount"] = account
    return out


class Enricher:
    """Adds registry-derived attributes to a bag."""

    def __init__(self, index: AddressIndex) -> None:
        self.index = index

    def derived(self, bag: Mapping[str, Any]) -> dict[str, Any]:
        """The attributes the registry adds to ``bag`` (absent ones only)."""
        out: dict[str, Any] = {}
        for side in SIDES:
            ip = bag.get(f"{side}.ip")
            if ip is None:
                continue
            address = as_ip(ip)
            pairs = self.index.at_address(str(address))
            if not pairs:
                continue
            for attr, value in _workload(pairs, bag.get(f"{side}.service")).items():
                name = f"{side}.{attr}"
                if name not in bag:
                    out[name] = value
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
        if name in wire or name not in DERIVED_FROM:
            out[key] = condition
            continue
        out[name] = ABSENCE
        source = DERIVED_FROM[name]
        out[source] = EXACT if source in wire else ABSENCE
    return out
