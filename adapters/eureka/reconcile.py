"""The local copy of a Eureka registry, kept current with deltas the way Eureka's client does.

Why: a delta (``/apps/delta``) holds only the instances that changed in the server's recent
window, each with an ``actionType``; a client that missed a window, switched to a peer with
another history, or applied something out of order would drift silently. Eureka's own client
(``DiscoveryClient.updateDelta`` / ``getReconcileHashCode``) guards against that with a hash
code: after applying a delta it recomputes a digest of its local copy and compares it with the
``apps__hashcode`` the server sent for its *whole* registry; on a mismatch it drops the delta and
does a full fetch. This module reproduces exactly that, as pure functions.

Promises:
- :func:`hash_code` equals Eureka's ``Applications.getReconcileHashCode``: for each instance
  status (the status as served, not the override), ``STATUS_count_``, statuses in sorted order,
  e.g. ``DOWN_1_UP_3_``; an empty registry hashes to ``""``.
- :func:`apply_delta` never mutates its input: it returns a new :data:`Apps` (unchanged
  applications are shared, so the copy costs only the touched apps), which keeps the caller's
  last good state intact when the delta is then rejected.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import attrs

from meshfed.adapters.eureka.wire import DELETED, Applications, Instance

# app name (upper case) -> instance id -> instance
Apps = Mapping[str, Mapping[str, Instance]]


def from_instances(instances: Iterable[Instance]) -> dict[str, dict[str, Instance]]:
    """Index a full fetch's instances by app and instance id (the last duplicate wins)."""
    apps: dict[str, dict[str, Instance]] = {}
    for instance in instances:
        apps.setdefault(instance.app, {})[instance.instance_id] = instance
    return apps


def hash_code(apps: Apps) -> str:
    """Eureka's reconcile hash code of ``apps`` (``STATUS_count_`` per status, sorted)."""
    counts = Counter(i.status for instances in apps.values() for i in instances.values())
    return "".join(f"{status}_{counts[status]}_" for status in sorted(counts))


def instance_count(apps: Apps) -> int:
    return sum(len(instances) for instances in apps.values())


@attrs.frozen(slots=True)
class DeltaOutcome:
    """The local copy after a delta, and whether it agrees with the server's hash code."""

    apps: Apps
    local_hash: str
    remote_hash: str
    changed_apps: frozenset[str]

    @property
    def matches(self) -> bool:
        return self.local_hash == self.remote_hash


def apply_delta(apps: Apps, delta: Applications) -> DeltaOutcome:
    """Apply ``delta``'s ADDED / MODIFIED / DELETED to ``apps`` and check the hash code.

    ADDED and MODIFIED both put the instance (Eureka's client treats them alike: a delta can
    repeat a change it already sent, so both must be idempotent); DELETED removes it, and an
    application left without instances disappears. An instance with no action type counts as
    MODIFIED, which is what an idempotent replay needs.
    """
    out: dict[str, Mapping[str, Instance]] = dict(apps)
    copied: dict[str, dict[str, Instance]] = {}
    changed: set[str] = set()

    def writable(app: str) -> dict[str, Instance]:
        if app not in copied:
            copied[app] = dict(out.get(app, {}))
            out[app] = copied[app]
        return copied[app]

    for instance in delta.instances:
        current = out.get(instance.app, {}).get(instance.instance_id)
        if instance.action_type == DELETED:
            if current is None:
                continue
            del writable(instance.app)[instance.instance_id]
            changed.add(instance.app)
        elif current != instance:
            writable(instance.app)[instance.instance_id] = attrs.evolve(instance, action_type="")
            changed.add(instance.app)
    for app in changed:
        if not out[app]:
            del out[app]
    return DeltaOutcome(out, hash_code(out), delta.apps_hashcode, frozenset(changed))


def changed_apps(before: Apps, after: Apps) -> frozenset[str]:
    """The applications whose instances differ between two copies (for logging and metrics)."""
    names = set(before) | set(after)
    return frozenset(n for n in names if before.get(n) != after.get(n))


def _tagged(instance: Instance, region: str) -> Instance:
    if not region or instance.region == region:
        return instance
    return attrs.evolve(instance, region=region)


def merge_app(
    app: str, local: tuple[str, Apps], remotes: Sequence[tuple[str, Apps]]
) -> dict[str, Instance]:
    """One application's instances across regions, each tagged with the region it came from.

    ``local`` is the local-only copy (``regions=<own region>``) and its region; each of
    ``remotes`` is the copy of ``regions=<remote>`` (the server's local instances *plus* that
    region's) and its region. Eureka's answers do not say where an instance lives, so an
    instance is remote exactly when the local-only copy does not have it. The local copy wins an
    instance id present in both; among remote regions, the first listed wins.
    """
    region, apps = local
    out = {iid: _tagged(i, region) for iid, i in apps.get(app, {}).items()}
    for region, apps in remotes:
        for iid, instance in apps.get(app, {}).items():
            if iid not in out:
                out[iid] = _tagged(instance, region)
    return out


def merge_regions(
    local: tuple[str, Apps],
    remotes: Sequence[tuple[str, Apps]],
    base: Apps | None = None,
    apps: Iterable[str] | None = None,
) -> dict[str, Mapping[str, Instance]]:
    """``base`` with ``apps`` merged again from every region's copy (all apps when None).

    With no remote region and no local region name the local copy is returned as it is: the
    adapter then behaves exactly as it did before regions existed.
    """
    if not remotes and not local[0]:
        return dict(local[1])
    if base is None or apps is None:
        out: dict[str, Mapping[str, Instance]] = {}
        names: Iterable[str] = set(local[1]).union(*(set(r[1]) for r in remotes))
    else:
        out = dict(base)
        names = apps
    for name in names:
        merged = merge_app(name, local, remotes)
        if merged:
            out[name] = merged
        else:
            out.pop(name, None)
    return out
