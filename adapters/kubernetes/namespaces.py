"""Which namespaces the mesh manages.

The mesh config chooses: every namespace (the default), an explicit ``namespaces: [...]`` list, or
a ``namespaceSelector`` over namespace labels (``"mesh=on"``, ``"env in (a,b)"`` is not
supported: the forms are ``key=value``, ``key==value``, ``key!=value``, ``key`` and ``!key``,
comma-separated, all of which must hold -- the equality-based subset of Kubernetes selectors).
The control plane's own system namespace (``meshfed-system`` by default) is always managed: it
is where the hub runs and where mesh-wide config lives.

The adapter watches cluster-wide and filters here, rather than opening one watch per namespace:
the number of watches stays constant, and a namespace that gains the selected label joins the
mesh at once (the adapter watches Namespaces only when a selector is configured).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

DEFAULT_SYSTEM_NAMESPACE = "meshfed-system"


class SelectorError(ValueError):
    pass


@attrs.frozen(slots=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "exists", "!exists"
    value: str = ""

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op == "=":
            return labels.get(self.key) == self.value
        return labels.get(self.key) != self.value


def parse_selector(text: str) -> tuple[Requirement, ...]:
    """Parse an equality-based label selector; raises SelectorError naming the bad term."""
    out = []
    for term in (t.strip() for t in text.split(",")):
        if not term:
            continue
        if "!=" in term:
            key, _, value = term.partition("!=")
            op = "!="
        elif "=" in term:
            key, _, value = term.replace("==", "=", 1).partition("=")
            op = "="
        elif term.startswith("!"):
            key, value, op = term[1:], "", "!exists"
        else:
            key, value, op = term, "", "exists"
        key, value = key.strip(), value.strip()
        if not key or " " in key or " " in value:
            raise SelectorError(
                f"namespaceSelector: expected key=value, key!=value, key or !key; got {term!r}"
            )
        out.append(Requirement(key, op, value))
    if not out:
        raise SelectorError("namespaceSelector: expected at least one requirement")
    return tuple(out)


class NamespaceFilter:
    """Decides whether a namespace is part of the mesh; tracks namespace labels for selectors."""

    def __init__(
        self,
        names: Iterable[str] | None = None,
        selector: str | None = None,
        system_namespace: str = DEFAULT_SYSTEM_NAMESPACE,
    ) -> None:
        self.names = frozenset(names) if names is not None else None
        self.selector_text = selector or ""
        self.selector = parse_selector(selector) if selector else None
        self.system_namespace = system_namespace
        self._labels: dict[str, dict[str, str]] = {}

    @property
    def needs_namespace_watch(self) -> bool:
        return self.selector is not None

    def allows(self, namespace: str) -> bool:
        if namespace == self.system_namespace:
            return True
        if self.names is not None and namespace not in self.names:
            return False
        if self.selector is not None:
            labels = self._labels.get(namespace)
            return labels is not None and all(r.matches(labels) for r in self.selector)
        return True

    def set_namespaces(self, namespaces: Iterable[Mapping[str, Any]]) -> set[str]:
        """Replace the known namespaces (a full list); return those whose verdict changed."""
        before = {ns: self.allows(ns) for ns in self._labels}
        self._labels = {}
        for obj in namespaces:
            name, labels = _name_labels(obj)
            self._labels[name] = labels
        names = set(before) | set(self._labels)
        return {ns for ns in names if before.get(ns, False) != self.allows(ns)}

    def update_namespace(self, obj: Mapping[str, Any], deleted: bool = False) -> bool:
        """Record one namespace's labels (or its deletion); True when its verdict changed."""
        name, labels = _name_labels(obj)
        before = self.allows(name)
        if deleted:
            self._labels.pop(name, None)
        else:
            self._labels[name] = labels
        return before != self.allows(name)

    def describe(self) -> dict[str, Any]:
        return {
            "system": self.system_namespace,
            "names": sorted(self.names) if self.names is not None else "all",
            "selector": self.selector_text or None,
            "selected": sorted(ns for ns in self._labels if self.allows(ns))
            if self.selector
            else None,
        }


def _name_labels(obj: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    return str(meta.get("name") or ""), {str(k): str(v) for k, v in labels.items()}
