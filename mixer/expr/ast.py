"""The expression AST, and the printer that writes it back as text ``parse`` reads the same.

Operators and their precedence follow Istio 0.2, whose Mixer parsed expressions with Go's own
parser: ``||`` (1) < ``&&`` (2) < ``==`` ``!=`` (3) < ``|`` (4, "the first of these that is
present"), all left-associative; then unary ``!``, then indexing ``m["k"]`` and calls ``f(x)``.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import attrs

from meshfed.mixer.attributes.types import ValueType

PRECEDENCE = {"||": 1, "&&": 2, "==": 3, "!=": 3, "|": 4}
UNARY_PRECEDENCE = 5
POSTFIX_PRECEDENCE = 6


@attrs.frozen(slots=True)
class Const:
    """A literal. A string literal that reads as a Go duration (``"10s"``) is a DURATION, as in
    Istio 0.2; ``text`` keeps what was written so it prints back the same."""

    value: Any
    type: ValueType
    text: str = ""


@attrs.frozen(slots=True)
class Var:
    """An attribute, by its dotted name (``request.headers``)."""

    name: str


@attrs.frozen(slots=True)
class Index:
    target: Node
    key: Node


@attrs.frozen(slots=True)
class Call:
    fn: str
    args: tuple[Node, ...]


@attrs.frozen(slots=True)
class Unary:
    op: str
    operand: Node


@attrs.frozen(slots=True)
class Binary:
    op: str
    left: Node
    right: Node


Node: TypeAlias = Const | Var | Index | Call | Unary | Binary


def precedence(node: Node) -> int:
    if isinstance(node, Binary):
        return PRECEDENCE[node.op]
    if isinstance(node, Unary):
        return UNARY_PRECEDENCE
    return POSTFIX_PRECEDENCE


def to_text(node: Node) -> str:
    """The expression as text, with only the parentheses its structure needs."""
    if isinstance(node, Const):
        return _const_text(node)
    if isinstance(node, Var):
        return node.name
    if isinstance(node, Index):
        return f"{_wrap(node.target, POSTFIX_PRECEDENCE)}[{to_text(node.key)}]"
    if isinstance(node, Call):
        return f"{node.fn}({', '.join(to_text(a) for a in node.args)})"
    if isinstance(node, Unary):
        return f"{node.op}{_wrap(node.operand, UNARY_PRECEDENCE)}"
    prec = PRECEDENCE[node.op]
    # left-associative: a right operand of equal precedence needs parentheses
    return f"{_wrap(node.left, prec)} {node.op} {_wrap(node.right, prec + 1)}"


def _wrap(node: Node, minimum: int) -> str:
    text = to_text(node)
    return f"({text})" if precedence(node) < minimum else text


def _const_text(node: Const) -> str:
    if node.type is ValueType.BOOL:
        return "true" if node.value else "false"
    if node.type is ValueType.INT64:
        return str(node.value)
    if node.type is ValueType.DOUBLE:
        text = repr(float(node.value))
        return text if any(c in text for c in ".eE") else text + ".0"
    if node.type is ValueType.DURATION:
        return quote(node.text)
    return quote(str(node.value))


def quote(value: str) -> str:
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif not ch.isprintable():
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def attributes(node: Node) -> frozenset[str]:
    """Every attribute name the expression mentions."""
    if isinstance(node, Var):
        return frozenset({node.name})
    if isinstance(node, Const):
        return frozenset()
    if isinstance(node, Index):
        return attributes(node.target) | attributes(node.key)
    if isinstance(node, Call):
        return frozenset().union(*(attributes(a) for a in node.args))
    if isinstance(node, Unary):
        return attributes(node.operand)
    return attributes(node.left) | attributes(node.right)
