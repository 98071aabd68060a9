"""Mixer config from YAML files, through the project's one watched-file mechanism.

Each file is parsed on its own (:class:`~meshfed.core.filestore.WatchedFiles`): a file with a
syntax or field error keeps its last good content while the error is reported. Documents of
other components (a ServiceEntry, a Pilot RouteRule) may share the files and are skipped: Mixer
takes the ``config.istio.io/v1alpha2`` documents whose kind is lowercase, as all of Istio 0.2's
Mixer kinds are, and reports one of those it does not know (a handler kind not installed).
Istio's default attribute manifests (``meshfed/mixer/defaults/attributes.yaml``) come first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from pathlib import Path

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


def file_parser(
    kinds: Mapping[str, HandlerKind],
) -> Callable[[Path], tuple[list[MixerObject] | None, list[ConfigError]]]:
    table = parsers(kinds)

    def parse(path: Path) -> tuple[list[MixerObject] | None, list[ConfigError]]:
        docs, errors = load_documents(path)
        objects, doc_errors = parse_documents(docs, table)
        errors.extend(doc_errors)
        return (None if errors else objects), errors

    return parse


def watched_config(
    paths: Iterable[Path | str],
    kinds: Mapping[str, HandlerKind],
    on_change: Callable[[], None],
    include_defaults: bool = True,
) -> WatchedFiles[list[MixerObject]]:
    all_paths = [default_attributes_path(), *paths] if include_defaults else list(paths)
    return WatchedFiles(all_paths, file_parser(kinds), on_change, what="mixer config")


def objects_of(files: WatchedFiles[list[MixerObject]]) -> list[MixerObject]:
    """Every file's last good objects, the defaults first, then in path order."""
    out: list[MixerObject] = []
    for path in sorted(files.content, key=lambda p: (p != default_attributes_path(), str(p))):
        out.extend(files.content[path])
    return out
