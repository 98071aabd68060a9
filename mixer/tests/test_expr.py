"""The expression language: parse/print round trips, compiled evaluation against a reference
interpreter written here, type errors, referenced attributes."""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshfed.mixer.attributes.types import ValueType
from meshfed.mixer.expr import (
    ABSENCE,
    EXACT,
    MISSING,
    Binary,
    Call,
    Const,
    ExprError,
    Index,
    Unary,
    Var,
    compile_expr,
    parse,
)
from meshfed.mixer.expr.ast import to_text

MANIFEST = {
    "s1": ValueType.STRING,
    "s2": ValueType.STRING,
    "a.b": ValueType.STRING,
    "i1": ValueType.INT64,
    "b1": ValueType.BOOL,
    "b2": ValueType.BOOL,
    "m1": ValueType.STRING_MAP,
    "ip1": ValueType.IP_ADDRESS,
    "d1": ValueType.DURATION,
}

# -- parse / print --------------------------------------------------------------------------
names = st.sampled_from(["a", "a.b", "x_1.y.z", "request.headers"])
consts = st.one_of(
    st.text(max_size=8)
    .map(lambda s: Const(s, ValueType.STRING))
    .filter(
        lambda c: parse(to_text(c)).type is ValueType.STRING  # "10s" reads back as a duration
    ),
    st.integers(min_value=0, max_value=2**63 - 1).map(lambda i: Const(i, ValueType.INT64)),
    st.floats(min_value=0, allow_nan=False, allow_infinity=False).map(
        lambda f: Const(f, ValueType.DOUBLE)
    ),
    st.booleans().map(lambda b: Const(b, ValueType.BOOL)),
    st.sampled_from(["10s", "1h30m", "0ms", "1.5s"]).map(lambda t: parse(f'"{t}"')),
)
trees = st.recursive(
    st.one_of(consts, names.map(Var)),
    lambda kids: st.one_of(
        st.tuples(st.sampled_from(["||", "&&", "==", "!=", "|"]), kids, kids).map(
            lambda t: Binary(*t)
        ),
        kids.map(lambda k: Unary("!", k)),
        st.tuples(kids, kids).map(lambda t: Index(*t)),
        st.tuples(st.sampled_from(["match", "ip", "f"]), st.lists(kids, max_size=3)).map(
            lambda t: Call(t[0], tuple(t[1]))
        ),
    ),
    max_leaves=12,
)


@given(trees)
def test_print_parse_round_trip(tree):
    assert parse(to_text(tree)) == tree


@pytest.mark.parametrize(
    "text",
    [
        '(destination.labels["app"] | "unknown") == "ratings"',
        'request.headers["clnt"] == "abc"',
        'source.ip | ip("0.0.0.0")',
        'response.duration | "0ms"',
        "true",
        'match(destination.service, "*.ns1.svc.cluster.local") && !b1 || a != b',
    ],
)
def test_istio_examples_parse(text):
    tree = parse(text)
    assert parse(to_text(tree)) == tree


@pytest.mark.parametrize(
    "text, where",
    [("a ==", "position 5"), ("a b", "position 3"), ('"open', "position 1"), ("f(a,", "end")],
)
def test_syntax_errors_name_the_position(text, where):
    with pytest.raises(ExprError, match=where):
        parse(text)


# -- reference interpreter ------------------------------------------------------------------
class Absent(Exception):
    pass


def reference(node, bag, refs):
    """A direct, unoptimised reading of the language's semantics."""
    if isinstance(node, Const):
        return node.value
    if isinstance(node, Var):
        if node.name not in bag:
            refs[node.name] = ABSENCE
            raise Absent
        refs[node.name] = EXACT
        v = bag[node.name]
        return ipaddress.ip_address(v) if MANIFEST.get(node.name) is ValueType.IP_ADDRESS else v
    if isinstance(node, Index):
        if isinstance(node.target, Var):
            if node.target.name not in bag:
                refs[node.target.name] = ABSENCE
                raise Absent
            m = bag[node.target.name]
        else:
            m = reference(node.target, bag, refs)
        key = reference(node.key, bag, refs)
        present = key in m
        if isinstance(node.target, Var):
            refs[(node.target.name, key)] = EXACT if present else ABSENCE
        if not present:
            raise Absent
        return m[key]
    if isinstance(node, Unary):
        return not reference(node.operand, bag, refs)
    if isinstance(node, Call):
        args = [reference(a, bag, refs) for a in node.args]
        if node.fn == "match":
            s, p = args
            if p.endswith("*"):
                return s.startswith(p[:-1])
            if p.startswith("*"):
                return s.endswith(p[1:])
            return s == p
        return ipaddress.ip_address(args[0])
    if node.op == "|":
        try:
            return reference(node.left, bag, refs)
        except Absent:
            return reference(node.right, bag, refs)
    left = reference(node.left, bag, refs)
    if node.op == "&&":
        return left and reference(node.right, bag, refs)
    if node.op == "||":
        return left or reference(node.right, bag, refs)
    right = reference(node.right, bag, refs)
    return (left == right) if node.op == "==" else (left != right)


@functools.cache
def typed(typ, depth=2):
    """Well-typed expressions of type ``typ`` over MANIFEST."""
    leaves = {
        ValueType.STRING: st.one_of(
            st.sampled_from([Var("s1"), Var("s2"), Var("a.b")]),
            st.sampled_from(["x", "y", "", "ab"]).map(lambda s: Const(s, ValueType.STRING)),
        ),
        ValueType.BOOL: st.one_of(
            st.sampled_from([Var("b1"), Var("b2")]),
            st.booleans().map(lambda b: Const(b, ValueType.BOOL)),
        ),
        ValueType.INT64: st.one_of(
            st.just(Var("i1")), st.integers(0, 3).map(lambda i: Const(i, ValueType.INT64))
        ),
        ValueType.IP_ADDRESS: st.one_of(
            st.just(Var("ip1")),
            st.sampled_from(["10.0.0.1", "::1"]).map(
                lambda s: Call("ip", (Const(s, ValueType.STRING),))
            ),
        ),
    }
    if depth == 0:
        return leaves[typ]
    sub = lambda t: typed(t, depth - 1)  # noqa: E731
    options = [leaves[typ], st.tuples(sub(typ), sub(typ)).map(lambda t: Binary("|", *t))]
    if typ is ValueType.STRING:
        options.append(sub(ValueType.STRING).map(lambda k: Index(Var("m1"), k)))
    if typ is ValueType.BOOL:
        options += [
            st.tuples(st.sampled_from(["&&", "||"]), sub(ValueType.BOOL), sub(ValueType.BOOL)).map(
                lambda t: Binary(*t)
            ),
            sub(ValueType.BOOL).map(lambda k: Unary("!", k)),
            st.tuples(sub(ValueType.STRING), sub(ValueType.STRING)).map(lambda t: Call("match", t)),
        ]
        for t in (ValueType.STRING, ValueType.INT64, ValueType.IP_ADDRESS):
            options.append(
                st.tuples(st.sampled_from(["==", "!="]), sub(t), sub(t)).map(lambda x: Binary(*x))
            )
    return st.one_of(*options)


request_bags = st.fixed_dictionaries(
    {},
    optional={
        "s1": st.sampled_from(["x", "y", "xy", "*"]),
        "s2": st.sampled_from(["x", "y*", "*y"]),
        "a.b": st.just("ab"),
        "i1": st.integers(0, 3),
        "b1": st.booleans(),
        "b2": st.booleans(),
        "m1": st.dictionaries(st.sampled_from(["x", "y", ""]), st.sampled_from(["x", "y"])),
        "ip1": st.sampled_from([b"\n\x00\x00\x01", b"\x7f\x00\x00\x01"]),
    },
)


@settings(max_examples=300)
@given(
    st.sampled_from([ValueType.STRING, ValueType.INT64, ValueType.BOOL]).flatmap(typed),
    request_bags,
)
def test_compiled_equals_reference(tree, bag):
    compiled = compile_expr(tree, MANIFEST.get)
    want_refs: dict = {}
    try:
        want = reference(tree, bag, want_refs)
    except Absent:
        want = MISSING
    got_refs: dict = {}
    got = compiled(bag, got_refs)
    assert got == want or (got is MISSING and want is MISSING)
    assert got_refs == want_refs


# -- type checking and references -----------------------------------------------------------
@pytest.mark.parametrize(
    "text, message",
    [
        ('nope == "x"', "undeclared attribute 'nope'"),
        ("s1 == i1", "type mismatch: s1 is STRING but i1 is INT64"),
        ('s1["k"]', "only a STRING_MAP has keys"),
        ("s1 && b1", "left side of && must be BOOL"),
        ('frob("x")', "unknown function 'frob'"),
        ('ip("not an address")', "not a valid argument of ip()"),
    ],
)
def test_type_errors(text, message):
    with pytest.raises(ExprError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compile_expr(text, MANIFEST.get)


def test_references_are_recorded_with_map_keys_and_absence():
    expr = compile_expr('(m1["app"] | "unknown") == "ratings" && b1', MANIFEST.get)
    refs: dict = {}
    assert expr({"m1": {"app": "ratings"}, "b1": True}, refs) is True
    assert refs == {("m1", "app"): EXACT, "b1": EXACT}
    refs = {}
    assert expr({"m1": {}}, refs) is False
    assert refs == {("m1", "app"): ABSENCE}
    refs = {}
    assert expr({}, refs) is False
    assert refs == {"m1": ABSENCE}


def test_duration_literals_and_strings():
    assert compile_expr('d1 | "10ms"', MANIFEST.get)({}, {}) == dt.timedelta(milliseconds=10)
    # "0" reads as a duration in Istio 0.2, but compared with a string it is the string "0"
    assert compile_expr('s1 == "0"', MANIFEST.get)({"s1": "0"}, {}) is True
    assert compile_expr('s1 | "10s"', MANIFEST.get)({}, {}) == "10s"


def test_ip_comparison_by_address():
    expr = compile_expr('ip1 == ip("10.0.0.1")', MANIFEST.get)
    assert expr({"ip1": b"\n\x00\x00\x01"}, {}) is True
    assert expr({"ip1": b"\n\x00\x00\x02"}, {}) is False
