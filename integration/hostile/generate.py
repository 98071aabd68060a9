"""Write the hostile corpus: files every meshfed reader must refuse cleanly, committed beside it.

Run ``python -m integration.hostile.generate`` to (re)write ``corpus/`` and ``corpus/INDEX.tsv``
(file, class, the field an error must name or "" for a file-level error). The output is
deterministic, so a regenerated corpus differs from the committed one only when the seeds, the
palette or this script changed.

Classes:

- ``field``: a seed of every kind with one field replaced by a hostile value it must refuse
  (each field of each kind gets one, the values taken in turn from the palette), or removed
  when it is required;
- ``unknown``: a misspelt field added to each mapping of each kind;
- ``yaml``: input the YAML layer refuses: non-UTF-8 bytes and other encodings, alias bombs and
  recursive aliases, nesting past the limit, duplicate keys, scalars Python cannot build,
  syntax errors, tags the safe loader refuses;
- ``shape``: well-formed YAML that is no resource: scalars, lists, missing kind or metadata,
  huge names and keys, a bad document among good ones.

Files a reader must refuse by what they are rather than what they hold (a FIFO, a symlink to
``/dev/zero``, a directory named ``x.yaml``) cannot be committed; the tests make them on the fly.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from integration.hostile.seeds import (
    HOSTILE_VALUES,
    SEEDS,
    added,
    field_name,
    mapping_paths,
    mutable_paths,
    removed,
    replaced,
)

CORPUS = Path(__file__).parent / "corpus"
INDEX = CORPUS / "INDEX.tsv"


def _dump(doc: Any) -> bytes:
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False).encode("utf-8")


def _refused(data: bytes) -> list[str]:
    from meshfed.validate import validate_files

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.yaml"
        path.write_bytes(data)
        logging.disable(logging.CRITICAL)
        try:
            _, errors, _ = validate_files([path])
        finally:
            logging.disable(logging.NOTSET)
    return [e.field for e in errors]


def field_cases() -> Iterator[tuple[str, str, bytes]]:
    turn = 0
    for kind in SEEDS:
        for path in mutable_paths(kind):
            name = field_name(path)
            for step in range(len(HOSTILE_VALUES)):
                value = HOSTILE_VALUES[(turn + step) % len(HOSTILE_VALUES)]
                data = _dump(replaced(kind, path, value))
                if _refused(data):
                    turn += step + 1
                    yield f"field-{kind}", name, data
                    break
            data = _dump(removed(kind, path))
            if _refused(data):
                yield f"removed-{kind}", name, data


def unknown_cases() -> Iterator[tuple[str, str, bytes]]:
    for kind in SEEDS:
        for path in mapping_paths(kind):
            data = _dump(added(kind, path, "destinaton", "typo"))
            if _refused(data):
                yield f"unknown-{kind}", field_name((*path, "destinaton")), data


def _bomb(levels: int, width: int, flow: bool) -> bytes:
    lines = ['a0: &a0 ["lol"]']
    for level in range(1, levels + 1):
        refs = ", ".join([f"*a{level - 1}"] * width)
        lines.append(f"a{level}: &a{level} [{refs}]" if flow else f"a{level}: &a{level}")
        if not flow:
            lines.extend(f"  - *a{level - 1}" for _ in range(width))
    body = "\n".join("    " + line for line in lines)
    head = "apiVersion: config.istio.io/v1alpha2\nkind: RouteRule\nmetadata: {name: lol}\n"
    return (head + "spec:\n  destination: {name: reviews}\n  appendHeaders:\n" + body).encode()


def _seed_text(kind: str = "ServiceEntry") -> str:
    return _dump(SEEDS[kind]).decode()


def yaml_cases() -> Iterator[tuple[str, str, bytes]]:
    seed = _seed_text()
    encoded = seed.encode()
    # Encodings: bytes that are not UTF-8, at the start, the middle and the end of a file.
    for at in (0, len(encoded) // 2, len(encoded) - 1):
        for bad in (b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80", b"\xf8\x88\x80\x80\x80"):
            yield "yaml-encoding", "", encoded[:at] + bad + encoded[at:]
    yield "yaml-encoding", "", encoded + b"\xe2\x82"  # a character cut at the end
    yield "yaml-encoding", "", seed.replace("ledger", "l\xe9dger").encode("latin-1")
    yield "yaml-encoding", "", seed.encode("utf-16")
    yield "yaml-encoding", "", seed.encode("utf-32")
    yield "yaml-encoding", "", b"\x00" * 64
    # Alias bombs of several shapes, and aliases that contain themselves.
    for levels, width, flow in ((9, 9, True), (9, 9, False), (6, 20, True), (30, 2, True)):
        yield "yaml-aliases", "", _bomb(levels, width, flow)
    yield "yaml-aliases", "", b"a: &a [*a]\n"
    yield "yaml-aliases", "", b"a: &a {b: *a}\n"
    yield "yaml-aliases", "", b"a: &a {<<: *a, b: 1}\n"
    merge = "base: &b {" + ", ".join(f"k{i}: v" for i in range(50)) + "}\n"
    merge += "".join(
        f"m{i}: &m{i} {{<<: *{'b' if i == 0 else f'm{i - 1}'}, x{i}: 1}}\n" for i in range(40)
    )
    yield (
        "yaml-aliases",
        "",
        (merge * 1).encode() + b"list: [" + b", ".join([b"*m39"] * 5000) + b"]\n",
    )
    yield "yaml-aliases", "", b"a: *undefined\n"
    # Nesting past the limit, flow and block, and just under the parser's own limit.
    for depth in (101, 500, 999, 5000):
        yield "yaml-depth", "", b"spec: " + b"[" * depth + b"]" * depth + b"\n"
    yield "yaml-depth", "", "".join("  " * i + f"k{i}:\n" for i in range(150)).encode() + b"x\n"
    yield "yaml-depth", "", b"spec: " + b"{a: " * 200 + b"1" + b"}" * 200 + b"\n"
    # Duplicate keys, where a user would make them.
    for text in (
        seed + "kind: ServiceEntry\n",
        seed.replace("  name: ledger\n", "  name: ledger\n  name: other\n", 1),
        seed.replace("  hosts:", "  ports: []\n  hosts:", 1),
        "a: 1\nb: 2\na: 3\n",
        "{a: 1, a: 1}\n",
        "? [x]\n: 1\n? [x]\n: 2\n",
    ):
        yield "yaml-duplicate", "", text.encode()
    # Scalars the constructor cannot build, and tags the safe loader refuses.
    for text in (
        "a: 2024-13-45\n",
        "a: 2024-02-30 25:61:61\n",
        "a: " + "9" * 5000 + "\n",
        "a: 0x" + "f" * 5000 + "\n",
        "a: !!binary 'not base64!'\n",
        "a: !!python/object/apply:os.system ['true']\n",
        "a: !!python/name:os.system\n",
        "a: !custom 1\n",
        "a: !!set {x: 1}\nb: !!omap [1]\n",
        "a: !!float 'x'\n",
        "a: !!int 'x'\n",
        "a: !!timestamp 'x'\n",
    ):
        yield "yaml-scalar", "", text.encode()
    # Syntax.
    for text in (
        "a: [\n",
        "a: {b: 1\n",
        "a:\n\tb: 1\n",
        "a: 'unterminated\n",
        'a: "bad escape \\q"\n',
        "- a\nb: c\n",
        "a: b: c\n",
        "%YAML 9.9\n---\na: 1\n",
        "%TAG ! tag:a\n%TAG ! tag:b\n---\na: 1\n",
        "&a &b x\n",
        "a: \x07bell\n",
        "a: x\x0cy\n",
        "---\n... \n---\n[\n",
        seed + "---\n" + "a: [\n",
    ):
        yield "yaml-syntax", "", text.encode()


def shape_cases() -> Iterator[tuple[str, str, bytes]]:
    seed = dict(SEEDS["RouteRule"])
    for text in ("just a string\n", "42\n", "[1, 2, 3]\n", "- kind: RouteRule\n", "true\n"):
        yield "shape", "", text.encode()
    for key in ("kind", "metadata", "apiVersion"):
        doc = {k: v for k, v in seed.items() if k != key}
        yield "shape", key, _dump(doc)
    yield "shape", "metadata.name", _dump({**seed, "metadata": {"name": "x" * 1_000_000}})
    yield "shape", "metadata.name", _dump({**seed, "metadata": {"name": "x" * 254}})
    yield "shape", "metadata.name", _dump({**seed, "metadata": {"name": ""}})
    yield "shape", "metadata.name", _dump({**seed, "metadata": {"name": "."}})
    yield "shape", "metadata.name", _dump({**seed, "metadata": {"name": "../../x"}})
    yield "shape", "spec", _dump({**seed, "spec": {("k" * 100_000): 1}})
    yield "shape", "spec", _dump({**seed, "spec": "a string"})
    yield "shape", "spec", _dump({**seed, "spec": [1, 2]})
    yield "shape", "kind", _dump({**seed, "kind": "RouteRul"})
    yield "shape", "kind", _dump({**seed, "kind": ["RouteRule"]})
    good = _dump(SEEDS["RouteRule"]).decode()
    bad = _dump(replaced("RouteRule", ("spec", "precedence"), "²")).decode()
    # Mixed files: the bad document is refused, the good ones around it apply (per object).
    yield "shape-mixed", "spec.precedence", (good + "---\n" + bad + "---\n" + good).encode()
    many = "---\n".join(
        _dump(replaced("EgressRule", ("metadata", "name"), f"e{i}")).decode() for i in range(200)
    )
    yield (
        "shape-mixed",
        "spec.ports",
        (many + "---\n" + _dump(replaced("EgressRule", ("spec", "ports"), [])).decode()).encode(),
    )


def cases() -> Iterator[tuple[str, str, bytes]]:
    yield from field_cases()
    yield from unknown_cases()
    yield from yaml_cases()
    yield from shape_cases()


def main() -> None:
    if CORPUS.exists():
        shutil.rmtree(CORPUS)
    CORPUS.mkdir()
    rows = []
    for number, (kind, field, data) in enumerate(cases()):
        name = f"{number:04d}-{kind}.yaml"
        (CORPUS / name).write_bytes(data)
        rows.append(f"{name}\t{kind}\t{field}")
    INDEX.write_text("file\tclass\tfield\n" + "\n".join(rows) + "\n", encoding="utf-8")
    print(f"wrote {len(rows)} files to {CORPUS}")


if __name__ == "__main__":
    main()
