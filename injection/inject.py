"""Pod spec + template + annotations -> the injected pod spec. Pure: no I/O.

The webhook (:mod:`injection.webhook`) and ``meshfed kube-inject`` (:mod:`injection.workloads`)
both call :func:`inject_pod`, so the two can never disagree on what a sidecar is.

Promises:
- Selection is Istio's: a namespace labelled ``istio-injection=enabled`` (or
  ``meshfed.io/injection=enabled``) injects its pods; a pod label or annotation
  ``sidecar.istio.io/inject: "false"`` opts out, ``"true"`` opts in where the namespace is not
  labelled (a namespace labelled ``disabled`` refuses even that). Host-network pods and pods
  already carrying the status annotation (or a container of the sidecar's name) come back
  unchanged, so running the injection twice changes nothing.
- The input is never modified; the result is a new mapping.
- A pod of the wrong shape raises :class:`InjectionError`, naming the field and what was
  expected; nothing else is raised for any input.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import attrs

from meshfed.core.resources import ConfigError
from meshfed.injection import annotations as A
from meshfed.injection.template import Scalar, Template


class InjectionError(ValueError):
    """The pod cannot be injected; ``errors`` name the field and what was expected."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


@attrs.frozen(slots=True)
class Outcome:
    """What happened to one pod: the (possibly unchanged) pod, and why."""

    pod: dict[str, Any]
    injected: bool
    reason: str


def _mapping_of_strings(value: Any, where: str, fail: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        fail(where, f"expected a mapping of strings, got {type(value).__name__}")
        return {}
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            fail(f"{where}[{str(k)[:60]}]", "expected a string key and value")
            continue
        out[k] = v
    return out


@attrs.frozen(slots=True)
class _PodView:
    """The parts of a pod the injector reads, checked."""

    name: str
    labels: dict[str, str]
    annotations: dict[str, str]
    spec: Mapping[str, Any]
    container_names: list[str]
    init_names: list[str]
    volume_names: list[str]
    app_ports: list[int]
    service_account: str
    host_network: bool


def _read_pod(pod: Any, source: str) -> _PodView:
    errors: list[ConfigError] = []
    obj = "Pod"
    if isinstance(pod, Mapping) and isinstance(pod.get("metadata"), Mapping):
        meta_name = pod["metadata"].get("name") or pod["metadata"].get("generateName")
        if isinstance(meta_name, str) and meta_name:
            obj = f"Pod {meta_name[:100]}"

    def fail(field: str, message: str) -> None:
        errors.append(ConfigError(source, obj, field, message))

    if not isinstance(pod, Mapping):
        raise InjectionError([ConfigError(source, obj, "", "expected a pod (a mapping)")])
    meta = pod.get("metadata")
    if meta is None:
        meta = {}
    if not isinstance(meta, Mapping):
        fail("metadata", "expected a mapping")
        meta = {}
    name = meta.get("name") or meta.get("generateName") or ""
    if not isinstance(name, str):
        fail("metadata.name", "expected a string")
        name = ""
    labels = _mapping_of_strings(meta.get("labels"), "metadata.labels", fail)
    annotations = _mapping_of_strings(meta.get("annotations"), "metadata.annotations", fail)
    spec = pod.get("spec")
    if not isinstance(spec, Mapping):
        fail("spec", "expected a mapping")
        raise InjectionError(errors)
    host_network = spec.get("hostNetwork", False)
    if not isinstance(host_network, bool):
        fail("spec.hostNetwork", "expected true or false")
        host_network = False
    sa = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    if not isinstance(sa, str):
        fail("spec.serviceAccountName", "expected a string")
        sa = "default"

    def names(key: str, required: bool) -> list[str]:
        items = spec.get(key)
        if items is None:
            items = []
        if not isinstance(items, list):
            fail(f"spec.{key}", "expected a list")
            return []
        if required and not items:
            fail(f"spec.{key}", "expected at least one container")
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, Mapping):
                fail(f"spec.{key}[{i}]", "expected a mapping")
                continue
            n = item.get("name")
            if not isinstance(n, str) or not n:
                fail(f"spec.{key}[{i}].name", "expected a non-empty string")
                continue
            out.append(n)
        return out

    containers = names("containers", True)
    inits = names("initContainers", False)
    volumes = names("volumes", False)
    ports: list[int] = []
    for i, container in enumerate(spec.get("containers") or []):
        if not isinstance(container, Mapping):
            continue
        raw_ports = container.get("ports") or []
        if not isinstance(raw_ports, list):
            fail(f"spec.containers[{i}].ports", "expected a list")
            continue
        for j, port in enumerate(raw_ports):
            where = f"spec.containers[{i}].ports[{j}]"
            if not isinstance(port, Mapping):
                fail(where, "expected a mapping")
                continue
            number = port.get("containerPort")
            if isinstance(number, bool) or not isinstance(number, int) or not 0 < number < 65536:
                fail(f"{where}.containerPort", "expected a port number 1..65535")
                continue
            protocol = port.get("protocol", "TCP")
            if protocol not in ("TCP", "UDP", "SCTP"):
                fail(f"{where}.protocol", "expected TCP, UDP or SCTP")
                continue
            if protocol == "TCP" and number not in ports:
                ports.append(number)
    if errors:
        raise InjectionError(errors)
    return _PodView(
        name, labels, annotations, spec, containers, inits, volumes, ports, sa, host_network
    )


def decide(
    view_labels: Mapping[str, str],
    view_annotations: Mapping[str, str],
    namespace_labels: Mapping[str, str],
) -> tuple[bool, str]:
    """Whether a pod with these labels/annotations in such a namespace gets a sidecar, and why."""
    pod_flag = None
    for where, values in (("label", view_labels), ("annotation", view_annotations)):
        if A.INJECT in values:
            flag = A.inject_flag(values[A.INJECT])
            if flag is False:
                return False, f"pod {where} {A.INJECT}=false"
            if flag is True and pod_flag is None:
                pod_flag = where
    for label in A.NAMESPACE_LABELS:
        state = namespace_labels.get(label)
        if state == A.DISABLED:
            return False, f"namespace label {label}={A.DISABLED}"
    for label in A.NAMESPACE_LABELS:
        if namespace_labels.get(label) == A.ENABLED:
            return True, f"namespace label {label}={A.ENABLED}"
    if pod_flag is not None:
        return True, f"pod {pod_flag} {A.INJECT}=true"
    return False, "namespace not labelled for injection and pod not opted in"


def _template_ports(template: Template) -> list[int]:
    """Ports the sidecar itself listens on (declared ports, probe ports): never intercepted."""
    out: list[int] = []
    for container in template.containers:
        for port in container.get("ports") or []:
            if isinstance(port, Mapping) and isinstance(port.get("containerPort"), int):
                out.append(port["containerPort"])
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            get = (container.get(probe) or {}).get("httpGet") or {}
            if isinstance(get, Mapping) and isinstance(get.get("port"), int):
                out.append(get["port"])
    return out


def pod_values(
    view: _PodView, namespace: str, template: Template, source: str
) -> dict[str, Scalar]:
    """The per-pod template values, from the pod and its traffic annotations."""
    errors: list[ConfigError] = []
    ann = view.annotations

    def read(key: str, default: str, parse: Any, **kw: Any) -> str:
        raw = ann.get(key)
        if raw is None:
            raw = default
        try:
            return str(parse(raw, **kw))
        except A.BadAnnotation as exc:
            errors.append(
                ConfigError(source, f"Pod {view.name}", f"metadata.annotations[{key}]", str(exc))
            )
            return ""

    def tv(name: str) -> str:
        value = template.values.get(name, "")
        return value if isinstance(value, str) else str(value)

    mode = read(A.INTERCEPTION_MODE, "REDIRECT", A.interception_mode)
    include_out = read(
        A.INCLUDE_OUTBOUND_IP_RANGES, tv("includeOutboundIPRanges") or "*", A.ip_ranges, star=True
    )
    exclude_out = read(A.EXCLUDE_OUTBOUND_IP_RANGES, tv("excludeOutboundIPRanges"), A.ip_ranges)
    include_in = read(A.INCLUDE_INBOUND_PORTS, "*", A.ports, star=True)
    exclude_in = read(A.EXCLUDE_INBOUND_PORTS, tv("excludeInboundPorts"), A.ports)
    exclude_outp = read(A.EXCLUDE_OUTBOUND_PORTS, tv("excludeOutboundPorts"), A.ports)
    if errors:
        raise InjectionError(errors)
    excluded = [int(p) for p in exclude_in.split(",") if p]
    for port in _template_ports(template):
        if port not in excluded:
            excluded.append(port)
    included = view.app_ports if include_in == "*" else [int(p) for p in include_in.split(",")]
    app_ports = [p for p in included if p not in excluded]
    return {
        "namespace": namespace,
        "serviceAccount": view.service_account,
        "appPorts": ",".join(f"{p}:{p}" for p in app_ports),
        "interceptionMode": mode.lower(),
        "includeOutboundIPRanges": include_out,
        "excludeOutboundIPRanges": exclude_out,
        "includeInboundPorts": include_in,
        "excludeInboundPorts": ",".join(str(p) for p in excluded),
        "excludeOutboundPorts": exclude_outp,
    }


def status_annotation(template: Template, rendered: Mapping[str, Any]) -> str:
    """The ``sidecar.istio.io/status`` value: what was injected, by which template."""
    return json.dumps(
        {
            "version": template.version,
            "template": template.digest,
            "initContainers": [c["name"] for c in rendered["initContainers"]],
            "containers": [c["name"] for c in rendered["containers"]],
            "volumes": [v["name"] for v in rendered["volumes"]],
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def inject_pod(
    pod: Any,
    template: Template,
    namespace: str,
    namespace_labels: Mapping[str, str],
    source: str = "pod",
) -> Outcome:
    """The pod with the sidecar added, or unchanged with the reason it was left alone."""
    view = _read_pod(pod, source)
    unchanged = copy.deepcopy(dict(pod))
    if A.STATUS in view.annotations:
        return Outcome(unchanged, False, "already injected")
    if view.host_network:
        return Outcome(unchanged, False, "host network")
    inject, why = decide(view.labels, view.annotations, namespace_labels)
    if not inject:
        return Outcome(unchanged, False, why)
    sidecar_names = {c["name"] for c in template.containers}
    if sidecar_names & set(view.container_names):
        return Outcome(unchanged, False, "already has the sidecar container")
    values = pod_values(view, namespace, template, source)
    rendered = template.render(values)
    if values["interceptionMode"] == "none":
        rendered["initContainers"] = []
    clashes: list[ConfigError] = []
    for key, existing in (
        ("initContainers", view.init_names),
        ("volumes", view.volume_names),
    ):
        for item in rendered[key]:
            if item["name"] in existing:
                clashes.append(
                    ConfigError(
                        source,
                        f"Pod {view.name}",
                        f"spec.{key}",
                        f"{item['name']!r} is the name of what the sidecar adds; rename it",
                    )
                )
    if clashes:
        raise InjectionError(clashes)
    out = unchanged
    meta = dict(out.get("metadata") or {})
    meta["annotations"] = {**view.annotations, A.STATUS: status_annotation(template, rendered)}
    labels = dict(view.labels)
    for k, v in rendered["labels"].items():
        labels.setdefault(k, v)
    if labels:
        meta["labels"] = labels
    out["metadata"] = meta
    spec = dict(out["spec"])
    spec["containers"] = [*spec.get("containers", []), *rendered["containers"]]
    if rendered["initContainers"]:
        spec["initContainers"] = [*(spec.get("initContainers") or []), *rendered["initContainers"]]
    if rendered["volumes"]:
        spec["volumes"] = [*(spec.get("volumes") or []), *rendered["volumes"]]
    out["spec"] = spec
    return Outcome(out, True, why)
