"""Parse Mixer's ``config.istio.io/v1alpha2`` kinds as Istio 0.2's users wrote them.

One parser per document, shared by the file store, the CRD store and ``meshfed validate``:

- ``rule``: ``match`` (an expression, default ``true``) and ``actions[{handler, instances}]``,
  references written ``name.kind[.namespace]`` (the namespace defaults to the rule's); the label
  ``istio-protocol: tcp`` makes it a TCP rule (Istio 0.2's selector by ``context.protocol``);
- ``attributemanifest``: ``attributes: {name: {valueType, description}}``;
- one kind per template (``metric``, ``logentry``, ...): fields holding expressions;
- one kind per installed handler kind: its ``spec`` read by ``HandlerKind.parse_params``.

Here expressions are only parsed (syntax); type-checking needs every manifest and happens when
the snapshot is compiled. Errors name the file, the object, the field and what was expected.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from meshfed.core.resources import ConfigError, Document, FieldReader
from meshfed.mixer.attributes.types import ValueType
from meshfed.mixer.expr import ExprError, Node, parse
from meshfed.mixer.handlers.api import HandlerKind
from meshfed.mixer.templates import TEMPLATES

API_VERSION = "config.istio.io/v1alpha2"

Parser = Callable[[Document], tuple[Any, list[ConfigError]]]


@attrs.frozen(slots=True)
class Ref:
    """A config object's full name: ``name.kind.namespace``."""

    name: str
    kind: str
    namespace: str

    def __str__(self) -> str:
        return f"{self.name}.{self.kind}.{self.namespace}"


@attrs.frozen(slots=True)
class Origin:
    """Where an object came from, for error messages."""

    file: str
    obj: str

    def error(self, field: str, message: str) -> ConfigError:
        return ConfigError(self.file, self.obj, field, message)


@attrs.frozen(slots=True)
class Expr:
    """An expression field: its path in the object, text and parsed AST."""

    field: str
    text: str
    node: Node


@attrs.frozen(slots=True)
class Action:
    handler: Ref
    instances: tuple[Ref, ...]
    field: str  # "spec.actions[0]"


@attrs.frozen(slots=True)
class RuleConfig:
    ref: Ref
    origin: Origin
    match: Expr | None
    actions: tuple[Action, ...]
    # Istio 0.2: a rule labelled ``istio-protocol: tcp`` serves only requests whose
    # context.protocol is "tcp", every other rule only the others
    tcp: bool = False


@attrs.frozen(slots=True)
class ManifestConfig:
    ref: Ref
    origin: Origin
    attributes: tuple[tuple[str, ValueType], ...]


@attrs.frozen(slots=True)
class InstanceConfig:
    """An instance of a template: ``fields`` maps a template field to an expression, or (for
    map fields such as ``dimensions``) to a tuple of (key, expression)."""

    ref: Ref
    origin: Origin
    template: str
    fields: tuple[tuple[str, Expr | tuple[tuple[str, Expr], ...]], ...]

    def field_map(self) -> dict[str, Any]:
        return dict(self.fields)


@attrs.frozen(slots=True)
class HandlerConfig:
    ref: Ref
    origin: Origin
    kind: str
    params: Any


MixerObject = RuleConfig | ManifestConfig | InstanceConfig | HandlerConfig

# template -> (scalar expression fields, map expression fields, required fields)
TEMPLATE_FIELDS: Mapping[str, tuple[frozenset[str], frozenset[str], frozenset[str]]] = {
    "checknothing": (frozenset(), frozenset(), frozenset()),
    "reportnothing": (frozenset(), frozenset(), frozenset()),
    "listentry": (frozenset({"value"}), frozenset(), frozenset({"value"})),
    "logentry": (
        frozenset({"timestamp", "severity", "monitored_resource_type"}),
        frozenset({"variables", "monitored_resource_dimensions"}),
        frozenset(),
    ),
    "metric": (
        frozenset({"value", "monitored_resource_type"}),
        frozenset({"dimensions", "monitored_resource_dimensions"}),
        frozenset({"value"}),
    ),
    "quota": (frozenset(), frozenset({"dimensions"}), frozenset()),
}


def parse_ref(text: str, namespace: str) -> Ref | None:
    """``name.kind`` or ``name.kind.namespace``; None when malformed."""
    parts = text.split(".")
    if len(parts) == 2 and all(parts):
        return Ref(parts[0], parts[1], namespace)
    if len(parts) >= 3 and all(parts[:2]) and parts[2]:
        return Ref(parts[0], parts[1], ".".join(parts[2:]))
    return None


def _start(doc: Document) -> tuple[FieldReader, Origin, Ref]:
    reader = FieldReader(doc.file, doc.ref, doc.spec, "spec")
    if doc.api_version != API_VERSION:
        reader.errors.append(
            ConfigError(doc.file, doc.ref, "apiVersion", f"expected {API_VERSION}")
        )
    return reader, Origin(doc.file, doc.ref), Ref(doc.name, doc.kind, doc.namespace)


def _expr(reader: FieldReader, name: str, value: Any) -> Expr | None:
    field = reader.field_path(name)
    if isinstance(value, bool):
        value = "true" if value else "false"
    if isinstance(value, int | float):
        value = str(value)
    if not isinstance(value, str):
        reader.error(name, f"expected an expression (a string), got {type(value).__name__}")
        return None
    try:
        return Expr(field, value, parse(value))
    except ExprError as exc:
        reader.error(name, f"invalid expression {value!r}: {exc}")
        return None


def parse_rule(doc: Document) -> tuple[RuleConfig | None, list[ConfigError]]:
    reader, origin, ref = _start(doc)
    reader.unknown_fields({"match", "selector", "actions"})
    match = None
    raw = doc.spec.get("match", doc.spec.get("selector"))
    if raw not in (None, ""):
        match = _expr(reader, "match" if "match" in doc.spec else "selector", raw)
    actions = []
    for i, action in enumerate(reader.readers("actions")):
        action.unknown_fields({"handler", "instances", "name"})
        handler_text = action.str("handler", required=True)
        handler = parse_ref(handler_text, doc.namespace) if handler_text else None
        if handler_text and handler is None:
            action.error("handler", f"expected name.kind[.namespace], got {handler_text!r}")
        instances = []
        for j, text in enumerate(action.str_list("instances", required=True)):
            inst = parse_ref(text, doc.namespace)
            if inst is None:
                action.error(f"instances[{j}]", f"expected name.kind[.namespace], got {text!r}")
            elif inst.kind not in TEMPLATES:
                action.error(
                    f"instances[{j}]",
                    f"{text!r}: {inst.kind!r} is not a template kind "
                    f"(expected one of {', '.join(sorted(TEMPLATES))})",
                )
            else:
                instances.append(inst)
        if handler is not None:
            actions.append(Action(handler, tuple(instances), f"spec.actions[{i}]"))
    if reader.errors:
        return None, reader.errors
    protocol = doc.labels.get("istio-protocol", "http").lower()
    if protocol not in ("http", "tcp"):
        reader.errors.append(
            origin.error(
                "metadata.labels.istio-protocol", f"expected http or tcp, got {protocol!r}"
            )
        )
        return None, reader.errors
    return RuleConfig(ref, origin, match, tuple(actions), protocol == "tcp"), []


def parse_manifest(doc: Document) -> tuple[ManifestConfig | None, list[ConfigError]]:
    reader, origin, ref = _start(doc)
    reader.unknown_fields({"name", "revision", "attributes"})
    attributes = []
    attrs_reader = reader.reader("attributes")
    if attrs_reader is not None:
        for name in attrs_reader.data:
            entry = attrs_reader.reader(str(name), required=True)
            if entry is None:
                continue
            entry.unknown_fields({"valueType", "description"})
            raw = entry.data.get("valueType")
            if raw is None:
                entry.error("valueType", "is required")
                continue
            try:
                attributes.append((str(name), ValueType(str(raw).strip().upper())))
            except ValueError:
                allowed = ", ".join(t.value for t in ValueType)
                entry.error("valueType", f"expected one of {allowed}, got {raw!r}")
    if reader.errors:
        return None, reader.errors
    return ManifestConfig(ref, origin, tuple(attributes)), []


def parse_instance(doc: Document) -> tuple[InstanceConfig | None, list[ConfigError]]:
    reader, origin, ref = _start(doc)
    scalars, maps, required = TEMPLATE_FIELDS[doc.kind]
    reader.unknown_fields(set(scalars | maps))
    fields: list[tuple[str, Any]] = []
    for name in sorted(scalars):
        value = doc.spec.get(name)
        if value is None:
            if name in required:
                reader.error(name, "is required (an expression)")
            continue
        expr = _expr(reader, name, value)
        if expr is not None:
            fields.append((name, expr))
    for name in sorted(maps):
        sub = reader.reader(name)
        if sub is None:
            continue
        entries = []
        for key, value in sub.data.items():
            expr = _expr(sub, str(key), value)
            if expr is not None:
                entries.append((str(key), expr))
        fields.append((name, tuple(entries)))
    if reader.errors:
        return None, reader.errors
    return InstanceConfig(ref, origin, doc.kind, tuple(fields)), []


def handler_parser(kind: HandlerKind) -> Parser:
    def parse_handler(doc: Document) -> tuple[HandlerConfig | None, list[ConfigError]]:
        reader, origin, ref = _start(doc)
        if reader.errors:
            return None, reader.errors
        try:
            params = kind.parse_params(reader)
        except Exception as exc:  # a plugin's bug must not take the config store down
            reader.errors.append(
                origin.error("spec", f"handler kind {kind.name!r} failed to read it: {exc}")
            )
            params = None
        if reader.errors or params is None:
            errors = reader.errors or [origin.error("spec", "invalid handler params")]
            return None, errors
        return HandlerConfig(ref, origin, doc.kind, params), []

    return parse_handler


def parsers(kinds: Mapping[str, HandlerKind]) -> dict[str, Parser]:
    """Every Mixer kind's parser: rule, attributemanifest, templates, installed handler kinds."""
    out: dict[str, Parser] = {"rule": parse_rule, "attributemanifest": parse_manifest}
    out.update({template: parse_instance for template in TEMPLATES})
    for name, kind in kinds.items():
        if name not in out:
            out[name] = handler_parser(kind)
    return out
