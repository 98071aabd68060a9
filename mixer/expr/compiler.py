"""Type-check an expression against the attribute manifest and compile it into a closure.

Compiling happens once per config snapshot; a request only calls closures. A compiled closure
takes the request's bag (``Mapping[str, value]``) and a ``refs`` dict, and returns the value or
:data:`MISSING` when an attribute it needed is absent (Istio: "lookup failed", which ``a | b``
turns into trying ``b``). Every attribute it looks at is recorded in ``refs``: ``refs[name]`` is
:data:`EXACT` or :data:`ABSENCE`, and for a string-map key, ``refs[(name, key)]`` -- Istio's
referenced attributes, which a client cache keys on. An error that is not absence (``ip()`` of
a string that is no address) raises :class:`EvalError`.

Semantics as in Istio 0.2: ``==``/``!=`` compare values of one type (IP addresses by address);
``match(s, p)`` is a wildcard match where ``p`` is ``"prefix*"``, ``"*suffix"`` or exact;
``ip("1.2.3.4")`` makes an IP_ADDRESS; ``a | b`` is ``a`` if present, else ``b``. Added here:
``!x`` and ``timestamp("2017-01-01T00:00:00Z")`` (RFC 3339). A string literal that reads as a
duration (``"10ms"``) is a DURATION, but may stand where a STRING is expected.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from meshfed.mixer.attributes.types import ValueType, as_ip, compatible
from meshfed.mixer.expr.ast import Binary, Call, Const, Index, Node, Unary, Var, to_text
from meshfed.mixer.expr.parser import ExprError, parse

EXACT = 2  # ReferencedAttributes.Condition values
ABSENCE = 1


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()

Refs = dict[Any, int]
Fn = Callable[[Mapping[str, Any], Refs], Any]
TypeOf = Callable[[str], ValueType | None]

FUNCTIONS: Mapping[str, tuple[tuple[ValueType, ...], ValueType]] = {
    "match": ((ValueType.STRING, ValueType.STRING), ValueType.BOOL),
    "ip": ((ValueType.STRING,), ValueType.IP_ADDRESS),
    "timestamp": ((ValueType.STRING,), ValueType.TIMESTAMP),
}


class EvalError(ValueError):
    """An evaluation failed for a reason other than an absent attribute."""


@attrs.frozen(slots=True)
class Compiled:
    """A checked, compiled expression."""

    text: str
    node: Node
    type: ValueType
    fn: Fn
    attributes: frozenset[str]

    def __call__(self, bag: Mapping[str, Any], refs: Refs) -> Any:
        return self.fn(bag, refs)


def compile_expr(text_or_node: str | Node, type_of: TypeOf) -> Compiled:
    """Parse (if text), type-check and compile; raises :class:`ExprError` with the reason."""
    node = parse(text_or_node) if isinstance(text_or_node, str) else text_or_node
    typ = check(node, type_of)
    fn = _compile(node, type_of)
    from meshfed.mixer.expr.ast import attributes

    text = text_or_node if isinstance(text_or_node, str) else to_text(node)
    return Compiled(text, node, typ, fn, attributes(node))


# -- type checking -----------------------------------------------------------------------------
def check(node: Node, type_of: TypeOf) -> ValueType:
    """The expression's type; raises :class:`ExprError` naming the offending part."""
    if isinstance(node, Const):
        return node.type
    if isinstance(node, Var):
        typ = type_of(node.name)
        if typ is None:
            raise ExprError(f"undeclared attribute {node.name!r} (no attributemanifest has it)")
        return typ
    if isinstance(node, Index):
        target = check(node.target, type_of)
        if target is not ValueType.STRING_MAP:
            raise ExprError(f"{to_text(node.target)} is {target.value}, only a STRING_MAP has keys")
        _expect(node.key, ValueType.STRING, type_of, "a map key")
        return ValueType.STRING
    if isinstance(node, Call):
        signature = FUNCTIONS.get(node.fn)
        if signature is None:
            raise ExprError(f"unknown function {node.fn!r} (known: {', '.join(sorted(FUNCTIONS))})")
        params, result = signature
        if len(node.args) != len(params):
            raise ExprError(f"{node.fn}() takes {len(params)} argument(s), got {len(node.args)}")
        for i, (arg, want) in enumerate(zip(node.args, params, strict=True)):
            _expect(arg, want, type_of, f"argument {i + 1} of {node.fn}()")
        if node.fn in ("ip", "timestamp") and isinstance(node.args[0], Const):
            _fold(node)  # a bad literal is a config error, not a request error
        return result
    if isinstance(node, Unary):
        _expect(node.operand, ValueType.BOOL, type_of, "the operand of !")
        return ValueType.BOOL
    if node.op in ("&&", "||"):
        _expect(node.left, ValueType.BOOL, type_of, f"the left side of {node.op}")
        _expect(node.right, ValueType.BOOL, type_of, f"the right side of {node.op}")
        return ValueType.BOOL
    left = check(node.left, type_of)
    right = check(node.right, type_of)
    if not _fits(node.right, right, left) and not _fits(node.left, left, right):
        raise ExprError(
            f"type mismatch: {to_text(node.left)} is {left.value} but "
            f"{to_text(node.right)} is {right.value} (in {node.op})"
        )
    if node.op == "|":
        return right if left is ValueType.DURATION and isinstance(node.left, Const) else left
    if left is ValueType.STRING_MAP:
        raise ExprError(f"{to_text(node)}: string maps cannot be compared with {node.op}")
    return ValueType.BOOL


def _fits(node: Node, have: ValueType, want: ValueType) -> bool:
    if compatible(have, want):
        return True
    # Istio reads "10s" as a duration; where a string is expected, it is the string.
    return have is ValueType.DURATION and isinstance(node, Const) and want.stringlike


def _expect(node: Node, want: ValueType, type_of: TypeOf, what: str) -> None:
    have = check(node, type_of)
    if not _fits(node, have, want):
        raise ExprError(f"{what} must be {want.value}, {to_text(node)} is {have.value}")


def _fold(node: Call) -> Any:
    arg = node.args[0]
    assert isinstance(arg, Const)
    text = arg.text if arg.type is ValueType.DURATION else arg.value
    value = _FUNCS[node.fn](text)
    if value is MISSING:
        raise ExprError(f"{to_text(node)}: {text!r} is not a valid argument of {node.fn}()")
    return value


# -- compiling ---------------------------------------------------------------------------------
def _compile(node: Node, type_of: TypeOf, want: ValueType | None = None) -> Fn:
    if isinstance(node, Const):
        value = node.value
        if node.type is ValueType.DURATION and want is not None and want.stringlike:
            value = node.text
        return lambda bag, refs: value
    if isinstance(node, Var):
        return _compile_var(node.name, type_of(node.name))
    if isinstance(node, Index):
        return _compile_index(node, type_of)
    if isinstance(node, Call):
        if node.fn in ("ip", "timestamp") and isinstance(node.args[0], Const):
            folded = _fold(node)
            return lambda bag, refs: folded
        return _compile_call(node, type_of)
    if isinstance(node, Unary):
        operand = _compile(node.operand, type_of)

        def not_(bag: Mapping[str, Any], refs: Refs) -> Any:
            v = operand(bag, refs)
            return v if v is MISSING else not v

        return not_
    return _compile_binary(node, type_of, want)


def _compile_var(name: str, typ: ValueType | None) -> Fn:
    if typ is ValueType.IP_ADDRESS:

        def ip_var(bag: Mapping[str, Any], refs: Refs) -> Any:
            v = bag.get(name, MISSING)
            if v is MISSING:
                refs[name] = ABSENCE
                return v
            refs[name] = EXACT
            return as_ip(v)

        return ip_var

    def var(bag: Mapping[str, Any], refs: Refs) -> Any:
        v = bag.get(name, MISSING)
        refs[name] = ABSENCE if v is MISSING else EXACT
        return v

    return var


def _compile_index(node: Index, type_of: TypeOf) -> Fn:
    if isinstance(node.target, Var) and isinstance(node.key, Const):
        name, key = node.target.name, str(node.key.text or node.key.value)
        ref = (name, key)

        def lookup(bag: Mapping[str, Any], refs: Refs) -> Any:
            m = bag.get(name, MISSING)
            if m is MISSING:
                refs[name] = ABSENCE
                return m
            v = m.get(key, MISSING)
            refs[ref] = ABSENCE if v is MISSING else EXACT
            return v

        return lookup
    target_var = node.target.name if isinstance(node.target, Var) else None
    target = _compile(node.target, type_of) if target_var is None else None
    key_fn = _compile(node.key, type_of, ValueType.STRING)

    def dynamic(bag: Mapping[str, Any], refs: Refs) -> Any:
        if target_var is not None:
            m = bag.get(target_var, MISSING)
            if m is MISSING:
                refs[target_var] = ABSENCE
                return m
        else:
            assert target is not None
            m = target(bag, refs)
            if m is MISSING:
                return m
        k = key_fn(bag, refs)
        if k is MISSING:
            return k
        v = m.get(k, MISSING)
        if target_var is not None:
            refs[(target_var, k)] = ABSENCE if v is MISSING else EXACT
        return v

    return dynamic


def _wildcard(s: str, pattern: str) -> bool:
    if pattern.endswith("*"):
        return s.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return s.endswith(pattern[1:])
    return s == pattern


def _ip(text: Any) -> Any:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return MISSING


def _timestamp(text: Any) -> Any:
    try:
        value = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return MISSING
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


_FUNCS: Mapping[str, Callable[[Any], Any]] = {"ip": _ip, "timestamp": _timestamp}


def _compile_call(node: Call, type_of: TypeOf) -> Fn:
    args = [_compile(a, type_of, ValueType.STRING) for a in node.args]
    if node.fn == "match":
        s_fn, p_fn = args

        def match(bag: Mapping[str, Any], refs: Refs) -> Any:
            s = s_fn(bag, refs)
            if s is MISSING:
                return s
            p = p_fn(bag, refs)
            if p is MISSING:
                return p
            return _wildcard(s, p)

        return match
    (arg,) = args
    convert = _FUNCS[node.fn]
    fn_name = node.fn

    def call(bag: Mapping[str, Any], refs: Refs) -> Any:
        v = arg(bag, refs)
        if v is MISSING:
            return v
        out = convert(v)
        if out is MISSING:
            raise EvalError(f"{fn_name}({v!r}): not a valid argument")
        return out

    return call


def _compile_binary(node: Binary, type_of: TypeOf, want: ValueType | None) -> Fn:
    op = node.op
    if op in ("&&", "||"):
        left, right = _compile(node.left, type_of), _compile(node.right, type_of)
        if op == "&&":

            def and_(bag: Mapping[str, Any], refs: Refs) -> Any:
                a = left(bag, refs)
                if a is MISSING or not a:
                    return a
                return right(bag, refs)

            return and_

        def or_(bag: Mapping[str, Any], refs: Refs) -> Any:
            a = left(bag, refs)
            if a is MISSING or a:
                return a
            return right(bag, refs)

        return or_

    lt, rt = check(node.left, type_of), check(node.right, type_of)
    # the side that is not a duration-looking literal decides the comparison's type
    common = rt if (lt is ValueType.DURATION and isinstance(node.left, Const)) else lt
    if op == "|":
        common = want if want is not None and common is ValueType.DURATION else common
    left = _compile(node.left, type_of, common)
    right = _compile(node.right, type_of, common)
    if op == "|":

        def first(bag: Mapping[str, Any], refs: Refs) -> Any:
            a = left(bag, refs)
            return right(bag, refs) if a is MISSING else a

        return first

    negate = op == "!="
    if common is ValueType.IP_ADDRESS:

        def eq_ip(bag: Mapping[str, Any], refs: Refs) -> Any:
            a = left(bag, refs)
            if a is MISSING:
                return a
            b = right(bag, refs)
            if b is MISSING:
                return b
            return (as_ip(a) == as_ip(b)) != negate

        return eq_ip

    if isinstance(node.right, Const) and not isinstance(node.left, Const):
        const = right(None, None)  # type: ignore[arg-type]

        def eq_const(bag: Mapping[str, Any], refs: Refs) -> Any:
            a = left(bag, refs)
            if a is MISSING:
                return a
            return (a == const) != negate

        return eq_const

    def eq(bag: Mapping[str, Any], refs: Refs) -> Any:
        a = left(bag, refs)
        if a is MISSING:
            return a
        b = right(bag, refs)
        if b is MISSING:
            return b
        return (a == b) != negate

    return eq


def checked_type(text: str, type_of: TypeOf) -> ValueType:
    """The type of an expression text (parse + check), raising :class:`ExprError`."""
    return check(parse(text), type_of)
