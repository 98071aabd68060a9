"""Wiring config sources to the features that read them (composition root).

The sources (files, Kubernetes custom resources) know no feature, and the features know no
source: here Pilot's routing parsers and snapshot are handed to the Kubernetes CRD source, one
store per ``kind: kubernetes`` registry of the mesh config. Mixer's stores are wired the same
way, with its own kinds, parsers and snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kubernetes import client as k8s

from meshfed.adapters.kubernetes.configstore import (
    ROUTING_KINDS,
    KubeConfigComponent,
    KubeConfigStore,
)
from meshfed.adapters.kubernetes.namespaces import NamespaceFilter
from meshfed.config import MeshConfig
from meshfed.core.configstore import ROUTING
from meshfed.pilot.config.parse import PARSERS, IngressSelection, routing_parsers
from meshfed.pilot.config.store import ConfigSnapshot


class RoutingSnapshots:
    """Pilot's :class:`ConfigSnapshot` as a :class:`~core.configstore.Snapshots`."""

    def empty(self) -> ConfigSnapshot:
        return ConfigSnapshot()

    def of(self, objects: Iterable[Any]) -> ConfigSnapshot:
        return ConfigSnapshot.of(objects)

    def describe(self, snapshot: ConfigSnapshot) -> dict[str, Any]:
        return {
            "route_rules": [r.ref for r in snapshot.route_rules],
            "destination_policies": [p.ref for p in snapshot.destination_policies],
            "egress_rules": [e.ref for e in snapshot.egress_rules],
            "gateways": [g.ref for g in snapshot.gateways]
            + [g.ref for g in snapshot.istio_gateways],
            "conflicts": [str(c) for c in snapshot.conflicts],
            "notes": list(snapshot.notes),
        }

    def warnings(self, old: ConfigSnapshot, new: ConfigSnapshot) -> list[str]:
        fresh = set(new.conflicts) - set(old.conflicts)
        notes = set(new.notes) - set(old.notes)
        return sorted(
            [f"routing config conflict: {c}" for c in fresh]
            + [f"routing config: {n}" for n in notes]
        )


ROUTING_SNAPSHOTS = RoutingSnapshots()


def routing_kube_store(
    api_client: k8s.ApiClient | Callable[[], k8s.ApiClient],
    namespaces: NamespaceFilter | None = None,
    *,
    parsers: Mapping[str, Any] = PARSERS,
    **options: Any,
) -> KubeConfigStore:
    """A Kubernetes store of Pilot's routing kinds."""
    return KubeConfigStore(
        api_client,
        namespaces,
        parsers=parsers,
        snapshots=ROUTING_SNAPSHOTS,
        kinds=ROUTING_KINDS,
        **options,
    )


def routing_store_from_params(
    params: Mapping[str, Any], parsers: Mapping[str, Any] = PARSERS
) -> KubeConfigStore:
    """A routing store for the cluster a ``kind: kubernetes`` registry entry names."""
    return KubeConfigStore.from_params(params, parsers=parsers, snapshots=ROUTING_SNAPSHOTS)


def kube_config_components(mesh: MeshConfig) -> list[KubeConfigComponent]:
    """One routing config-store component per ``kind: kubernetes`` registry of the mesh."""
    out = []
    for reg in mesh.registries:
        if reg.kind == "kubernetes" and reg.params.get("configStore", True):
            parsers = routing_parsers(IngressSelection.from_pilot_config(mesh.pilot))
            store = KubeConfigStore.from_params(
                {**reg.params, "name": reg.name},
                parsers=parsers,
                snapshots=ROUTING_SNAPSHOTS,
                system_namespace=mesh.system_namespace,
            )
            out.append(KubeConfigComponent(store, ROUTING))
    return out
