"""Mixer config as Kubernetes custom resources (``kubectl apply`` of Istio 0.2's YAML).

The same mechanism as the routing config store (:class:`CustomResourceSet` in the Kubernetes
adapter: last good version per object, errors as Events on the object), with Mixer's kinds and
parsers. Subscribers get the objects' list whenever a last good parse changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from meshfed.mixer.config.parse import MixerObject, parsers
from meshfed.mixer.handlers.api import HandlerKind
from meshfed.mixer.templates import TEMPLATES

GROUP, VERSION = "config.istio.io", "v1alpha2"


def plural(kind: str) -> str:
    """Istio's CRD plural of a kind (``listentry`` -> ``listentries``)."""
    if kind.endswith("y"):
        return kind[:-1] + "ies"
    if kind.endswith(("s", "x")):
        return kind + "es"
    return kind + "s"


def mixer_kinds(kinds: Mapping[str, HandlerKind]) -> list[str]:
    return ["rule", "attributemanifest", *sorted(TEMPLATES), *sorted(kinds)]


def kube_store(params: Mapping[str, Any], kinds: Mapping[str, HandlerKind]) -> Any:
    """A config store over the cluster a ``kind: kubernetes`` registry names."""
    from meshfed.adapters.kubernetes.configstore import KubeConfigStore, ResourceKind

    class MixerKubeStore(KubeConfigStore):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.objects: list[MixerObject] = []
            self.mixer_subscribers: list[Callable[[], None]] = []

        def _publish(self) -> None:
            objects = self.resources.objects()
            if objects == self.objects:
                return
            self.objects = objects
            for callback in list(self.mixer_subscribers):
                callback()

    resource_kinds: Iterable[Any] = [
        ResourceKind(GROUP, VERSION, plural(k), k) for k in mixer_kinds(kinds)
    ]
    store = MixerKubeStore.from_params(
        {**params, "name": f"{params.get('name', 'kubernetes')}"},
        parsers=parsers(kinds),
        snapshots=_ObjectList(),
    )
    store.resources = type(store.resources)(
        resource_kinds, parsers(kinds), store.namespaces, None, "mixer config"
    )
    return store


class _ObjectList:
    """Mixer compiles its own snapshot from the parsed objects; the store keeps them as a list."""

    def empty(self) -> tuple[Any, ...]:
        return ()

    def of(self, objects: Iterable[Any]) -> tuple[Any, ...]:
        return tuple(objects)

    def describe(self, snapshot: tuple[Any, ...]) -> dict[str, Any]:
        return {"objects": len(snapshot)}

    def warnings(self, old: tuple[Any, ...], new: tuple[Any, ...]) -> list[str]:
        return []
