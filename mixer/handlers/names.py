"""Finding a handler's per-instance params (a metric, a quota) by the instance's name.

Istio 0.2 handler params name instances in full, ``requestcount.metric.istio-system``; users
often write just ``requestcount``. An instance matches a configured name when the two are equal,
or when one is the short form of the other (its first dot-separated part) and that short form
names a single configured entry.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


def short(name: str) -> str:
    return name.split(".", 1)[0]


class InstanceIndex(Generic[T]):
    def __init__(self, entries: Iterable[tuple[str, T]]) -> None:
        self._exact: dict[str, T] = {}
        by_short: dict[str, list[T]] = {}
        for name, value in entries:
            self._exact.setdefault(name, value)
            by_short.setdefault(short(name), []).append(value)
        self._short = {k: v[0] for k, v in by_short.items() if len(v) == 1}
        self._cache: dict[str, T | None] = {}

    def get(self, instance_name: str) -> T | None:
        try:
            return self._cache[instance_name]
        except KeyError:
            pass
        found = self._exact.get(instance_name)
        if found is None:
            found = self._short.get(short(instance_name))
        if len(self._cache) < 10_000:  # instance names come from config: few, but bound it
            self._cache[instance_name] = found
        return found

    def values(self) -> list[T]:
        return list(self._exact.values())
