"""Istio 0.2's expression language: parse, print, type-check, compile to closures.

Config time: :func:`parse` turns text into an AST (:mod:`.ast`), :func:`compile_expr` checks it
against the attribute manifest and turns it into a closure. Request time: only closures run.
"""

from meshfed.mixer.expr.ast import Binary, Call, Const, Index, Node, Unary, Var
from meshfed.mixer.expr.compiler import (
    ABSENCE,
    EXACT,
    MISSING,
    Compiled,
    EvalError,
    compile_expr,
)
from meshfed.mixer.expr.parser import ExprError, parse

__all__ = [
    "ABSENCE",
    "EXACT",
    "MISSING",
    "Binary",
    "Call",
    "Compiled",
    "Const",
    "EvalError",
    "ExprError",
    "Index",
    "Node",
    "Unary",
    "Var",
    "compile_expr",
    "parse",
]
