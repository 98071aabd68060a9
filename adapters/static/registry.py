"""The static registry: VMs and external services from YAML files, applied live.

It reads ServiceEntry and WorkloadEntry documents from files and directories, feeds the result to
its member of the aggregate, and watches the paths: an edit applies without a restart. Errors are
kept per file: a file that fails to parse or validate keeps its last good documents in force (and
the errors are logged and shown in ``/debug/registryz``), while the other files update normally.
Documents of kinds this registry does not own (routing rules living in the same folder) are left
to their own stores.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import watchfiles

from adapters.static.kinds import PARSERS, ServiceEntrySpec, WorkloadSpec
from adapters.static.translate import translate
from meshfed.resources import ConfigError, load_documents
from registry.aggregate import Member

log = logging.getLogger("meshfed.adapters.static")

YAML_SUFFIXES = (".yaml", ".yml")


def config_files(paths: Iterable[Path]) -> list[Path]:
    """The YAML files named by ``paths`` (files as given, directories' *.yaml, sorted)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in YAML_SUFFIXES))
        else:
            files.append(path)
    return files


@attrs.frozen(slots=True)
class FileState:
    entries: tuple[ServiceEntrySpec, ...] = ()
    workloads: tuple[WorkloadSpec, ...] = ()
    errors: tuple[ConfigError, ...] = ()


def parse_file(path: Path) -> tuple[FileState | None, list[ConfigError]]:
    """Parse one file; None when it has errors (its last good state should stay)."""
    docs, errors = load_documents(path)
    entries, workloads = [], []
    for doc in docs:
        parser = PARSERS.get(doc.kind)
        if parser is None:
            continue
        parsed, doc_errors = parser(doc)
        errors.extend(doc_errors)
        if isinstance(parsed, ServiceEntrySpec):
            entries.append(parsed)
        elif isinstance(parsed, WorkloadSpec):
            workloads.append(parsed)
    if errors:
        return None, errors
    return FileState(tuple(entries), tuple(workloads)), []


class StaticRegistry:
    """A member of the aggregate fed by ServiceEntry / WorkloadEntry files."""

    kind = "static"

    def __init__(self, member: Member, paths: Iterable[Path | str], trust_domain: str) -> None:
        self.member = member
        self.paths = [Path(p) for p in paths]
        self.trust_domain = trust_domain
        self._files: dict[Path, FileState] = {}
        self._errors: dict[Path, list[ConfigError]] = {}
        self._stop = asyncio.Event()

    @property
    def errors(self) -> list[ConfigError]:
        return [e for path in sorted(self._errors) for e in self._errors[path]]

    def reload(self) -> list[ConfigError]:
        """Re-read every file and apply the result; return the errors now in force."""
        present = config_files(self.paths)
        for missing in set(self._files) - set(present):
            del self._files[missing]
        self._errors = {}
        for path in present:
            state, errors = parse_file(path)
            if state is None:
                self._errors[path] = errors
                kept = "keeping its last good state" if path in self._files else "nothing applied"
                for error in errors:
                    log.error("config error (%s): %s", kept, error)
            else:
                self._files[path] = state
        entries = [e for s in self._files.values() for e in s.entries]
        workloads = [w for s in self._files.values() for w in s.workloads]
        services, endpoints, translate_errors = translate(
            entries, workloads, self.trust_domain, self.member.name
        )
        for error in translate_errors:
            log.error("config error: %s", error)
            self._errors.setdefault(Path(error.file), []).append(error)
        self.member.replace(services, endpoints)
        return self.errors

    async def run(self) -> None:
        """Load, report synced, then apply every change to the watched paths until stopped."""
        self.reload()
        self.member.mark_synced()
        watch_roots = sorted({str(p if p.is_dir() else p.parent) for p in self.paths})
        try:
            async for _ in watchfiles.awatch(
                *watch_roots, stop_event=self._stop, debounce=200, step=50, recursive=False
            ):
                self.reload()
        except FileNotFoundError as exc:
            log.error("static registry cannot watch %s: %s", watch_roots, exc)

    async def stop(self) -> None:
        self._stop.set()

    def describe(self) -> dict[str, Any]:
        return {
            "paths": [str(p) for p in self.paths],
            "files": [str(p) for p in sorted(self._files)],
            "errors": [str(e) for e in self.errors],
        }


def create(member: Member, params: Mapping[str, Any], trust_domain: str) -> StaticRegistry:
    """Entry point for the ``static`` registry kind (params: ``paths``)."""
    return StaticRegistry(member, params.get("paths", []), trust_domain)
