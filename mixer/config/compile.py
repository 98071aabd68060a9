"""Compile parsed Mixer objects into one immutable config: typed, cross-checked, closures ready.

The whole config is built before it is used, so a request never sees half of a change. Each
object is checked on its own and a bad one is left out with an error naming its file, object and
field (an undeclared attribute, a type mismatch, a rule naming a missing handler or instance, a
handler kind that does not accept a template); the rest is compiled. An object that fails keeps
its last good version when the caller hands one in (``last_good``), so a broken edit never takes
working policy away.

Rules in the default config namespace (Istio's ``istio-system``) apply to every request; a rule
in another namespace applies only to requests whose ``destination.namespace`` is that namespace.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from meshfed.core.resources import ConfigError
from meshfed.mixer.attributes.types import ValueType
from meshfed.mixer.config.parse import (
    Expr,
    HandlerConfig,
    InstanceConfig,
    ManifestConfig,
    MixerObject,
    RuleConfig,
)
from meshfed.mixer.expr import MISSING, Compiled, ExprError, compile_expr
from meshfed.mixer.handlers.api import HandlerKind
from meshfed.mixer.settings import DEFAULT_NAMESPACE
from meshfed.mixer.templates import TEMPLATES, Variety

# template field -> the type its expression must have (None: any value)
FIELD_TYPES: Mapping[tuple[str, str], ValueType] = {
    ("listentry", "value"): ValueType.STRING,
    ("logentry", "timestamp"): ValueType.TIMESTAMP,
    ("logentry", "severity"): ValueType.STRING,
    ("logentry", "monitored_resource_type"): ValueType.STRING,
    ("metric", "monitored_resource_type"): ValueType.STRING,
}


class InstanceError(Exception):
    """An instance could not be built for a request (an attribute it needs is absent)."""


@attrs.frozen(slots=True)
class CompiledInstance:
    ref: str
    name: str  # the short name, what Check's quota names refer to
    template: str
    variety: Variety
    scalars: tuple[tuple[str, Compiled], ...]
    maps: tuple[tuple[str, tuple[tuple[str, Compiled], ...]], ...]

    def build(self, bag: Mapping[str, Any], refs: dict[Any, int]) -> Any:
        """The template instance for this request; raises :class:`InstanceError`."""
        values: dict[str, Any] = {"name": self.ref}
        for field, fn in self.scalars:
            v = fn.fn(bag, refs)
            if v is MISSING:
                raise InstanceError(f"{self.ref}: {field}: {fn.text}: an attribute is absent")
            values[field] = v
        for field, entries in self.maps:
            out = {}
            for key, fn in entries:
                v = fn.fn(bag, refs)
                if v is MISSING:
                    raise InstanceError(
                        f"{self.ref}: {field}.{key}: {fn.text}: an attribute is absent"
                    )
                out[key] = v
            values[field] = out
        values.pop("monitored_resource_dimensions", None)  # not part of the template classes
        if self.template == "logentry" and "timestamp" not in values:
            values["timestamp"] = dt.datetime.now(dt.UTC)
        cls = TEMPLATES[self.template][0]
        return cls(**values)


@attrs.frozen(slots=True)
class CompiledAction:
    handler: str
    instances: tuple[CompiledInstance, ...]


@attrs.frozen(slots=True)
class CompiledRule:
    ref: str
    namespace: str  # "" for a rule that applies to every request
    tcp: bool  # serves only requests whose context.protocol is "tcp" (else only the others)
    match: Compiled | None
    check: tuple[CompiledAction, ...]
    report: tuple[CompiledAction, ...]
    quota: tuple[CompiledAction, ...]


@attrs.frozen(slots=True)
class HandlerSpec:
    ref: str
    kind: str
    params: Any
    origin_file: str


@attrs.frozen(slots=True)
class CompiledConfig:
    manifest: Mapping[str, ValueType]
    rules: tuple[CompiledRule, ...]
    instances: Mapping[str, CompiledInstance]
    handlers: Mapping[str, HandlerSpec]
    errors: tuple[ConfigError, ...]
    # the objects that went in (after falling back to last good versions): the next
    # compile's last_good
    good: Mapping[tuple[str, str, str], MixerObject] = attrs.field(factory=dict)

    check_rules: tuple[CompiledRule, ...] = attrs.field(init=False)
    report_rules: tuple[CompiledRule, ...] = attrs.field(init=False)
    quota_rules: tuple[CompiledRule, ...] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        # per-variety lists, computed once: a request walks only the rules that can act
        object.__setattr__(self, "check_rules", tuple(r for r in self.rules if r.check))
        object.__setattr__(self, "report_rules", tuple(r for r in self.rules if r.report))
        object.__setattr__(self, "quota_rules", tuple(r for r in self.rules if r.quota))


def key_of(obj: MixerObject) -> tuple[str, str, str]:
    return (obj.ref.kind, obj.ref.namespace, obj.ref.name)


def compile_config(
    objects: Iterable[MixerObject],
    kinds: Mapping[str, HandlerKind],
    *,
    default_namespace: str = DEFAULT_NAMESPACE,
    last_good: Mapping[tuple[str, str, str], MixerObject] | None = None,
) -> CompiledConfig:
    """Compile every object that checks; see the module docstring for error handling."""
    by_key: dict[tuple[str, str, str], MixerObject] = {}
    for obj in objects:
        by_key[key_of(obj)] = obj
    last_good = last_good or {}
    errors: list[ConfigError] = []

    # manifests first: every expression is checked against their union
    manifest: dict[str, ValueType] = {}
    for obj in by_key.values():
        if isinstance(obj, ManifestConfig):
            for name, typ in obj.attributes:
                if manifest.get(name, typ) is not typ:
                    errors.append(
                        obj.origin.error(
                            f"spec.attributes.{name}",
                            f"declared {typ.value} here but {manifest[name].value} elsewhere",
                        )
                    )
                    continue
                manifest[name] = typ
    type_of = manifest.get

    def attempt(obj: MixerObject, build: Any) -> Any:
        """Build ``obj``; on errors fall back to its last good version."""
        own: list[ConfigError] = []
        result = build(obj, own)
        if result is not None:
            return obj, result
        previous = last_good.get(key_of(obj))
        if previous is not None and previous != obj:
            result = build(previous, [])
            if result is not None:
                errors.extend(
                    attrs.evolve(e, message=f"{e.message} (its last good version is kept)")
                    for e in own
                )
                return previous, result
        errors.extend(own)
        return None, None

    good: dict[tuple[str, str, str], MixerObject] = {
        k: o for k, o in by_key.items() if isinstance(o, ManifestConfig)
    }

    handlers: dict[str, HandlerSpec] = {}
    for obj in by_key.values():
        if isinstance(obj, HandlerConfig):
            handlers[str(obj.ref)] = HandlerSpec(
                str(obj.ref), obj.kind, obj.params, obj.origin.file
            )
            good[key_of(obj)] = obj

    def build_instance(obj: InstanceConfig, out: list[ConfigError]) -> CompiledInstance | None:
        scalars, maps = [], []
        for field, value in obj.fields:
            if isinstance(value, Expr):
                fn = _compile(obj, value, FIELD_TYPES.get((obj.template, field)), type_of, out)
                if fn is not None:
                    scalars.append((field, fn))
            else:
                entries = []
                for key, expr in value:
                    fn = _compile(obj, expr, None, type_of, out)
                    if fn is not None:
                        entries.append((key, fn))
                maps.append((field, tuple(entries)))
        if out:
            return None
        variety = TEMPLATES[obj.template][1]
        return CompiledInstance(
            str(obj.ref), obj.ref.name, obj.template, variety, tuple(scalars), tuple(maps)
        )

    instances: dict[str, CompiledInstance] = {}
    for obj in by_key.values():
        if isinstance(obj, InstanceConfig):
            used, compiled = attempt(obj, build_instance)
            if compiled is not None:
                instances[str(obj.ref)] = compiled
                good[key_of(obj)] = used

    def build_rule(obj: RuleConfig, out: list[ConfigError]) -> CompiledRule | None:
        match = None
        if obj.match is not None:
            match = _compile(obj, obj.match, ValueType.BOOL, type_of, out)
        buckets: dict[Variety, list[CompiledAction]] = {v: [] for v in Variety}
        for action in obj.actions:
            spec = handlers.get(str(action.handler))
            if spec is None:
                out.append(
                    obj.origin.error(
                        f"{action.field}.handler",
                        f"no handler {action.handler} (expected a handler object of that "
                        "name, kind and namespace)",
                    )
                )
                continue
            kind = kinds.get(spec.kind)
            by_variety: dict[Variety, list[CompiledInstance]] = {}
            for j, iref in enumerate(action.instances):
                inst = instances.get(str(iref))
                if inst is None:
                    out.append(
                        obj.origin.error(
                            f"{action.field}.instances[{j}]",
                            f"no instance {iref} (expected a {iref.kind} object of that name "
                            "and namespace that compiles)",
                        )
                    )
                    continue
                if kind is not None and inst.template not in kind.templates:
                    out.append(
                        obj.origin.error(
                            f"{action.field}.instances[{j}]",
                            f"handler {spec.ref} (kind {spec.kind}) does not accept template "
                            f"{inst.template} (it accepts {', '.join(sorted(kind.templates))})",
                        )
                    )
                    continue
                by_variety.setdefault(inst.variety, []).append(inst)
            for variety, insts in by_variety.items():
                buckets[variety].append(CompiledAction(spec.ref, tuple(insts)))
        if out:
            return None
        namespace = "" if obj.ref.namespace == default_namespace else obj.ref.namespace
        return CompiledRule(
            str(obj.ref),
            namespace,
            obj.tcp,
            match,
            tuple(buckets[Variety.CHECK]),
            tuple(buckets[Variety.REPORT]),
            tuple(buckets[Variety.QUOTA]),
        )

    rules: list[CompiledRule] = []
    for obj in sorted(
        (o for o in by_key.values() if isinstance(o, RuleConfig)), key=lambda o: str(o.ref)
    ):
        used, compiled = attempt(obj, build_rule)
        if compiled is not None:
            rules.append(compiled)
            good[key_of(obj)] = used

    used_handlers = {a.handler for r in rules for a in (*r.check, *r.report, *r.quota)}
    return CompiledConfig(
        manifest=manifest,
        rules=tuple(rules),
        instances=instances,
        handlers={k: v for k, v in handlers.items() if k in used_handlers},
        errors=tuple(errors),
        good=good,
    )


def _compile(
    obj: InstanceConfig | RuleConfig,
    expr: Expr,
    want: ValueType | None,
    type_of: Any,
    out: list[ConfigError],
) -> Compiled | None:
    try:
        compiled = compile_expr(expr.node, type_of)
    except ExprError as exc:
        out.append(obj.origin.error(expr.field, f"{expr.text!r}: {exc}"))
        return None
    mismatch = want is not None and compiled.type is not want
    if mismatch and not (want.stringlike and compiled.type.stringlike):  # type: ignore[union-attr]
        out.append(
            obj.origin.error(
                expr.field,
                f"{expr.text!r} is {compiled.type.value}, expected {want.value}",  # type: ignore[union-attr]
            )
        )
        return None
    return attrs.evolve(compiled, text=expr.text)


def describe(config: CompiledConfig, errors: Sequence[ConfigError] = ()) -> dict[str, Any]:
    """What ``/debug/mixerz`` shows."""

    def actions(acts: tuple[CompiledAction, ...]) -> list[dict[str, Any]]:
        return [{"handler": a.handler, "instances": [i.ref for i in a.instances]} for a in acts]

    return {
        "attributes": {k: v.value for k, v in sorted(config.manifest.items())},
        "rules": [
            {
                "name": r.ref,
                "match": r.match.text if r.match else "true",
                "appliesTo": r.namespace or "every request",
                "protocol": "tcp" if r.tcp else "http",
                "check": actions(r.check),
                "report": actions(r.report),
                "quota": actions(r.quota),
            }
            for r in config.rules
        ],
        "instances": {
            ref: {
                "template": i.template,
                "fields": {f: c.text for f, c in i.scalars}
                | {f: {k: c.text for k, c in e} for f, e in i.maps},
            }
            for ref, i in sorted(config.instances.items())
        },
        "handlers": {ref: {"kind": h.kind} for ref, h in sorted(config.handlers.items())},
        "problems": [str(e) for e in (*errors, *config.errors)],
    }
