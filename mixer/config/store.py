"""Mixer config from YAML files, through the project's one watched-file mechanism.

Each file is parsed on its own (:class:`~meshfed.core.filestore.WatchedFiles`): a file that is not
valid YAML keeps its last good content while the error is reported. Within a file that reads,
config is applied per object: a bad object is reported and left out, its neighbours apply, and
the object's last good version (if it had one) keeps serving (:attr:`MixerFile.failed`).
Documents of other components (a ServiceEntry, a Pilot RouteRule) may share the files and are
skipped: Mixer takes the ``config.istio.io/v1alpha2`` documents whose kind is lowercase, as all of
Istio 0.2's Mixer kinds are, and reports one of those it does not know (a handler kind not
installed).
Istio's default attribute manifests (``meshfed/mixer/defaults/attributes.yaml``) come first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from meshfed.core.filestore import WatchedFiles
from meshfed.core.resources import ConfigError, Document
from meshfed.mixer.config.parse import API_VERSION, MixerObject, Parser, parsers
from meshfed.mixer.handlers.api import HandlerKind


def default_attributes_path() -> Path:
    return Path(str(resources.files("meshfed.mixer").joinpath("defaults", "attributes.yaml")))


def is_mixer_document(doc: Document) -> bool:
    return doc.api_version == API_VERSION and doc.kind[:1].islower()


def parse_documents(
    docs: Iterable[Document], table: Mapping[str, Parser]
) -> tuple[list[MixerObject], list[ConfigError]]:
    objects: list[MixerObject] = []
    errors: list[ConfigError] = []
    for doc in docs:
        if not is_mixer_document(doc):
            continue
        parser = table.get(doc.kind)
        if parser is None:
            errors.append(
                ConfigError(
                    doc.file,
                    doc.ref,
                    "kind",
                    f"unknown Mixer kind (expected one of {', '.join(sorted(table))}; "
                    "a handler kind is added by installing its package)",
                )
            )
            continue
        obj, doc_errors = parser(doc)
        errors.extend(doc_errors)
        if obj is not None:
            objects.append(obj)
    return objects, errors


ObjectKey = tuple[str, str, str]  # (kind, namespace, name), as compile.key_of


class _MixerParsers(dict):  # type: ignore[type-arg]
    """Mixer's parsers by kind; a lowercase kind nobody parses is reported, not skipped (in the
    shared files other components' kinds are CamelCase)."""

    def get(self, kind: str, default: Any = None) -> Any:
        found = super().get(kind)
        if found is not None or not kind[:1].islower():
            return found if found is not None else default
        known = ", ".join(sorted(self))

        def unknown(doc: Document) -> tuple[None, list[ConfigError]]:
            if not is_mixer_document(doc):
                return None, []
            return None, [
                ConfigError(
                    doc.file,
                    doc.ref,
                    "kind",
                    f"unknown Mixer kind (expected one of {known}; "
                    "a handler kind is added by installing its package)",
                )
            ]

        return unknown


def watched_config(
    paths: Iterable[Path | str],
    kinds: Mapping[str, HandlerKind],
    on_change: Callable[[], None],
    include_defaults: bool = True,
) -> WatchedFiles[MixerObject]:
    """The files' Mixer objects, applied per object with the last good version of each kept
    (the shared watched-file mechanism); the default manifests come first."""
    all_paths = [default_attributes_path(), *paths] if include_defaults else list(paths)
    return WatchedFiles(all_paths, _MixerParsers(parsers(kinds)), on_change, what="mixer config")


def objects_of(files: WatchedFiles[MixerObject], last_good: Any = None) -> list[MixerObject]:
    """Every object in force (the watched-file mechanism keeps last good versions itself)."""
    return list(files.objects())


def errors_of(files: WatchedFiles[MixerObject]) -> list[ConfigError]:
    return list(files.errors)
