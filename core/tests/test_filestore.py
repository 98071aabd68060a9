"""The watched file store: per-object apply with last good versions, and a watch that survives
its folder being deleted, re-created, replaced or renamed, and files that are not files."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshfed.core.filestore import WatchedFiles
from meshfed.core.resources import ConfigError, Document, FieldReader


def parse_thing(doc: Document) -> tuple[tuple[str, int] | None, list[ConfigError]]:
    reader = FieldReader(doc.file, doc.ref, doc.spec, "spec")
    value = reader.int("value", required=True)
    return (None, reader.errors) if reader.errors else ((doc.name, value), [])


def explode(doc: Document) -> tuple[Any, list[ConfigError]]:
    raise ValueError("parser bug")


PARSERS = {"Thing": parse_thing, "Explodes": explode}


def thing(name: str, value: object, kind: str = "Thing") -> str:
    return f"apiVersion: v1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec: {{value: {value}}}\n"


def docs(*parts: str) -> str:
    return "---\n".join(parts)


class Store:
    def __init__(self, paths: list[Path]) -> None:
        self.changes = 0
        self.files: WatchedFiles[tuple[str, int]] = WatchedFiles(paths, PARSERS, self._changed)

    def _changed(self) -> None:
        self.changes += 1

    @property
    def state(self) -> dict[str, int]:
        return dict(self.files.objects())

    def errors(self) -> list[str]:
        return [str(e) for e in self.files.errors]


# -- per-object apply --------------------------------------------------------------------------


def test_one_bad_document_does_not_drop_the_others(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(docs(thing("a", 1), thing("b", "x"), thing("c", 3)))
    store = Store([tmp_path])
    store.files.reload()
    assert store.state == {"a": 1, "c": 3}
    assert store.errors() == [f"{path}: Thing default/b: spec.value: expected an integer, got 'x'"]


def test_bad_document_keeps_its_last_good_version(tmp_path: Path, caplog) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(docs(thing("a", 1), thing("b", 2)))
    store = Store([path])
    store.files.reload()
    path.write_text(docs(thing("a", 10), thing("b", "broken")))
    with caplog.at_level(logging.ERROR):
        store.files.reload()
    assert store.state == {"a": 10, "b": 2}
    assert "keeping its last good state" in caplog.text and "Thing default/b" in caplog.text
    # Fixed: the new version applies and the error clears.
    path.write_text(docs(thing("a", 10), thing("b", 20)))
    store.files.reload()
    assert store.state == {"a": 10, "b": 20} and store.errors() == []
    # A document removed from the file removes its object.
    path.write_text(thing("a", 10))
    store.files.reload()
    assert store.state == {"a": 10}


def test_unidentified_document_removes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(docs(thing("a", 1), thing("b", 2)))
    store = Store([path])
    store.files.reload()
    # b's metadata is mistyped: which object it was cannot be told, so b is not removed.
    path.write_text(docs(thing("a", 5), thing("b", 2).replace("metadata", "metdata")))
    store.files.reload()
    assert store.state == {"a": 5, "b": 2}
    assert any("metadata: is required" in e for e in store.errors())


@pytest.mark.parametrize(
    "breakage",
    [
        lambda p: p.write_text("kind: Thing\n  bad: [indent\n"),
        lambda p: p.write_bytes(b"\xff" + p.read_bytes()),
        lambda p: (p.unlink(), p.mkdir()),
        lambda p: (p.unlink(), os.mkfifo(p)),
        lambda p: (p.unlink(), p.symlink_to("/dev/zero")),
    ],
    ids=["invalid-yaml", "not-utf8", "directory", "fifo", "device"],
)
def test_file_that_cannot_be_read_keeps_all_its_objects(
    tmp_path: Path, breakage: Callable[[Path], object]
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(docs(thing("a", 1), thing("b", 2)))
    other = tmp_path / "other.yaml"
    other.write_text(thing("c", 3))
    store = Store([tmp_path])
    store.files.reload()
    breakage(path)
    other.write_text(thing("c", 30))
    store.files.reload()
    assert store.state == {"a": 1, "b": 2, "c": 30}
    assert len(store.errors()) == 1 and store.errors()[0].startswith(f"{path}: ")


def test_parser_bug_costs_one_object(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(docs(thing("a", 1), thing("boom", 1, kind="Explodes")))
    store = Store([path])
    store.files.reload()
    assert store.state == {"a": 1}
    assert store.errors() == [
        f"{path}: Explodes default/boom: not parsed: ValueError('parser bug')"
    ]


def test_missing_path_keeps_last_good_objects(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "a.yaml").write_text(thing("a", 1))
    store = Store([folder])
    store.files.reload()
    shutil.rmtree(folder)
    store.files.reload()
    assert store.state == {"a": 1}
    assert store.errors() == [
        f"{folder}: path: not found (keeping its last good objects until it returns)"
    ]
    # A file deleted from a folder that exists is a removal.
    folder.mkdir()
    store.files.reload()
    assert store.state == {} and store.errors() == []


Doc = tuple[str, bool, int]  # name, good, value
names = st.sampled_from(["a", "b", "c", "d"])
documents = st.lists(st.tuples(names, st.booleans(), st.integers(0, 9)), max_size=5)


@settings(max_examples=150, deadline=None)
@given(st.lists(documents, min_size=1, max_size=6))
def test_per_object_apply_matches_its_model(tmp_path_factory, edits: list[list[Doc]]) -> None:
    """After any sequence of edits, each object in force is its latest good version, present
    only while its document is in the file; a bad document with no good past applies nothing."""
    path = tmp_path_factory.mktemp("p") / "things.yaml"
    store = Store([path])
    model: dict[str, int] = {}
    for edit in edits:
        path.write_text(docs(*(thing(n, v if good else "bad") for n, good, v in edit)) or "\n")
        store.files.reload()
        good = {n: v for n, ok, v in edit if ok}  # duplicates: a later document wins in both
        model = {
            **{n: model[n] for n, ok, _ in edit if not ok and n in model and n not in good},
            **good,
        }
        assert store.state == model
        assert len(store.errors()) == sum(1 for _, ok, _ in edit if not ok)


SLOT_STATES = st.one_of(
    st.tuples(st.just("good"), st.integers(0, 9)),
    st.sampled_from(["bad", "fifo", "device", "directory", "absent", "not-utf8", "yaml-error"]).map(
        lambda s: (s, 0)
    ),
)


def put(path: Path, state: str, value: int) -> None:
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    elif os.path.lexists(path):
        path.unlink()
    if state == "good":
        path.write_text(thing(path.stem, value))
    elif state == "bad":
        path.write_text(thing(path.stem, "oops"))
    elif state == "fifo":
        os.mkfifo(path)
    elif state == "device":
        path.symlink_to("/dev/zero")
    elif state == "directory":
        path.mkdir()
    elif state == "not-utf8":
        path.write_bytes(thing(path.stem, 1).encode() + b"# \xff\n")
    elif state == "yaml-error":
        path.write_text(thing(path.stem, 1) + "  : [\n")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["p", "q", "r"]), SLOT_STATES), min_size=1, max_size=12))
def test_any_sequence_of_file_faults_keeps_last_good_objects(
    tmp_path_factory, steps: list[tuple[str, tuple[str, int]]]
) -> None:
    """Files of a folder turned into anything, in any order: each object is its file's latest
    good version, kept while the file is broken and removed with the file; nothing raises."""
    folder = tmp_path_factory.mktemp("faults")
    store = Store([folder])
    model: dict[str, int] = {}
    states: dict[str, str] = {}
    for slot, (state, value) in steps:
        put(folder / f"{slot}.yaml", state, value)
        states[slot] = state
        if state == "good":
            model[slot] = value
        elif state == "absent":
            model.pop(slot, None)
        store.files.reload()
        assert store.state == model
        broken = sum(1 for s in states.values() if s not in ("good", "absent"))
        assert len(store.errors()) == broken


# -- watching ----------------------------------------------------------------------------------


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            pytest.fail(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


class Watching:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.task = asyncio.create_task(store.files.watch())

    async def stop(self) -> float:
        started = time.monotonic()
        self.store.files.stop()
        await asyncio.wait_for(self.task, 5)
        return time.monotonic() - started


async def watching(paths: list[Path]) -> Watching:
    w = Watching(Store(paths))
    await eventually(lambda: w.store.changes > 0, "first load")
    return w


async def test_edits_apply_and_stop_is_prompt(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(thing("a", 1))
    w = await watching([tmp_path])
    assert w.store.state == {"a": 1}
    path.write_text(thing("a", 2))
    await eventually(lambda: w.store.state == {"a": 2}, "edit applied")
    assert await w.stop() < 1


async def test_folder_deleted_and_recreated_is_watched_again(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "a.yaml").write_text(thing("a", 1))
    w = await watching([folder])
    shutil.rmtree(folder)
    await eventually(lambda: any("not found" in e for e in w.store.errors()), "missing reported")
    assert w.store.state == {"a": 1}
    folder.mkdir()
    (folder / "a.yaml").write_text(thing("a", 2))
    await eventually(lambda: w.store.state == {"a": 2}, "re-created folder read")
    for value in (3, 4):  # and watched: later edits apply too
        (folder / "a.yaml").write_text(thing("a", value))
        await eventually(lambda v=value: w.store.state == {"a": v}, f"edit {value} applied")
    assert w.store.errors() == []
    assert await w.stop() < 1


async def test_folder_replaced_within_one_debounce(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "a.yaml").write_text(thing("a", 1))
    w = await watching([folder])
    shutil.rmtree(folder)
    folder.mkdir()  # same path, new inode: the old watch is dead
    (folder / "a.yaml").write_text(thing("a", 2))
    await eventually(lambda: w.store.state == {"a": 2}, "replacement read")
    (folder / "a.yaml").write_text(thing("a", 3))
    await eventually(lambda: w.store.state == {"a": 3}, "edit in the replacement applied")
    await w.stop()


async def test_folder_renamed_away_and_another_put_in_its_place(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "a.yaml").write_text(thing("a", 1))
    w = await watching([folder])
    folder.rename(tmp_path / "conf.old")
    (tmp_path / "conf.old" / "a.yaml").write_text(thing("a", 99))  # no longer ours
    folder.mkdir()
    (folder / "a.yaml").write_text(thing("a", 2))
    await eventually(lambda: w.store.state == {"a": 2}, "new folder read")
    (folder / "a.yaml").write_text(thing("a", 3))
    await eventually(lambda: w.store.state == {"a": 3}, "edit in the new folder applied")
    await w.stop()


async def test_path_created_after_start_is_picked_up(tmp_path: Path) -> None:
    folder = tmp_path / "later" / "conf"
    w = await watching([folder])
    assert w.store.state == {}
    folder.mkdir(parents=True)
    (folder / "a.yaml").write_text(thing("a", 1))
    await eventually(lambda: w.store.state == {"a": 1}, "late folder read")
    (folder / "a.yaml").write_text(thing("a", 2))
    await eventually(lambda: w.store.state == {"a": 2}, "late folder watched")
    await w.stop()


async def test_watched_file_path_deleted_and_recreated(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(thing("a", 1))
    w = await watching([path])
    path.unlink()
    await eventually(lambda: any("not found" in e for e in w.store.errors()), "missing reported")
    assert w.store.state == {"a": 1}
    path.write_text(thing("a", 2))
    await eventually(lambda: w.store.state == {"a": 2}, "re-created file read")
    await w.stop()


async def test_fifo_in_a_watched_folder_blocks_nothing(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(thing("a", 1))
    w = await watching([tmp_path])
    fifo = tmp_path / "x.yaml"
    os.mkfifo(fifo)
    (tmp_path / "a.yaml").write_text(thing("a", 2))
    await eventually(lambda: w.store.state == {"a": 2}, "edit beside the FIFO applied")
    assert any(f"{fifo}: file: not a regular file (a FIFO)" in e for e in w.store.errors())
    assert await w.stop() < 1


async def test_a_failing_apply_does_not_end_watching(tmp_path: Path, caplog) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(thing("a", 1))
    failures = [RuntimeError("store bug")]
    seen: list[dict[str, int]] = []
    files: WatchedFiles[tuple[str, int]]

    def on_change() -> None:
        seen.append(dict(files.objects()))
        if failures:
            raise failures.pop()

    files = WatchedFiles([tmp_path], PARSERS, on_change)
    task = asyncio.create_task(files.watch())
    await eventually(lambda: seen, "first load")
    await eventually(lambda: not failures and len(seen) >= 2, "retried after the failure")
    assert "watching failed (RuntimeError('store bug'))" in caplog.text
    path.write_text(thing("a", 2))
    await eventually(lambda: seen[-1] == {"a": 2}, "edit applied after the failure")
    await eventually(lambda: not files.errors, "failure cleared once watching works")
    files.stop()
    await asyncio.wait_for(task, 5)


async def test_configmap_style_folder_follows_its_atomic_swaps(tmp_path: Path) -> None:
    """A Kubernetes ConfigMap volume: x.yaml -> ..data/x.yaml, ..data -> a timestamped folder,
    updated by writing a new folder and renaming a new ..data link over the old one."""

    def publish(version: str, value: int) -> None:
        payload = tmp_path / f"..{version}"
        payload.mkdir()
        (payload / "a.yaml").write_text(thing("a", value))
        (tmp_path / "..data_tmp").symlink_to(payload.name)
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")

    publish("2026_01_01_00_00_00.1", 1)
    (tmp_path / "a.yaml").symlink_to("..data/a.yaml")
    w = await watching([tmp_path])
    assert w.store.state == {"a": 1} and w.store.errors() == []
    publish("2026_01_01_00_00_01.2", 2)
    shutil.rmtree(tmp_path / "..2026_01_01_00_00_00.1")
    await eventually(lambda: w.store.state == {"a": 2}, "swapped ConfigMap payload read")
    assert w.store.errors() == []
    await w.stop()


async def test_a_log_and_editor_files_in_the_watched_folder_cost_no_re_read(
    tmp_path: Path, caplog
) -> None:
    (tmp_path / "a.yaml").write_text(thing("a", 1))
    w = await watching([tmp_path])
    loads = w.store.changes
    caplog.set_level(logging.DEBUG)
    log_file = tmp_path / "hub.log"
    for n in range(40):  # a process appending to its log beside the config, for ~2 s
        with log_file.open("a") as out:
            out.write(f"line {n}\n")
        if n % 10 == 0:  # an editor's swap, backup and probe files come and go
            for name in (".a.yaml.swp", "a.yaml~", "4913"):
                (tmp_path / name).write_text(thing("a", 99))
                (tmp_path / name).unlink()
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # past the watch's debounce: any re-read would have happened
    assert w.store.changes == loads
    assert [r.getMessage() for r in caplog.records if r.name.startswith("meshfed")] == []
    (tmp_path / "a.yaml").write_text(thing("a", 2))  # a real edit still applies
    await eventually(lambda: w.store.state == {"a": 2}, "edit applied")
    assert w.store.changes == loads + 1
    assert await w.stop() < 1
