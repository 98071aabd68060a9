"""The config-store interface: a live source of parsed config objects, as one snapshot.

Why an interface in the bottom layer: config comes from files (:mod:`core.filestore` under
Pilot's file store) and from Kubernetes custom resources (``adapters.kubernetes.configstore``),
and is read by more than one feature (Pilot's routing kinds; Mixer's rule, handler and instance
kinds). A source knows how to watch and parse, never what the objects mean: the feature hands it
its parsers and a :class:`Snapshots` that turns the parsed objects into the feature's snapshot.
The composition root (``meshfed``) wires the two together, so no source imports a feature.

Stores are found by topic: a hub component that owns stores declares them with
``config_stores_for(topic)`` (:class:`~core.component.ProvidesConfig`), and a consumer asks the hub
for the stores of its topic (:data:`ROUTING` for Pilot).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from meshfed.core.resources import ConfigError

ROUTING = "routing"  # RouteRule, DestinationPolicy, EgressRule, Gateway, Ingress: Pilot's

S = TypeVar("S")
S_co = TypeVar("S_co", covariant=True)


class Snapshots(Protocol[S]):
    """How a feature makes its snapshot from parsed objects (given to a source)."""

    def empty(self) -> S: ...

    def of(self, objects: Iterable[Any]) -> S: ...

    def describe(self, snapshot: S) -> dict[str, Any]:
        """What ``/debug/configz`` shows of a snapshot (object references, conflicts)."""
        ...

    def warnings(self, old: S, new: S) -> list[str]:
        """Problems ``new`` has that ``old`` had not (logged once, when they appear)."""
        ...


@runtime_checkable
class ConfigStore(Protocol[S_co]):
    """A live config source: the current snapshot, its errors, and change notifications."""

    @property
    def snapshot(self) -> S_co: ...

    @property
    def errors(self) -> list[ConfigError]: ...

    def subscribe(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(snapshot)`` after every real change of the snapshot."""
        ...

    async def run(self) -> None:
        """Follow the source until :meth:`stop`; run under a supervisor."""
        ...

    def stop(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...


def stores_of(providers: Iterable[object], topic: str) -> Sequence[ConfigStore[Any]]:
    """Every store of ``topic`` declared by the providers (objects with ``config_stores_for``)."""
    from meshfed.core.component import ProvidesConfig

    out: list[ConfigStore[Any]] = []
    for provider in providers:
        if isinstance(provider, ProvidesConfig):
            out.extend(s for s in provider.config_stores_for(topic) if s not in out)
    return out
