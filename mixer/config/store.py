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

import attrs

from meshfed.core.filestore import WatchedFiles
from meshfed.core.resources import ConfigError, Document, load_documents
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


@attrs.frozen
class MixerFile:
    """One file's Mixer objects, the errors of the others, and the keys of those that failed
    (their last good version stays in force)."""

    objects: tuple[MixerObject, ...]
    errors: tuple[ConfigError, ...]
    failed: tuple[ObjectKey, ...]


def file_parser(
    kinds: Mapping[str, HandlerKind],
) -> Callable[[Path], tuple[MixerFile | None, list[ConfigError]]]:
    table = parsers(kinds)

    def parse(path: Path) -> tuple[MixerFile | None, list[ConfigError]]:
        docs, errors = load_documents(path)
        if errors and not docs:
            return None, errors  # unreadable: the file keeps its last good content
        objects, doc_errors = parse_documents(docs, table)
        parsed = {(o.ref.kind, o.ref.namespace, o.ref.name) for o in objects}
        failed = tuple(
            (d.kind, d.namespace, d.name)
            for d in docs
            if is_mixer_document(d) and (d.kind, d.namespace, d.name) not in parsed
        )
        return MixerFile(tuple(objects), tuple(errors + doc_errors), failed), []

    return parse


def watched_config(
    paths: Iterable[Path | str],
    kinds: Mapping[str, HandlerKind],
    on_change: Callable[[], None],
    include_defaults: bool = True,
) -> WatchedFiles[MixerFile]:
    all_paths = [default_attributes_path(), *paths] if include_defaults else list(paths)
    return WatchedFiles(all_paths, file_parser(kinds), on_change, what="mixer config")


def _ordered(files: WatchedFiles[MixerFile]) -> list[MixerFile]:
    paths = sorted(files.content, key=lambda p: (p != default_attributes_path(), str(p)))
    return [files.content[p] for p in paths]


def objects_of(
    files: WatchedFiles[MixerFile], last_good: Mapping[ObjectKey, MixerObject] | None = None
) -> list[MixerObject]:
    """Every file's objects (the defaults first, then in path order), plus the last good
    version of each object that failed to parse this time."""
    out: list[MixerObject] = []
    failed: list[ObjectKey] = []
    for content in _ordered(files):
        out.extend(content.objects)
        failed.extend(content.failed)
    present = {(o.ref.kind, o.ref.namespace, o.ref.name) for o in out}
    for key in failed:
        if key not in present and last_good and key in last_good:
            out.append(last_good[key])
            present.add(key)
    return out


def errors_of(files: WatchedFiles[MixerFile]) -> list[ConfigError]:
    """The files' own errors (unreadable files) and every object's."""
    return [*files.errors, *(e for content in _ordered(files) for e in content.errors)]
