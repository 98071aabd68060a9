"""Pending responses of one xDS stream, merged per type: a slow proxy never falls behind.

A proxy that reads its stream slowly (or a burst of registry changes) must not make Pilot hold
a growing list of stale full responses for it. Like Istio's push queue
(``pilot/pkg/xds/pushqueue.go``), at most one response per type waits for the stream: a newer
one for the same type is merged into it, latest wins.

Promises:
- :func:`merge_plans` keeps what the proxy must still learn: a whole-table response (state of
  the world clusters and listeners) replaces the older one; a partial one (state-of-the-world
  endpoints and routes, every delta type) keeps the union of both, the newer resource winning
  per name, with removals that a newer resource did not undo. The newer nonce and version win,
  so the proxy's ACK refers to what it actually received.
- Responses leave in push order (clusters, endpoints, listeners, routes; others after), so a
  merged queue still makes before it breaks.
- Memory per stream is bounded by the number of types, whatever the push rate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from meshfed.pilot import xds_types as T
from meshfed.pilot.watch import Plan

_ORDER = {type_url: i for i, type_url in enumerate(T.PUSH_ORDER)}


def merge_plans(older: Plan, newer: Plan, whole: bool) -> Plan:
    """One response that tells the proxy what ``older`` then ``newer`` would have."""
    if whole:
        return newer
    by_name = {r.name: r for r in older.resources}
    by_name.update((r.name, r) for r in newer.resources)
    for name in newer.removed:
        by_name.pop(name, None)
    removed = (set(older.removed) - set(by_name)) | set(newer.removed)
    return Plan(
        newer.type_url,
        newer.version,
        newer.nonce,
        tuple(by_name[n] for n in sorted(by_name)),
        tuple(sorted(removed)),
    )


class PushQueue:
    """At most one pending response per type; ``get`` hands them out in push order."""

    def __init__(self, whole_types: frozenset[str], render: Callable[[Plan], Any]) -> None:
        self.whole_types = whole_types  # types whose responses carry the whole table
        self.render = render  # Plan -> the response message
        self._pending: dict[str, tuple[Plan, Any]] = {}
        self._wake = asyncio.Event()
        self._closed = False
        self.merged = 0  # responses superseded before they were written

    def __len__(self) -> int:
        return len(self._pending)

    def put(self, plan: Plan) -> bool:
        """Queue ``plan``'s response; True when it was merged into a pending one."""
        pending = self._pending.get(plan.type_url)
        merged = pending is not None
        if pending is not None:
            plan = merge_plans(pending[0], plan, plan.type_url in self.whole_types)
            self.merged += 1
        self._pending[plan.type_url] = (plan, self.render(plan))
        self._wake.set()
        return merged

    def pending(self) -> dict[str, Plan]:
        return {t: p for t, (p, _) in self._pending.items()}

    def _pop(self) -> Any:
        type_url = min(self._pending, key=lambda t: _ORDER.get(t, len(_ORDER)))
        return self._pending.pop(type_url)[1]

    def drain(self) -> list[Any]:
        """Every pending response, in push order, without waiting."""
        out = []
        while self._pending:
            out.append(self._pop())
        return out

    async def get(self) -> Any | None:
        """The next response in push order; None once closed and empty."""
        while not self._pending:
            if self._closed:
                return None
            self._wake.clear()
            await self._wake.wait()
        return self._pop()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
