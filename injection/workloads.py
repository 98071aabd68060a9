"""Offline injection (``meshfed kube-inject``): the pod template of every workload kind.

Deployment, StatefulSet, DaemonSet, ReplicaSet and Job carry their pods in ``spec.template``
(a CronJob in ``spec.jobTemplate.spec.template``); a Pod is its own template. Each goes
through :func:`injection.inject.inject_pod`, the webhook's own function, with the pod's
namespace and the namespace labels the caller supplies. Documents of other kinds (Services,
ConfigMaps, ...) pass through unchanged, so a whole manifest file can be piped through.

Promises: never raises for bad input except :class:`InjectionError`, whose errors name the
file, the object and the field.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from meshfed.core.resources import ConfigError, parse_yaml
from meshfed.injection.inject import InjectionError, Outcome, inject_pod
from meshfed.injection.template import Template

TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "Pod": (),
}


def inject_object(
    doc: Mapping[str, Any],
    template: Template,
    namespace_labels: Mapping[str, str],
    default_namespace: str,
    source: str,
    index: int = 0,
) -> tuple[dict[str, Any], Outcome | None]:
    """One document with its pod template injected; the Outcome is None for other kinds."""
    kind = doc.get("kind")
    if not isinstance(kind, str) or kind not in TEMPLATE_PATHS:
        return copy.deepcopy(dict(doc)), None
    meta = doc.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    namespace = meta.get("namespace") or default_namespace
    name = meta.get("name")
    obj = f"{kind} {namespace}/{name}" if isinstance(name, str) else f"document {index + 1}"
    if not isinstance(namespace, str):
        raise InjectionError([ConfigError(source, obj, "metadata.namespace", "expected a string")])
    path = TEMPLATE_PATHS[kind]
    out = copy.deepcopy(dict(doc))
    parent: Any = out
    for part in path[:-1]:
        parent = parent.get(part) if isinstance(parent, Mapping) else None
        if not isinstance(parent, dict):
            raise InjectionError(
                [ConfigError(source, obj, ".".join(path), "expected a pod template")]
            )
    pod = parent.get(path[-1]) if path else out
    if not isinstance(pod, Mapping):
        raise InjectionError([ConfigError(source, obj, ".".join(path), "expected a pod template")])
    try:
        outcome = inject_pod(pod, template, namespace, namespace_labels, source)
    except InjectionError as exc:
        prefix = ".".join(path)
        raise InjectionError(
            [
                ConfigError(source, obj, f"{prefix}.{e.field}" if prefix else e.field, e.message)
                for e in exc.errors
            ]
        ) from None
    if not path:
        return outcome.pod, outcome
    parent[path[-1]] = outcome.pod
    return out, outcome


def inject_documents(
    text: str | bytes,
    template: Template,
    source: str,
    namespace_labels: Mapping[str, str],
    default_namespace: str = "default",
) -> tuple[list[Any], list[Outcome | None]]:
    """Every document of a YAML stream, injected; raises :class:`InjectionError` on the first
    bad one (with every error it has) or on YAML that cannot be read."""
    docs, errors = parse_yaml(source, text)
    if errors:
        raise InjectionError(errors)
    out: list[Any] = []
    outcomes: list[Outcome | None] = []
    for index, doc in enumerate(docs):
        if not isinstance(doc, Mapping):
            out.append(doc)
            outcomes.append(None)
            continue
        if doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            items = []
            for i, item in enumerate(doc["items"]):
                if isinstance(item, Mapping):
                    injected, outcome = inject_object(
                        item, template, namespace_labels, default_namespace, source, i
                    )
                    items.append(injected)
                    outcomes.append(outcome)
                else:
                    items.append(item)
            out.append({**doc, "items": items})
            continue
        injected, outcome = inject_object(
            doc, template, namespace_labels, default_namespace, source, index
        )
        out.append(injected)
        outcomes.append(outcome)
    return out, outcomes
