"""Parse Istio 0.2 expression text into the AST (:mod:`.ast`).

The grammar is the subset of Go expressions Istio 0.2's Mixer accepted: dotted attribute names,
string (``"..."``, ``'...'``, raw backquoted), integer, float and ``true``/``false`` literals,
``m["key"]``, ``f(a, b)``, ``!``, ``==``, ``!=``, ``&&``, ``||`` and ``|``. A syntax error names
the position and what was expected.
"""

from __future__ import annotations

import datetime as dt
import re

from meshfed.mixer.attributes.types import ValueType
from meshfed.mixer.expr.ast import PRECEDENCE, Binary, Call, Const, Index, Node, Unary, Var


class ExprError(ValueError):
    """An expression that does not parse or does not type-check."""


_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<float>(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+)
  | (?P<int>\d+)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<dstring>"(?:[^"\\\n]|\\.)*")
  | (?P<sstring>'(?:[^'\\\n]|\\.)*')
  | (?P<rstring>`[^`]*`)
  | (?P<op>\|\||&&|==|!=|\||!|\(|\)|\[|\]|,)
    """,
    re.VERBOSE | re.DOTALL,
)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "a": "\a",
            "b": "\b", "f": "\f", "v": "\v"}  # fmt: skip

_UNIT = {"ns": 1e-3, "us": 1.0, "µs": 1.0, "μs": 1.0, "ms": 1e3, "s": 1e6, "m": 6e7, "h": 3.6e9}
_DURATION = re.compile(r"[-+]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+|[-+]?0")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> dt.timedelta | None:
    """A Go duration (``"1h30m"``, ``"10ms"``, ``"0"``) as a timedelta, else None."""
    if not _DURATION.fullmatch(text):
        return None
    sign = -1 if text.startswith("-") else 1
    micros = sum(float(n) * _UNIT[u] for n, u in _DURATION_PART.findall(text))
    try:
        return dt.timedelta(microseconds=sign * micros)
    except OverflowError:
        return None


def _unescape(body: str, pos: int) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        esc = body[i + 1]
        if esc in _ESCAPES:
            out.append(_ESCAPES[esc])
            i += 2
            continue
        width = {"x": 2, "u": 4, "U": 8}.get(esc)
        digits = body[i + 2 : i + 2 + width] if width else ""
        if not width or len(digits) != width or not re.fullmatch(r"[0-9a-fA-F]+", digits):
            raise ExprError(f"position {pos + i + 1}: invalid escape \\{esc} in a string")
        code = int(digits, 16)
        if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            raise ExprError(f"position {pos + i + 1}: escape \\{esc}{digits} is not a character")
        out.append(chr(code))
        i += 2 + width
    return "".join(out)


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ExprError(f"position {pos + 1}: unexpected character {text[pos]!r}")
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append((kind, m.group(), pos))
        pos = m.end()
    out.append(("end", "", len(text)))
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str, int]:
        return self.toks[self.i]

    def take(self) -> tuple[str, str, int]:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expect(self, value: str) -> None:
        kind, text, pos = self.take()
        if text != value or kind != "op":
            found = repr(text) if kind != "end" else "the end"
            raise ExprError(f"position {pos + 1}: expected {value!r}, found {found}")

    def binary(self, minimum: int) -> Node:
        left = self.unary()
        while True:
            kind, op, _ = self.peek()
            prec = PRECEDENCE.get(op) if kind == "op" else None
            if prec is None or prec < minimum:
                return left
            self.take()
            left = Binary(op, left, self.binary(prec + 1))

    def unary(self) -> Node:
        kind, text, _ = self.peek()
        if kind == "op" and text == "!":
            self.take()
            return Unary("!", self.unary())
        return self.postfix()

    def postfix(self) -> Node:
        node = self.primary()
        while self.peek()[:2] == ("op", "["):
            self.take()
            key = self.binary(1)
            self.expect("]")
            node = Index(node, key)
        return node

    def primary(self) -> Node:
        kind, text, pos = self.take()
        if kind == "int":
            value = int(text)
            if value >= 2**63:
                raise ExprError(f"position {pos + 1}: integer {text} does not fit in 64 bits")
            return Const(value, ValueType.INT64)
        if kind == "float":
            return Const(float(text), ValueType.DOUBLE)
        if kind in ("dstring", "sstring", "rstring"):
            body = text[1:-1] if kind == "rstring" else _unescape(text[1:-1], pos + 1)
            duration = parse_go_duration(body)
            if duration is not None:
                return Const(duration, ValueType.DURATION, body)
            return Const(body, ValueType.STRING)
        if kind == "ident":
            if text.lower() in ("true", "false"):
                return Const(text.lower() == "true", ValueType.BOOL)
            if self.peek()[:2] == ("op", "("):
                if "." in text:
                    raise ExprError(f"position {pos + 1}: {text!r} is not a function name")
                self.take()
                args: list[Node] = []
                if self.peek()[:2] != ("op", ")"):
                    args.append(self.binary(1))
                    while self.peek()[:2] == ("op", ","):
                        self.take()
                        args.append(self.binary(1))
                self.expect(")")
                return Call(text, tuple(args))
            return Var(text)
        if kind == "op" and text == "(":
            node = self.binary(1)
            self.expect(")")
            return node
        found = repr(text) if kind != "end" else "the end"
        raise ExprError(f"position {pos + 1}: expected a value, found {found}")


def parse(text: str) -> Node:
    """The AST of ``text``; raises :class:`ExprError` naming the position on bad syntax."""
    if not isinstance(text, str) or not text.strip():
        raise ExprError("expected an expression, got an empty string")
    parser = _Parser(text)
    node = parser.binary(1)
    kind, rest, pos = parser.peek()
    if kind != "end":
        raise ExprError(f"position {pos + 1}: unexpected {rest!r} after the expression")
    return node
