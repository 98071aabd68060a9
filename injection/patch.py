"""The JSON Patch (RFC 6902) that turns the pod the API server sent into the injected one.

Injection only ever changes five places of a pod (labels, annotations, init containers,
containers, volumes), so the patch adds or replaces exactly those, whole: short, easy to read
in the API server's audit log, and it cannot go wrong on list indexes. :func:`apply` applies
such a patch (add/replace on object members) and exists so tests and ``kube-inject`` can check
that webhook and offline output agree.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

PATHS = (
    ("metadata", "labels"),
    ("metadata", "annotations"),
    ("spec", "initContainers"),
    ("spec", "containers"),
    ("spec", "volumes"),
)


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def diff(original: Mapping[str, Any], mutated: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The operations from ``original`` to ``mutated`` at the places injection changes."""
    ops: list[dict[str, Any]] = []
    added: set[str] = set()
    for top, key in PATHS:
        before = original.get(top)
        after = mutated.get(top) or {}
        if key not in after:
            continue
        if not isinstance(before, Mapping):
            if top not in added:
                ops.append({"op": "add", "path": f"/{_escape(top)}", "value": {}})
                added.add(top)
            before = {}
        if key not in before:
            ops.append({"op": "add", "path": f"/{top}/{_escape(key)}", "value": after[key]})
        elif before[key] != after[key]:
            ops.append({"op": "replace", "path": f"/{top}/{_escape(key)}", "value": after[key]})
    return ops


def apply(document: Mapping[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """``document`` with the add/replace operations applied (object members only)."""
    out = copy.deepcopy(dict(document))
    for op in ops:
        if op["op"] not in ("add", "replace"):
            raise ValueError(f"unsupported operation {op['op']!r}")
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        target: Any = out
        for part in parts[:-1]:
            target = target[part]
        if op["op"] == "replace" and parts[-1] not in target:
            raise ValueError(f"replace of a missing member {op['path']}")
        target[parts[-1]] = copy.deepcopy(op["value"])
    return out
