"""The values every part of Pilot passes around: resources, versions, changes and views.

A leaf module (of Pilot it imports only the proto helpers), so the cache, the traffic layer,
the view pipeline, the push queue and the xDS server can all share these types without
importing each other.

Promises:
- A :class:`Resource` carries a version that is a hash of its serialized bytes, so an unchanged
  resource never looks changed, and a restarted Pilot computes the same versions as before.
- :func:`digest` is independent of iteration order: a table's version depends only on its
  (name, version) pairs.
- A :class:`ProxyView` computes each type's version at most once; a builder that already knows
  a table's version (a shared table) passes it in and nothing is hashed again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import attrs
from google.protobuf import any_pb2
from google.protobuf.message import Message

from meshfed.pilot.translate.protos import pack


@attrs.frozen(slots=True)
class Resource:
    """One serialized xDS resource and its content version."""

    name: str
    version: str
    body: any_pb2.Any


def make_resource(name: str, message: Message) -> Resource:
    body = pack(message)
    return Resource(name, hashlib.blake2b(body.value, digest_size=8).hexdigest(), body)


def digest(items: Iterable[tuple[str, str]]) -> str:
    """A version for a set of (name, version) pairs, independent of iteration order."""
    h = hashlib.blake2b(digest_size=8)
    for name, version in sorted(items):
        h.update(name.encode())
        h.update(b"\0")
        h.update(version.encode())
        h.update(b"\n")
    return h.hexdigest()


def changed(old: Mapping[str, Resource], new: Mapping[str, Resource]) -> set[str]:
    """Names added, removed or with a different version between two tables."""
    names_ = set(old) | set(new)
    return {n for n in names_ if (old.get(n) and old[n].version) != (new.get(n) and new[n].version)}


@attrs.frozen(slots=True)
class CacheChange:
    """What one cache update changed, for the server to decide what to push."""

    generation: int
    services_changed: bool  # clusters, routes or listeners may differ
    endpoint_names: frozenset[str]  # ClusterLoadAssignments that changed or were removed
    cluster_names: frozenset[str]  # outbound clusters that changed or were removed
    full: bool = False
    # Addresses of endpoints that appeared, left or changed. A proxy at one of them fronts that
    # workload: its inbound listeners and source-matched routes follow its own endpoints, so an
    # endpoint-only change there is not endpoint-only for it.
    addresses: frozenset[str] = frozenset()

    @property
    def endpoints_only(self) -> bool:
        return not self.full and not self.services_changed and not self.cluster_names

    def endpoints_only_at(self, ip: str) -> bool:
        """Whether the change touches nothing but endpoint assignments for a proxy at ``ip``."""
        return self.endpoints_only and ip not in self.addresses


def merge_changes(first: CacheChange, second: CacheChange) -> CacheChange:
    """One change covering two consecutive ones (a registry batch, then a config snapshot)."""
    return attrs.evolve(
        second,
        services_changed=first.services_changed or second.services_changed,
        endpoint_names=first.endpoint_names | second.endpoint_names,
        cluster_names=first.cluster_names | second.cluster_names,
        full=first.full or second.full,
        addresses=first.addresses | second.addresses,
    )


class ProxyView:
    """Everything one proxy should have, by type, with per-type versions computed lazily."""

    def __init__(
        self,
        resources: Mapping[str, Mapping[str, Resource]],
        problems: Iterable[str] = (),
        shared_digests: Mapping[str, str] | None = None,
    ) -> None:
        self.resources = resources
        self.problems = tuple(problems)
        self._versions: dict[str, str] = {}
        self._shared = dict(shared_digests or {})

    def get(self, type_url: str) -> Mapping[str, Resource]:
        return self.resources.get(type_url, {})

    def version(self, type_url: str) -> str:
        if type_url in self._shared:
            return self._shared[type_url]
        if type_url not in self._versions:
            self._versions[type_url] = digest(
                (name, res.version) for name, res in self.get(type_url).items()
            )
        return self._versions[type_url]

    def subset_version(self, type_url: str, names_: Iterable[str]) -> str:
        have = self.get(type_url)
        return digest((n, have[n].version) for n in names_ if n in have)
