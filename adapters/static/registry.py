"""The static registry: VMs and external services from YAML files, applied live.

It reads ServiceEntry and WorkloadEntry documents from files and directories, feeds the result to
its member of the aggregate, and watches the paths: an edit applies without a restart. Errors are
kept per object (see :mod:`meshfed.core.filestore`): a document that fails to parse or validate
keeps its object's last good version in force (and the errors are logged and shown in
``/debug/registryz``), while the other documents and files update normally.
Documents of kinds this registry does not own (routing rules living in the same folder) are left
to their own stores.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from meshfed.adapters.contract import AdapterContext
from meshfed.adapters.static.kinds import PARSERS, ServiceEntrySpec, WorkloadSpec
from meshfed.adapters.static.translate import translate
from meshfed.core import filestore
from meshfed.core.filestore import WatchedFiles
from meshfed.core.resources import ConfigError
from meshfed.registry.aggregate import Member

log = logging.getLogger("meshfed.adapters.static")


@attrs.frozen(slots=True)
class FileState:
    entries: tuple[ServiceEntrySpec, ...] = ()
    workloads: tuple[WorkloadSpec, ...] = ()


def parse_file(path: Path) -> tuple[FileState | None, list[ConfigError]]:
    """One file's entries on their own (None when any document has an error); the registry
    itself applies files per object (:mod:`meshfed.core.filestore`)."""
    parsed = filestore.parse_file(path, PARSERS)
    if parsed.errors:
        return None, list(parsed.errors)
    objects = [obj for _, obj in parsed.objects]
    return FileState(
        tuple(o for o in objects if isinstance(o, ServiceEntrySpec)),
        tuple(o for o in objects if isinstance(o, WorkloadSpec)),
    ), []


class StaticRegistry:
    """A member of the aggregate fed by ServiceEntry / WorkloadEntry files."""

    kind = "static"

    def __init__(self, member: Member, paths: Iterable[Path | str], trust_domain: str) -> None:
        self.member = member
        self.trust_domain = trust_domain
        self.files: WatchedFiles[ServiceEntrySpec | WorkloadSpec] = WatchedFiles(
            paths, PARSERS, self._apply, what="static registry config"
        )

    @property
    def errors(self) -> list[ConfigError]:
        return self.files.errors

    def _apply(self) -> None:
        objects = list(self.files.objects())
        services, endpoints, translate_errors = translate(
            [o for o in objects if isinstance(o, ServiceEntrySpec)],
            [o for o in objects if isinstance(o, WorkloadSpec)],
            self.trust_domain,
            self.member.name,
        )
        self.files.add_errors(translate_errors)
        self.member.replace(services, endpoints)
        self.member.mark_synced()

    def reload(self) -> list[ConfigError]:
        """Re-read every file and apply the result; return the errors now in force."""
        self.files.reload()
        return self.errors

    async def run(self) -> None:
        """Load, report synced, then apply every change to the watched paths until stopped."""
        await self.files.watch()

    async def stop(self) -> None:
        self.files.stop()

    @property
    def synced(self) -> bool:
        return self.member.synced

    def describe(self) -> dict[str, Any]:
        return {
            "paths": [str(p) for p in self.files.paths],
            "files": [str(p) for p in sorted(self.files.content)],
            "errors": [str(e) for e in self.errors],
        }


PARAMS = frozenset({"paths"})


def create(context: AdapterContext) -> StaticRegistry:
    """Entry point for the ``static`` registry kind (params: ``paths``, a list of files and
    folders); raises ValueError naming a misspelt or malformed parameter, as the other
    kinds do, instead of running as a silently empty registry."""
    params = context.params
    unknown = sorted(str(k) for k in set(params) - PARAMS)
    if unknown:
        raise ValueError(
            f"static registry: unknown parameter(s) {', '.join(unknown)} "
            f"(expected {', '.join(sorted(PARAMS))})"
        )
    paths = params.get("paths", [])
    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        raise ValueError("static registry: paths: expected a list of files and folders")
    return StaticRegistry(context.member, paths, context.trust_domain)
