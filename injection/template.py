"""The injection template: what a sidecar is, as mesh config rather than code.

The template is a YAML document (the ``config`` key of the ``meshfed-sidecar-injector``
ConfigMap in the system namespace; :data:`DEFAULT_TEMPLATE` when there is none) holding the
init containers, containers and volumes to add to a pod, labels to add, and ``values``. Every
string in those shapes may name ``{{value}}`` placeholders: the template's own values and the
per-pod ones in :data:`POD_VALUES`. A string that is exactly one placeholder takes the value's
own type (``runAsUser: "{{proxyUID}}"`` becomes an integer).

Promises: :func:`parse_template` never raises on bad input; it returns every error with the
source, the field and what was expected, and a placeholder no value defines is an error at
parse time, not at the first pod. :func:`render` is pure and deterministic.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any

import attrs

from meshfed.core.resources import ConfigError, parse_yaml

# Filled in for each pod by the injector (see injection.inject).
POD_VALUES = (
    "namespace",
    "serviceAccount",
    "appPorts",
    "interceptionMode",
    "includeOutboundIPRanges",
    "excludeOutboundIPRanges",
    "includeInboundPorts",
    "excludeInboundPorts",
    "excludeOutboundPorts",
)
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z][A-Za-z0-9_]*)\s*\}\}")
OBJECT = "injection template"
Scalar = str | int | bool


@attrs.frozen(slots=True)
class Template:
    """A parsed template; ``version`` goes into each injected pod's status annotation."""

    version: str
    values: Mapping[str, Scalar]
    labels: Mapping[str, str]
    init_containers: tuple[Mapping[str, Any], ...]
    containers: tuple[Mapping[str, Any], ...]
    volumes: tuple[Mapping[str, Any], ...]
    source: str = "built-in"

    @property
    def digest(self) -> str:
        """A short hash of everything the template adds (changes when the template does)."""
        body = json.dumps(
            [
                self.version,
                dict(self.values),
                dict(self.labels),
                self.init_containers,
                self.containers,
                self.volumes,
            ],
            sort_keys=True,
        )
        return hashlib.sha256(body.encode()).hexdigest()[:12]

    def render(self, pod_values: Mapping[str, Scalar]) -> dict[str, Any]:
        """The template's shapes with every placeholder replaced (``pod_values`` win)."""
        values = {**self.values, **pod_values}
        return {
            "initContainers": [_fill(c, values) for c in self.init_containers],
            "containers": [_fill(c, values) for c in self.containers],
            "volumes": [_fill(v, values) for v in self.volumes],
            "labels": {k: str(_fill(v, values)) for k, v in self.labels.items()},
        }


class TemplateError(ValueError):
    """A template that cannot be used; ``errors`` names each problem."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


def _fill(value: Any, values: Mapping[str, Scalar]) -> Any:
    if isinstance(value, str):
        whole = PLACEHOLDER.fullmatch(value)
        if whole:
            return copy.copy(values[whole.group(1)])
        return PLACEHOLDER.sub(lambda m: _text(values[m.group(1)]), value)
    if isinstance(value, Mapping):
        return {k: _fill(v, values) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_fill(v, values) for v in value]
    return value


def _text(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _names_used(value: Any, path: str, out: list[tuple[str, str]]) -> None:
    if isinstance(value, str):
        out.extend((m.group(1), path) for m in PLACEHOLDER.finditer(value))
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _names_used(k, path, out)
            _names_used(v, f"{path}.{k}", out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _names_used(v, f"{path}[{i}]", out)


def _shapes(
    data: Mapping[str, Any], key: str, source: str, errors: list[ConfigError]
) -> tuple[Mapping[str, Any], ...]:
    raw = data.get(key)
    if raw is None:
        return ()
    if not isinstance(raw, list):
        errors.append(
            ConfigError(source, OBJECT, key, f"expected a list, got {type(raw).__name__}")
        )
        return ()
    out = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        where = f"{key}[{i}]"
        if not isinstance(item, Mapping):
            errors.append(ConfigError(source, OBJECT, where, "expected a mapping"))
            continue
        name = item.get("name")
        if not isinstance(name, str) or not name or "{{" in name:
            errors.append(
                ConfigError(source, OBJECT, f"{where}.name", "expected a fixed, non-empty name")
            )
            continue
        if name in names:
            errors.append(ConfigError(source, OBJECT, f"{where}.name", f"{name!r} appears twice"))
            continue
        names.add(name)
        out.append(item)
    return tuple(out)


def parse_template(text: str | bytes, source: str) -> Template:
    """Read a template document; raises :class:`TemplateError` with every problem."""
    docs, errors = parse_yaml(source, text)
    if errors:
        raise TemplateError(errors)
    if len(docs) != 1 or not isinstance(docs[0], Mapping):
        raise TemplateError([ConfigError(source, OBJECT, "", "expected one YAML mapping")])
    data: Mapping[str, Any] = docs[0]
    errs: list[ConfigError] = []
    known = {"version", "values", "labels", "initContainers", "containers", "volumes"}
    for key in data:
        if key not in known:
            errs.append(
                ConfigError(source, OBJECT, str(key), f"unknown field (expected {sorted(known)})")
            )
    version = data.get("version")
    if not isinstance(version, str) or not version:
        errs.append(ConfigError(source, OBJECT, "version", "expected a non-empty string"))
        version = ""
    values: dict[str, Scalar] = {}
    raw_values = data.get("values") or {}
    if not isinstance(raw_values, Mapping):
        errs.append(ConfigError(source, OBJECT, "values", "expected a mapping"))
        raw_values = {}
    for k, v in raw_values.items():
        if not isinstance(k, str) or not PLACEHOLDER.fullmatch("{{" + k + "}}"):
            errs.append(ConfigError(source, OBJECT, f"values.{k}", "expected a name [A-Za-z0-9_]"))
        elif v is None:
            values[k] = ""
        elif not isinstance(v, str | int | bool) or isinstance(v, float):
            errs.append(
                ConfigError(source, OBJECT, f"values.{k}", "expected a string, integer or bool")
            )
        else:
            values[k] = v
    labels: dict[str, str] = {}
    raw_labels = data.get("labels") or {}
    if not isinstance(raw_labels, Mapping):
        errs.append(ConfigError(source, OBJECT, "labels", "expected a mapping"))
        raw_labels = {}
    for k, v in raw_labels.items():
        if not isinstance(k, str) or not isinstance(v, str | int | bool):
            errs.append(ConfigError(source, OBJECT, f"labels.{k}", "expected a string value"))
        else:
            labels[k] = v if isinstance(v, str) else _text(v)
    init = _shapes(data, "initContainers", source, errs)
    containers = _shapes(data, "containers", source, errs)
    volumes = _shapes(data, "volumes", source, errs)
    if not containers:
        errs.append(ConfigError(source, OBJECT, "containers", "expected at least one container"))
    used: list[tuple[str, str]] = []
    for key, shapes in (("initContainers", init), ("containers", containers), ("volumes", volumes)):
        for i, shape in enumerate(shapes):
            _names_used(shape, f"{key}[{i}]", used)
    _names_used(labels, "labels", used)
    defined = set(values) | set(POD_VALUES)
    for name, where in used:
        if name not in defined:
            errs.append(
                ConfigError(
                    source,
                    OBJECT,
                    where,
                    f"placeholder {{{{{name}}}}} has no value (define values.{name}; "
                    f"per-pod values: {', '.join(POD_VALUES)})",
                )
            )
    if errs:
        raise TemplateError(errs)
    return Template(version, values, labels, init, containers, volumes, source)


def default_template() -> Template:
    """The built-in template shipped with meshfed (``injection/default-template.yaml``)."""
    text = resources.files("meshfed.injection").joinpath("default-template.yaml").read_text()
    return parse_template(text, "built-in default-template.yaml")


def with_values(template: Template, **values: Scalar) -> Template:
    """The same template with some values replaced (mesh addresses known at run time)."""
    return attrs.evolve(template, values={**template.values, **values})
