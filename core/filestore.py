"""Config files watched live, with the last good content of each file kept on errors.

Both the static registry (ServiceEntry / WorkloadEntry) and Pilot's config store (routing kinds)
read YAML files a user edits while the mesh runs. This is their one mechanism: files and folders
are watched (no polling), each file is parsed on its own, and a file that fails keeps its last good
parse in force while its errors are logged and reported; the other files update normally. A
deleted file's content goes away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Generic, TypeVar

import watchfiles

from meshfed.core.resources import ConfigError

log = logging.getLogger("meshfed.core.filestore")

T = TypeVar("T")
YAML_SUFFIXES = (".yaml", ".yml")


def config_files(paths: Iterable[Path]) -> list[Path]:
    """The YAML files named by ``paths`` (files as given, directories' *.yaml, sorted)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in YAML_SUFFIXES))
        elif path.exists():
            files.append(path)
    return files


class WatchedFiles(Generic[T]):
    """Parsed content per file; ``parse`` returns (content or None, errors) for one file."""

    def __init__(
        self,
        paths: Iterable[Path | str],
        parse: Callable[[Path], tuple[T | None, list[ConfigError]]],
        on_change: Callable[[], None],
        what: str = "config",
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self._parse = parse
        self._on_change = on_change
        self._what = what
        self.content: dict[Path, T] = {}
        self._errors: dict[Path, list[ConfigError]] = {}
        self._stop = asyncio.Event()

    @property
    def errors(self) -> list[ConfigError]:
        return [e for path in sorted(self._errors) for e in self._errors[path]]

    def read(self) -> list[tuple[Path, T | None, list[ConfigError]]]:
        """Parse every file; touches no state, so it may run in a worker thread."""
        return [(path, *self._parse(path)) for path in config_files(self.paths)]

    def reload(self) -> None:
        """Re-read every file, then call ``on_change`` once."""
        self.commit(self.read())

    def commit(self, results: list[tuple[Path, T | None, list[ConfigError]]]) -> None:
        """Apply parse results: good files replace their content, bad ones keep the last good."""
        present = [path for path, _, _ in results]
        for missing in set(self.content) - set(present):
            del self.content[missing]
        self._errors = {}
        for path, parsed, errors in results:
            if parsed is None or errors:
                self._errors[path] = errors
                kept = "keeping its last good state" if path in self.content else "nothing applied"
                for error in errors:
                    log.error("%s error (%s): %s", self._what, kept, error)
            else:
                self.content[path] = parsed
        self._on_change()

    def add_errors(self, errors: Iterable[ConfigError]) -> None:
        """Record errors found after parsing (across files), reported with the file's own."""
        for error in errors:
            log.error("%s error: %s", self._what, error)
            self._errors.setdefault(Path(error.file), []).append(error)

    async def watch(self) -> None:
        """Load, then reload on every change to the watched paths until :meth:`stop`."""
        self.reload()
        roots = sorted({str(p if p.is_dir() else p.parent) for p in self.paths})
        roots = [r for r in roots if Path(r).exists()]
        if not roots:
            await self._stop.wait()
            return
        async for _ in watchfiles.awatch(
            *roots, stop_event=self._stop, debounce=200, step=50, recursive=False
        ):
            # Parsing a large file takes a while; the loop keeps serving meanwhile, and the
            # result is applied on the loop, where the registry and Pilot live.
            self.commit(await asyncio.to_thread(self.read))

    def stop(self) -> None:
        self._stop.set()
