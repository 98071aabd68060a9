"""The service graph drawn from telemetry: requests and errors per (source, destination) edge.

Kiali draws Istio's graph from the request metrics the proxies report; here the same facts come
straight from Mixer's Report path: every reported attribute bag, after enrichment from the
registry, names its ``source.service`` and ``destination.service`` (or, for a caller that is no
service, its workload name) and its ``response.code``. :class:`ServiceGraph` is the tap that
counts them; it holds no I/O and is cheap enough to run on every bag.

Bounded: at most :data:`MAX_EDGES` edges are kept; bags of further new edges are counted in
``dropped`` (an attacker who can make up service names cannot make the hub grow without end).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import attrs

MAX_EDGES = 2000
UNKNOWN = "unknown"
MAX_NAME = 253  # a DNS name's length; longer names are cut, never kept whole


@attrs.define
class Edge:
    requests: int = 0
    errors: int = 0  # responses with a 5xx code
    last_seen: float = 0.0


def _text(value: Any) -> str:
    if isinstance(value, str) and value:
        return value[:MAX_NAME]
    return ""


def _node(bag: Mapping[str, Any], side: str) -> str:
    return _text(bag.get(f"{side}.service")) or _text(bag.get(f"{side}.name")) or UNKNOWN


def _code(bag: Mapping[str, Any]) -> int:
    code = bag.get("response.code")
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


@attrs.define
class ServiceGraph:
    """Counts requests and 5xx responses per edge; :meth:`observe` is a Report observer."""

    max_edges: int = MAX_EDGES
    edges: dict[tuple[str, str], Edge] = attrs.field(factory=dict)
    dropped: int = 0
    clock: Any = time.time

    def observe(self, bag: Mapping[str, Any]) -> None:
        key = (_node(bag, "source"), _node(bag, "destination"))
        edge = self.edges.get(key)
        if edge is None:
            if len(self.edges) >= self.max_edges:
                self.dropped += 1
                return
            edge = self.edges[key] = Edge()
        edge.requests += 1
        if _code(bag) >= 500:
            edge.errors += 1
        edge.last_seen = self.clock()

    def describe(self) -> dict[str, Any]:
        """Nodes and edges as JSON: each edge with requests, errors and its error rate."""
        nodes = sorted({name for key in self.edges for name in key})
        return {
            "nodes": nodes,
            "edges": [
                {
                    "source": src,
                    "destination": dst,
                    "requests": e.requests,
                    "errors": e.errors,
                    "error_rate": e.errors / e.requests if e.requests else 0.0,
                    "last_seen": e.last_seen,
                }
                for (src, dst), e in sorted(self.edges.items())
            ],
            "dropped": self.dropped,
        }
