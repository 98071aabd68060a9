"""``meshfed analyze``: what is wrong across resources, in files, on stdin or in a running hub.

``meshfed analyze FILE|FOLDER|- ...`` parses the files with the parsers the hub uses (a document
that does not parse is finding MF0001, with the error ``meshfed validate`` gives), builds the
catalog from their ServiceEntries and WorkloadEntries as the static registry would, and runs
:func:`meshfed.pilot.analysis.analyze`. ``--hub URL`` (or ``$MESHFED_HUB``, ``-c``) with no
files asks the running hub for the same checks of its live config and federated catalog
(``/debug/analyze``). Output: a table (CODE, SEVERITY, OBJECT, MESSAGE) or ``-o json|yaml``;
exit 1 when any finding is an error, else 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from meshfed.core.resources import ConfigError, Document


def _documents(sources: list[str]) -> tuple[list[Document], list[ConfigError]]:
    from meshfed.core.filestore import config_files
    from meshfed.core.resources import load_bytes, load_documents

    docs: list[Document] = []
    errors: list[ConfigError] = []
    paths: list[Path] = []
    for source in sources:
        if source == "-":
            found, errs = load_bytes("<stdin>", sys.stdin.buffer.read())
            docs += found
            errors += errs
            continue
        path = Path(source)
        if not path.exists():
            errors.append(ConfigError(source, "file", "", "no such file or folder"))
        elif path.is_dir():
            files, _ = config_files([path])
            paths += files
        else:
            paths.append(path)
    for path in paths:
        found, errs = load_documents(path)
        docs += found
        errors += errs
    return docs, errors


def analyze_documents(docs: list[Document]) -> tuple[list[Any], list[ConfigError]]:
    """Parse documents and analyze them together: (findings, parse errors)."""
    from meshfed.adapters.static.kinds import ServiceEntrySpec, WorkloadSpec
    from meshfed.adapters.static.translate import translate
    from meshfed.mixer.config.store import is_mixer_document
    from meshfed.pilot import analysis
    from meshfed.pilot.config.store import ConfigSnapshot
    from meshfed.validate import KIND_PARSERS, mixer_errors

    errors: list[ConfigError] = []
    objects: list[Any] = []
    mixer_docs = []
    for doc in docs:
        if is_mixer_document(doc):
            mixer_docs.append(doc)
            continue
        parser = KIND_PARSERS.get(doc.kind)
        if parser is None:
            if doc.kind != "MeshConfig":
                errors.append(ConfigError(doc.file, doc.ref, "kind", "unknown kind"))
            continue
        obj, doc_errors = parser(doc)
        errors += doc_errors
        if obj is not None:
            objects.append(obj)
    if mixer_docs:
        errors += mixer_errors(mixer_docs)
    entries = [o for o in objects if isinstance(o, ServiceEntrySpec)]
    workloads = [o for o in objects if isinstance(o, WorkloadSpec)]
    services, endpoints, translate_errors = translate(entries, workloads, "cluster.local", "files")
    errors += translate_errors
    routing = [o for o in objects if not isinstance(o, ServiceEntrySpec | WorkloadSpec)]
    snapshot = ConfigSnapshot.of(routing)
    return analysis.analyze(snapshot, analysis.Catalog.of(services, endpoints)), errors


def cmd_analyze(args: argparse.Namespace) -> int:
    from meshfed.cli import fetch_json, format_table, hub_url, print_document
    from meshfed.pilot.analysis import Finding

    if args.sources and args.hub:
        print(
            "error: give files or --hub, not both (files are analyzed on their own)",
            file=sys.stderr,
        )
        return 2
    if args.sources:
        docs, errors = _documents(args.sources)
        findings, parse_errors = analyze_documents(docs)
        problems = [
            Finding("MF0001", "error", e.obj, f"{e.field}: {e.message}" if e.field else e.message,
                    e.file)
            for e in [*errors, *parse_errors]
        ] + findings  # fmt: skip
        rows = [f.as_dict() for f in problems]
    else:
        rows = fetch_json(f"{hub_url(args)}/debug/analyze")["findings"]
    if args.output in ("json", "yaml"):
        print_document({"findings": rows}, args.output)
    elif rows:
        table = [
            [r["code"], r["severity"].upper(), r["object"], r["message"]
             + (f" ({r['file']})" if r.get("file") else "")]
            for r in rows
        ]  # fmt: skip
        print(format_table(table, ["CODE", "SEVERITY", "OBJECT", "MESSAGE"]))
    else:
        print("no problems found")
    return 1 if any(r["severity"] == "error" for r in rows) else 0


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "analyze",
        help="cross-resource checks of config files, stdin (-) or the running hub; "
        "exit 1 on errors",
    )
    parser.add_argument(
        "sources", nargs="*", help="files or folders, - for stdin (none: the hub's live config)"
    )
    parser.add_argument("--output", "-o", choices=["table", "json", "yaml"], default="table")
    parser.add_argument("--hub", help="hub monitoring URL (default: $MESHFED_HUB or config)")
    parser.add_argument("--config", "-c", help="MeshConfig file to find the hub's address")
    parser.set_defaults(func=cmd_analyze)
