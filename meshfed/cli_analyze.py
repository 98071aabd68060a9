"""``meshfed analyze``: what is wrong across resources, in files, on stdin or in a running hub.

``meshfed analyze FILE|FOLDER|- ...`` parses the files with the parsers the hub uses (a document
that does not parse is finding MF0001, with the error ``meshfed validate`` gives), builds the
catalog from their ServiceEntries and WorkloadEntries as the static registry would, and runs
:func:`meshfed.pilot.analysis.analyze`. ``--hub URL`` (or ``$MESHFED_HUB``, ``-c``) with no
files asks the running hub for the same checks of its live config and federated catalog
(``/debug/analyze``); files with ``--hub`` are checked against the hub's catalog (read from
``/debug/registryz``) plus their own entries, as ``istioctl analyze`` checks files against a
live cluster: will this rule work on the mesh as it runs? Output: a table (CODE, SEVERITY,
OBJECT, MESSAGE) or ``-o json|yaml``; exit 1 when any finding is an error, else 0.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
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


def catalog_from_registryz(body: Mapping[str, Any]) -> Any:
    """A hub's federated catalog from its ``/debug/registryz`` document."""
    from meshfed.pilot.analysis import Catalog
    from meshfed.registry.model import Endpoint, Port, Protocol, Service

    services: dict[str, Service] = {}
    endpoints: dict[str, list[Endpoint]] = {}
    sources: dict[str, list[str]] = {}
    for raw in body.get("services", []):
        host = raw["hostname"]
        ports = [Port(p["number"], p["name"], Protocol(p["protocol"])) for p in raw["ports"]]
        services[host] = Service(host, raw.get("namespace") or "default", ports)
        endpoints[host] = [
            Endpoint(e["address"], e.get("ports", {}), e.get("labels", {}),
                     registry=e.get("registry", ""))
            for e in raw.get("endpoints", [])
        ]  # fmt: skip
        sources[host] = list(raw.get("registries", []))
    disagreements: dict[str, list[str]] = {}
    for conflict in body.get("conflicts", []):
        disagreements.setdefault(conflict["hostname"], []).append(conflict["message"])
    return Catalog(services, endpoints, sources, disagreements)


def _merged(base: Any, files: Any) -> Any:
    """The hub's catalog with the files' services added (a file's entry wins for its host)."""
    from meshfed.pilot.analysis import Catalog

    endpoints = {h: list(e) for h, e in base.endpoints.items()}
    sources = {h: list(r) for h, r in base.sources.items()}
    for host, eps in files.endpoints.items():
        endpoints.setdefault(host, []).extend(eps)
    for host in files.services:
        if "files" not in sources.setdefault(host, []):
            sources[host].append("files")
    return Catalog({**base.services, **files.services}, endpoints, sources, base.disagreements)


def analyze_documents(
    docs: list[Document], base: Any = None
) -> tuple[list[Any], list[ConfigError]]:
    """Parse documents and analyze them together: (findings, parse errors). ``base``: a
    catalog (a live hub's) the documents' own services are added to."""
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
    catalog = analysis.Catalog.of(services, endpoints)
    if base is not None:
        catalog = _merged(base, catalog)
    return analysis.analyze(snapshot, catalog), errors


def cmd_analyze(args: argparse.Namespace) -> int:
    from meshfed.cli import fetch_json, format_table, hub_url, print_document
    from meshfed.pilot.analysis import Finding

    if args.sources:
        base = None
        if args.hub:  # the files, as if applied to the running hub: against its catalog
            base = catalog_from_registryz(fetch_json(f"{hub_url(args)}/debug/registryz"))
        docs, errors = _documents(args.sources)
        findings, parse_errors = analyze_documents(docs, base)
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
