"""Hostile input: random wire messages and random config never crash the decoder, the parsers
or the compiler; they give a clear error or a result."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from meshfed.core.resources import parse_documents
from meshfed.mixer.api.v1 import attributes_pb2, report_pb2
from meshfed.mixer.attributes import codec
from meshfed.mixer.config.compile import compile_config
from meshfed.mixer.config.parse import parsers
from meshfed.mixer.config.store import parse_documents as mixer_documents
from meshfed.mixer.expr import ExprError, parse

from .testkinds import kinds

indices = st.integers(min_value=-(2**31), max_value=2**31 - 1)


@st.composite
def messages(draw):
    msg = attributes_pb2.CompressedAttributes(words=draw(st.lists(st.text(max_size=5), max_size=4)))
    for k, v in draw(st.dictionaries(indices, indices, max_size=4)).items():
        msg.strings[k] = v
    for k, v in draw(
        st.dictionaries(indices, st.integers(-(2**63), 2**63 - 1), max_size=3)
    ).items():
        msg.int64s[k] = v
    for k, entries in draw(
        st.dictionaries(indices, st.dictionaries(indices, indices, max_size=3), max_size=2)
    ).items():
        for mk, mv in entries.items():
            msg.string_maps[k].entries[mk] = mv
    return msg


@given(messages(), st.integers(0, 400))
def test_random_messages_decode_or_fail_cleanly(msg, count):
    try:
        codec.decode(msg, count)
    except codec.DecodeError as exc:
        assert str(exc)


@given(st.binary(max_size=200))
def test_random_bytes_never_crash_batch_decoding(data):
    try:
        request = report_pb2.ReportRequest.FromString(data)
    except Exception:  # protobuf's own DecodeError: the server answers INVALID_ARGUMENT
        return
    with contextlib.suppress(codec.DecodeError):
        list(codec.decode_batch(request))


@given(st.text(max_size=40))
def test_random_expression_text_parses_or_fails_cleanly(text):
    try:
        parse(text)
    except ExprError as exc:
        assert str(exc)


yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
    lambda kids: st.one_of(
        st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=8), kids, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=200)
@given(
    st.sampled_from(
        [
            "rule",
            "metric",
            "logentry",
            "quota",
            "listentry",
            "attributemanifest",
            "testdeny",
            "testrecord",
        ]
    ),
    st.dictionaries(
        st.sampled_from(
            [
                "match",
                "actions",
                "value",
                "dimensions",
                "attributes",
                "status",
                "variables",
                "timestamp",
                "budget",
                "x",
            ]
        ),
        yaml_values,
        max_size=4,
    ),
)
def test_random_specs_give_errors_not_crashes(kind, spec):
    raw = {
        "apiVersion": "config.istio.io/v1alpha2",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "istio-system"},
        "spec": spec,
    }
    docs, errors = parse_documents("fuzz.yaml", [raw])
    table = parsers(kinds())
    objects, more = mixer_documents(docs, table)
    for error in errors + more:
        assert error.file == "fuzz.yaml" and error.obj
    compile_config(objects, kinds())
