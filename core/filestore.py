"""Config files watched live, applied per object, with the last good version of each kept.

Both the static registry (ServiceEntry / WorkloadEntry) and Pilot's config store (routing kinds)
read YAML files a user edits while the mesh runs. This is their one mechanism, and it promises:

- **Per-object apply**, as ``kubectl apply`` does: each document of each file is parsed on its
  own. A good document replaces its object; a bad one is reported and its object (identity: kind,
  namespace, name) keeps its last good version if it had one, else nothing is applied for it. A
  file that cannot be read or is not valid YAML keeps all its last good objects. An object removed
  from a file (or a file removed from a folder) goes away, unless the file has a document whose
  identity cannot be told (then nothing of that file is removed until it is fixed).
- **Files are read off the event loop**, through :func:`meshfed.core.files.read_config_file`
  (regular files only, size limit), so a FIFO or a slow disk never freezes the process.
- **Watching never ends silently**: paths are watched with inotify (no polling of contents). A
  watched path that disappears keeps its last good objects, is waited for (its nearest existing
  parent is watched) and is read again when it returns, even as a new folder at the same path. A
  watcher failure is logged and reported in :attr:`WatchedFiles.errors`; files are then re-read
  on a backoff until watching works again.
- **Only config changes cost a re-read**: a watched folder is often shared with other files (a
  log being appended to, an editor's swap and backup files such as ``.x.yaml.swp``, ``x.yaml~``
  or vim's ``4913`` probe). Their events are dropped before anything is read or logged
  (:func:`is_config_event`), so the store never loops on a neighbour's writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

import attrs
from watchfiles._rust_notify import RustNotify  # watchfiles' documented low-level watcher

from meshfed.core.resources import ConfigError, Document, load_documents

log = logging.getLogger("meshfed.core.filestore")

T = TypeVar("T")
YAML_SUFFIXES = (".yaml", ".yml")
DocParser = Callable[[Document], tuple[Any, list[ConfigError]]]

DEBOUNCE_MS = 200
STEP_MS = 50
# How often the watched folders' identities are re-checked while nothing changes, a safety net
# for a folder replaced without an event reaching its old watch.
CHECK_MS = 2000
RETRY_MIN_S, RETRY_MAX_S = 0.5, 5.0


@attrs.frozen(slots=True)
class FileParse(Generic[T]):
    """One file's documents: the good objects by identity, the errors, and which objects failed."""

    path: Path
    objects: tuple[tuple[str, T], ...] = ()  # (``Kind namespace/name``, object), document order
    errors: tuple[ConfigError, ...] = ()
    bad: frozenset[str] = frozenset()  # identities of documents that failed
    complete: bool = True  # False: some document (or the whole file) could not be identified


def parse_file(path: Path, parsers: Mapping[str, DocParser]) -> FileParse[Any]:
    """Parse each document of ``path`` of a kind in ``parsers``; other kinds are skipped."""
    docs, load_errors = load_documents(path)
    objects: list[tuple[str, Any]] = []
    errors = list(load_errors)
    bad: set[str] = set()
    for doc in docs:
        parser = parsers.get(doc.kind)
        if parser is None:
            continue
        try:
            parsed, doc_errors = parser(doc)
        except Exception as exc:  # a parser bug must cost one object, not the whole store
            log.debug("parser for %s failed", doc.ref, exc_info=True)
            parsed, doc_errors = None, [ConfigError(doc.file, doc.ref, "", f"not parsed: {exc!r}")]
        if doc_errors or parsed is None:
            bad.add(doc.ref)
            errors.extend(doc_errors)
        else:
            objects.append((doc.ref, parsed))
    return FileParse(path, tuple(objects), tuple(errors), frozenset(bad), not load_errors)


@attrs.frozen(slots=True)
class Scan(Generic[T]):
    """Every file under the watched paths, parsed, and the watched paths that do not exist."""

    files: tuple[FileParse[T], ...]
    missing: tuple[Path, ...]


def _is_folder(path: Path) -> bool:
    # A path named like a YAML file is a file even when it is a directory (then it is refused
    # as "not a regular file"), the same rule as for the files inside a folder.
    return path.suffix not in YAML_SUFFIXES and path.is_dir()


def config_files(paths: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """The YAML files named by ``paths`` (files as given, folders' *.yaml sorted), and the
    paths that do not exist."""
    files: list[Path] = []
    missing: list[Path] = []
    for path in paths:
        if _is_folder(path):
            try:
                files.extend(sorted(p for p in path.iterdir() if p.suffix in YAML_SUFFIXES))
            except OSError:  # removed (or made unreadable) between the check and the listing
                missing.append(path)
        elif os.path.lexists(path):
            files.append(path)
        else:
            missing.append(path)
    return files, missing


def scan(paths: Iterable[Path], parsers: Mapping[str, DocParser]) -> Scan[Any]:
    """Read and parse every file; blocking, touches no state: runs in a worker thread."""
    files, missing = config_files(paths)
    return Scan(tuple(parse_file(p, parsers) for p in files), tuple(missing))


@attrs.frozen(slots=True)
class WatchTarget:
    """A folder watched for one configured path, with the inode it had when armed."""

    path: str
    device: int
    inode: int


def watch_targets(paths: Iterable[Path]) -> frozenset[WatchTarget]:
    """The folder to watch for each path: the folder itself, a file's folder, or, while that does
    not exist, its nearest existing parent (whose events tell when it comes back)."""
    targets = set()
    for path in paths:
        folder = Path(os.path.abspath(path if _is_folder(path) else path.parent))
        while True:
            try:
                info = os.stat(folder)
                if stat.S_ISDIR(info.st_mode):
                    targets.add(WatchTarget(str(folder), info.st_dev, info.st_ino))
                    break
            except OSError:
                pass
            if folder.parent == folder:
                break
            folder = folder.parent
    return frozenset(targets)


def is_config_event(changed: str, paths: Iterable[Path]) -> bool:
    """Whether a change to ``changed`` (absolute) can alter what ``paths`` hold: a configured
    path itself, a folder on the way to one (it appears or goes), a YAML file directly inside a
    configured folder, or a Kubernetes ConfigMap volume's ``..data`` / ``..<timestamp>`` entry
    (an update swaps that symlink and touches nothing else)."""
    target = Path(changed)
    if target.name.startswith(".."):
        return True
    for path in paths:
        configured = Path(os.path.abspath(path))
        if target == configured or configured.is_relative_to(target):
            return True
        if target.parent == configured and target.suffix in YAML_SUFFIXES:
            return True
    return False


def _fields(error: ConfigError) -> dict[str, str]:
    """A config error's file and object as log fields (``--log-format json``)."""
    return {"file": error.file, "resource": error.obj}


class _Either:
    """Set when any of its events is (what RustNotify polls to return early)."""

    def __init__(self, *events: asyncio.Event | threading.Event) -> None:
        self._events = events

    def is_set(self) -> bool:
        return any(e.is_set() for e in self._events)


class WatchedFiles(Generic[T]):
    """Objects per file parsed by ``parsers`` (kind -> parser of one document), applied live;
    ``on_change`` is called on the event loop after each (re)read."""

    def __init__(
        self,
        paths: Iterable[Path | str],
        parsers: Mapping[str, DocParser],
        on_change: Callable[[], None],
        what: str = "config",
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self._parsers = parsers
        self._on_change = on_change
        self._what = what
        self.content: dict[Path, tuple[tuple[str, T], ...]] = {}
        self._errors: dict[Path, list[ConfigError]] = {}
        self._watch_problem: ConfigError | None = None
        self._stop = asyncio.Event()

    @property
    def errors(self) -> list[ConfigError]:
        found = [e for path in sorted(self._errors) for e in self._errors[path]]
        return [self._watch_problem, *found] if self._watch_problem else found

    def objects(self) -> Iterator[T]:
        """Every object in force, by file then document."""
        for path in sorted(self.content):
            for _, obj in self.content[path]:
                yield obj

    def read(self) -> Scan[T]:
        """Parse every file; touches no state, so it may run in a worker thread."""
        return scan(self.paths, self._parsers)

    def reload(self) -> None:
        """Re-read every file (blocking: not for the event loop), then call ``on_change`` once."""
        self.commit(self.read())

    async def refresh(self) -> None:
        """Re-read every file in a worker thread and apply the result here, on the loop."""
        self.commit(await asyncio.to_thread(self.read))

    def commit(self, result: Scan[T]) -> None:
        """Apply a scan object by object, keeping last good versions as the module says."""
        missing = set(result.missing)
        content: dict[Path, tuple[tuple[str, T], ...]] = {
            path: entries
            for path, entries in self.content.items()
            if path in missing or path.parent in missing
        }
        errors: dict[Path, list[ConfigError]] = {}
        for path in result.missing:
            kept = any(p == path or p.parent == path for p in content)
            state = "keeping its last good objects until it returns" if kept else "nothing applied"
            error = ConfigError(str(path), "path", "", f"not found ({state})")
            errors[path] = [error]
            if error not in self._errors.get(path, ()):
                log.error("%s error: %s", self._what, error, extra=_fields(error))
        for parsed in result.files:
            old = self.content.get(parsed.path, ())
            good = {ref for ref, _ in parsed.objects}
            kept_entries = [
                (ref, obj)
                for ref, obj in old
                if ref not in good and (ref in parsed.bad or not parsed.complete)
            ]
            entries = (*parsed.objects, *kept_entries)
            if entries:
                content[parsed.path] = entries
            if parsed.errors:
                errors[parsed.path] = list(parsed.errors)
                self._log_errors(parsed, {ref for ref, _ in kept_entries})
        self.content = content
        self._errors = errors
        self._on_change()

    def _log_errors(self, parsed: FileParse[T], kept: set[str]) -> None:
        before = self._errors.get(parsed.path, ())
        for error in parsed.errors:
            if error in before:
                continue  # already reported; every re-read would repeat it otherwise
            if error.obj in kept:
                state = "keeping its last good state"
            elif not parsed.complete and kept:
                state = f"keeping this file's {len(kept)} last good object(s)"
            else:
                state = "not applied"
            log.error("%s error (%s): %s", self._what, state, error, extra=_fields(error))

    def add_errors(self, errors: Iterable[ConfigError]) -> None:
        """Record errors found after parsing (across files), reported with the file's own."""
        for error in errors:
            log.error("%s error: %s", self._what, error, extra=_fields(error))
            self._errors.setdefault(Path(error.file), []).append(error)

    async def watch(self) -> None:
        """Load, then apply every change to the watched paths until :meth:`stop`."""
        failures = 0
        while not self._stop.is_set():
            try:
                await self._watch_until_moved()
                failures = 0
            except Exception as exc:  # watching must go on: report, re-read, retry
                failures += 1
                delay = min(RETRY_MIN_S * 2 ** (failures - 1), RETRY_MAX_S)
                where = ", ".join(str(p) for p in self.paths)
                message = f"watching failed ({exc!r}); re-reading every {delay:g}s until it works"
                self._watch_problem = ConfigError(where, "watch", "", message)
                log.error("%s error: %s", self._what, self._watch_problem)
                try:
                    await self.refresh()
                except Exception as read_exc:
                    log.error("%s: re-reading failed: %r", self._what, read_exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)

    async def _watch_until_moved(self) -> None:
        """Arm a watch, read, apply changes; return when a watched folder appeared, vanished or
        was replaced (the caller re-arms) or on :meth:`stop`."""
        targets = await asyncio.to_thread(watch_targets, self.paths)
        if not targets:
            await self.refresh()
            await self._stop.wait()
            return
        halt = threading.Event()
        notify = await asyncio.to_thread(
            RustNotify, sorted(t.path for t in targets), False, False, 0, False, False
        )
        try:
            # Read only once the watch is armed: a change made meanwhile is in the file or
            # reported by the watch, never lost between the two.
            await self.refresh()
            self._watch_problem = None
            stop = _Either(self._stop, halt)
            watched = {t.path for t in targets}
            checked = time.monotonic()
            while True:
                result = await asyncio.to_thread(notify.watch, DEBOUNCE_MS, STEP_MS, CHECK_MS, stop)
                if result == "stop":
                    return
                if result == "signal":
                    raise RuntimeError("file watcher interrupted")
                relevant = result != "timeout"
                if not isinstance(result, str):
                    changed = {path for _, path in result}
                    # A watched folder itself deleted or moved: its watch is dead even when a new
                    # folder at the same path got the same inode number (ext4 reuses them).
                    if watched & changed:
                        return
                    relevant = any(is_config_event(path, self.paths) for path in changed)
                    # A neighbour written without pause never lets the watch time out: the
                    # folders' identities are still re-checked every CHECK_MS.
                    if not relevant and time.monotonic() - checked < CHECK_MS / 1000:
                        continue
                checked = time.monotonic()
                if await asyncio.to_thread(watch_targets, self.paths) != targets:
                    return
                if relevant:
                    await self.refresh()
        finally:
            halt.set()  # a watch still running in its thread (on cancel) returns within a step
            with contextlib.suppress(RuntimeError):
                notify.close()

    def stop(self) -> None:
        self._stop.set()
