"""The YAML loader and FieldReader: hostile input gives clean errors, fast, never an exception."""

from __future__ import annotations

import resource
import time

import pytest

from meshfed.core.resources import MAX_ALIAS_NODES, FieldReader, load_bytes, parse_yaml

SE = "apiVersion: networking.meshfed.io/v1alpha1\nkind: ServiceEntry\nmetadata: {name: x}\n"


def billion_laughs() -> bytes:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return (SE + "spec:\n" + "".join(f"  {line}\n" for line in lines)).encode()


def test_an_alias_bomb_is_refused_before_it_is_built():
    data = billion_laughs()
    assert len(data) < 1500
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    docs, errors = load_bytes("bomb.yaml", data)
    assert time.monotonic() - start < 0.5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 20_000  # KiB
    assert not docs
    assert [str(e) for e in errors] == [
        f"bomb.yaml: line 1, column 1: invalid YAML: aliases expand to more than "
        f"{MAX_ALIAS_NODES} extra nodes (refused, as an alias bomb)"
    ]


def test_modest_anchors_still_work():
    text = SE + "spec:\n  a: &l {app: x}\n  b: *l\n  c: {<<: *l, v: 1}\n"
    (doc,), errors = load_bytes("ok.yaml", text.encode())
    assert not errors and doc.spec["c"] == {"app": "x", "v": 1}


def test_recursive_aliases_and_deep_nesting_are_refused():
    assert "recursive alias" in str(parse_yaml("f", b"a: &a [*a]\n")[1][0])
    assert "deeper than" in str(parse_yaml("f", b"a: " + b"[" * 150 + b"]" * 150)[1][0])


def test_non_utf8_names_the_byte_position():
    (error,) = load_bytes("f.yaml", b"kind: ok\nname: caf\xe9\n")[1]
    assert str(error) == "f.yaml: file: not valid UTF-8 at byte 18 (line 2)"


def test_duplicate_keys_are_an_error_naming_the_key():
    (error,) = load_bytes("f.yaml", (SE + "spec: {}\nkind: WorkloadEntry\n").encode())[1]
    assert "duplicate key 'kind' (first at line 2)" in str(error) and "line 5" in str(error)


@pytest.mark.parametrize(
    "text",
    [
        "a: 2024-13-45\n",
        "a: " + "9" * 5000 + "\n",
        "a: !!timestamp x\n",
        "a: !!python/name:os.system\n",
    ],
)
def test_unbuildable_scalars_are_errors_where_they_are(text):
    docs, (error,) = parse_yaml("f.yaml", text.encode())
    assert docs == [None] or docs == []
    assert str(error).startswith("f.yaml: line 1, column 4: invalid YAML")


def test_a_bad_document_keeps_its_neighbours():
    text = SE + "---\na: 2024-13-45\n---\n" + SE.replace("name: x", "name: y")
    docs, errors = load_bytes("f.yaml", text.encode())
    assert [d.name for d in docs] == ["x", "y"] and len(errors) == 1


def test_field_reader_scalars_are_strict():
    reader = FieldReader(
        "f", "o", {"a": "²", "b": "٩٠٨٠", "c": "true", "d": 1.5, "e": float("nan")}
    )
    assert reader.int("a") == 0 and reader.int("b") == 0
    assert reader.bool("c") is False and reader.port("d") == 0 and reader.number("e") == 0
    assert [e.field for e in reader.errors] == ["a", "b", "c", "d", "e"]


def test_error_messages_never_repeat_a_long_value():
    reader = FieldReader("f", "o", {"a": "x" * 1_000_000, "b": {"k" * 100_000: 1}})
    reader.int("a")
    reader.reader("b").unknown_fields({"known"})
    assert all(len(str(e)) < 1000 for e in reader.errors)
