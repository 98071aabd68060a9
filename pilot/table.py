"""Shared resource tables maintained in place, so a change costs what changed, not the mesh.

Every proxy reads the same outbound clusters and ClusterLoadAssignments. Rebuilding that flat
table, or re-hashing it for its version, on every change would make a one-endpoint change cost
O(services). A :class:`SharedTable` instead keeps resources in groups (one per service, plus
slots such as the egress rules'), replaces one group at a time, and keeps:

- the flat name -> resource mapping, updated in place (readers hold the table itself, a live
  read-only :class:`~collections.abc.Mapping`, and read it synchronously within one push);
- an order-independent version: the sum, modulo 2**128, of one hash per (name, version) entry,
  so replacing a group adds and subtracts only that group's entries; equal contents always give
  equal versions, whatever the order of the changes that led there (a restarted Pilot computes
  the same versions);
- a bounded journal of which names changed at which serial, so a table derived from this one
  (:class:`DerivedTable`, e.g. the assignments prioritized for one locality) catches up by
  re-deriving only those names, and re-derives everything only when it fell too far behind.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping

from meshfed.pilot.resources import Resource

_MOD = 1 << 128
JOURNAL = 1024  # changes remembered for derived tables; older readers rebuild in full


def _entry(name: str, version: str) -> int:
    h = hashlib.blake2b(digest_size=16)
    h.update(name.encode())
    h.update(b"\0")
    h.update(version.encode())
    return int.from_bytes(h.digest(), "big")


def combined_version(total: int) -> str:
    """The version string of a table whose entry hashes sum to ``total``."""
    return hashlib.blake2b(total.to_bytes(16, "big"), digest_size=8).hexdigest()


class SharedTable(Mapping[str, Resource]):
    """Resources by name, replaced one group at a time; version and journal kept incrementally."""

    def __init__(self) -> None:
        self._entries: dict[str, Resource] = {}
        self._owner: dict[str, str] = {}  # name -> group that supplies it
        self._groups: dict[str, Mapping[str, Resource]] = {}
        self._sum = 0
        self._version: str | None = None
        self.serial = 0  # moves on every replace that changed something
        self._journal: deque[tuple[int, frozenset[str]]] = deque(maxlen=JOURNAL)

    # -- Mapping ----------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Resource:
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    # -- groups -----------------------------------------------------------------------------
    def group(self, key: str) -> Mapping[str, Resource]:
        return self._groups.get(key, {})

    def groups(self) -> list[str]:
        return list(self._groups)

    def replace_group(self, key: str, table: Mapping[str, Resource]) -> set[str]:
        """Make ``table`` the resources of group ``key`` (empty: drop the group); returns the
        names added, removed or with a different version."""
        old = self._groups.get(key, {})
        changed = {
            n
            for n in old.keys() | table.keys()
            if (n in old and old[n].version) != (n in table and table[n].version)
        }
        if not changed:
            return changed
        for name in changed:
            if name in old and self._owner.get(name) == key:
                self._remove(name)
        for name in changed:
            if name in table:
                if name in self._entries:  # another group supplied it: the latest one wins
                    self._remove(name)
                self._add(key, table[name])
        if table:
            self._groups[key] = dict(table)
        else:
            self._groups.pop(key, None)
        self.serial += 1
        self._version = None
        self._journal.append((self.serial, frozenset(changed)))
        return changed

    def _add(self, key: str, res: Resource) -> None:
        self._entries[res.name] = res
        self._owner[res.name] = key
        self._sum = (self._sum + _entry(res.name, res.version)) % _MOD

    def _remove(self, name: str) -> None:
        res = self._entries.pop(name)
        del self._owner[name]
        self._sum = (self._sum - _entry(name, res.version)) % _MOD

    # -- versions and the journal -----------------------------------------------------------
    @property
    def version(self) -> str:
        """The version of the whole table (depends only on its (name, version) entries)."""
        if self._version is None:
            self._version = combined_version(self._sum)
        return self._version

    def changed_since(self, serial: int) -> set[str] | None:
        """Names changed after ``serial``; None when the journal no longer reaches back."""
        if serial == self.serial:
            return set()
        if serial > self.serial or not self._journal or self._journal[0][0] > serial + 1:
            return None
        out: set[str] = set()
        for at, names in reversed(self._journal):
            if at <= serial:
                break
            out |= names
        return out


class DerivedTable(Mapping[str, Resource]):
    """A table computed entry by entry from a :class:`SharedTable` (``derive(resource)``), kept
    up to date by re-deriving only the entries the source changed since the last read."""

    def __init__(self, source: SharedTable, derive: Callable[[Resource], Resource]) -> None:
        self.source = source
        self._derive = derive
        self._entries: dict[str, Resource] = {}
        self._serial = -1

    def refresh(self) -> DerivedTable:
        """Catch up with the source; returns self."""
        source = self.source
        names = self.source.changed_since(self._serial) if self._serial >= 0 else None
        if names is None:
            self._entries = {n: self._derive(r) for n, r in source.items()}
        else:
            for name in names:
                res = source.get(name)
                if res is None:
                    self._entries.pop(name, None)
                else:
                    self._entries[name] = self._derive(res)
        self._serial = source.serial
        return self

    def __getitem__(self, name: str) -> Resource:
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


class Layered(Mapping[str, Resource]):
    """``top`` laid over ``base`` without copying either (a proxy's own resources over the
    shared table): ``top`` wins by name; lookups and ``len`` cost O(1) and O(len(top))."""

    def __init__(self, top: Mapping[str, Resource], base: Mapping[str, Resource]) -> None:
        self.top = top
        self.base = base

    def __getitem__(self, name: str) -> Resource:
        found = self.top.get(name)
        return found if found is not None else self.base[name]

    def __contains__(self, name: object) -> bool:
        return name in self.top or name in self.base

    def __iter__(self) -> Iterator[str]:
        yield from self.top
        yield from (n for n in self.base if n not in self.top)

    def __len__(self) -> int:
        return len(self.base) + sum(1 for n in self.top if n not in self.base)
