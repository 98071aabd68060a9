"""``meshfed validate``: check config files before they reach a running hub.

Every kind meshfed knows is checked with the same parser its store uses, so a file that validates
here is a file the hub accepts: the static registry's kinds and Pilot's routing kinds, looked up
in :data:`KIND_PARSERS`, and Mixer's ``config.istio.io/v1alpha2`` kinds, compiled together as a
Mixer does (undeclared attributes, type mismatches, missing handlers). A MeshConfig's registry
entries are checked by constructing each adapter exactly as the hub does at start
(:func:`meshfed.hub.create_adapter`, no I/O).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from meshfed.adapters.static.kinds import PARSERS as STATIC_PARSERS
from meshfed.adapters.static.kinds import ServiceEntrySpec, WorkloadSpec
from meshfed.adapters.static.translate import translate
from meshfed.config import MeshConfig, load_mesh_config
from meshfed.core.resources import ConfigError, ConfigErrors, Document, load_documents
from meshfed.mixer.config.store import is_mixer_document
from meshfed.pilot.config import PARSERS as PILOT_PARSERS
from meshfed.pilot.config.authorization import AuthorizationPolicy
from meshfed.pilot.config.istio import DestinationRule, VirtualService
from meshfed.pilot.config.istio_gateway import IstioGateway
from meshfed.pilot.config.model import DestinationPolicy, Gateway, RouteRule
from meshfed.pilot.config.parse import IngressSelection, routing_parsers
from meshfed.pilot.config.peer_authentication import PeerAuthentication
from meshfed.pilot.config.store import ConfigSnapshot
from meshfed.security.rbac import Action

ROUTING_TYPES = (
    RouteRule,
    DestinationPolicy,
    VirtualService,
    DestinationRule,
    PeerAuthentication,
    Gateway,
    IstioGateway,
)
Parser = Callable[[Document], tuple[Any, list[ConfigError]]]


KIND_PARSERS: dict[str, Parser] = {**STATIC_PARSERS, **PILOT_PARSERS}


def mixer_errors(docs: list[Document]) -> list[ConfigError]:
    """Mixer's documents, parsed and compiled together as a Mixer would (with Istio's default
    attribute manifests and the installed handler kinds): cross-object errors included."""
    from meshfed.mixer.config.compile import compile_config
    from meshfed.mixer.config.parse import parsers
    from meshfed.mixer.config.store import default_attributes_path, parse_documents
    from meshfed.mixer.handlers.api import load_kinds

    kinds = load_kinds()
    defaults, _ = load_documents(default_attributes_path())
    objects, errors = parse_documents([*defaults, *docs], parsers(kinds))
    errors.extend(compile_config(objects, kinds).errors)
    return errors


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files as given, folders as their ``*.yaml`` / ``*.yml`` files (not subfolders), as the
    hub's file stores read a configured path; a missing path is kept, to be reported."""
    from meshfed.core.filestore import config_files

    out: list[Path] = []
    for path in paths:
        files, missing = config_files([path])
        out.extend(files or missing)
    return out


def validate_files(
    paths: Iterable[Path], mesh: MeshConfig | None = None
) -> tuple[int, list[ConfigError], list[str]]:
    """Validate files; return the number of documents checked, every error, and warnings.

    ``mesh``: the mesh config the files are meant for; its ``pilot`` section decides which
    Ingresses the hub serves (and so parses), exactly as Pilot's stores do. Without it, the
    default selection applies (Ingresses of class meshfed or istio, or of no class).

    Warnings are conflicts meshfed resolves deterministically (route rules for one destination
    with equal precedence): valid, but worth an explicit precedence; and, with ``mesh``,
    CUSTOM AuthorizationPolicies in a mesh that runs no Mixer.
    """
    parsers = KIND_PARSERS
    if mesh is not None:
        selection = IngressSelection.from_pilot_config(mesh.pilot)
        parsers = {**STATIC_PARSERS, **routing_parsers(selection)}
    count = 0
    errors: list[ConfigError] = []
    parsed: list[Any] = []
    mixer_docs: list[Document] = []
    for path in expand_paths(paths):
        docs, file_errors = load_documents(path)
        errors.extend(file_errors)
        for doc in docs:
            count += 1
            if doc.kind == "MeshConfig":
                try:
                    errors.extend(registry_errors(load_mesh_config(path), doc))
                except ConfigErrors as exc:
                    errors.extend(exc.errors)
                continue
            if is_mixer_document(doc):
                mixer_docs.append(doc)
                continue
            parser = parsers.get(doc.kind)
            if parser is None:
                known = ", ".join(sorted([*parsers, "MeshConfig"]))
                errors.append(
                    ConfigError(
                        doc.file, doc.ref, "kind", f"unknown kind (expected one of {known})"
                    )
                )
                continue
            obj, doc_errors = parser(doc)
            errors.extend(doc_errors)
            if obj is not None:
                parsed.append(obj)
    errors.extend(duplicate_errors(parsed))
    if mixer_docs:
        errors.extend(mixer_errors(mixer_docs))
    return count, errors, rule_conflicts(parsed) + custom_warnings(parsed, mesh)


def custom_warnings(objects: list[Any], mesh: MeshConfig | None) -> list[str]:
    """CUSTOM AuthorizationPolicies checked against a mesh config that runs no Mixer: valid,
    but every request they match will be refused (their Check cannot be answered)."""
    if mesh is None or (mesh.mixer is not None and mesh.mixer.enabled):
        return []
    return [
        f"{p.file}: {p.ref}: action CUSTOM names provider {p.provider!r}, but the mesh config "
        f"{mesh.source} does not enable Mixer (spec.mixer.enabled): the requests it matches "
        "will be refused"
        for p in objects
        if isinstance(p, AuthorizationPolicy) and p.action is Action.CUSTOM
    ]


def duplicate_errors(objects: list[Any]) -> list[ConfigError]:
    """What the static registry reports across its files (a host declared twice), found by
    the same translation the registry runs."""
    entries = [o for o in objects if isinstance(o, ServiceEntrySpec)]
    workloads = [o for o in objects if isinstance(o, WorkloadSpec)]
    return translate(entries, workloads, "cluster.local", "validate")[2]


def registry_errors(mesh: MeshConfig, doc: Document) -> list[ConfigError]:
    """Each registry entry's parameters, checked by constructing its adapter as the hub does
    (no I/O: nothing is contacted, no file is read)."""
    from meshfed.hub import adapter_problems, create_adapter
    from meshfed.registry.aggregate import AggregateRegistry

    out: list[ConfigError] = []
    for index, reg in enumerate(mesh.registries):
        member = AggregateRegistry().add_member(reg.name, reg.kind)
        try:
            create_adapter(mesh, reg, member)
        except Exception as exc:  # the adapter's own parameter error, or an unknown kind
            where = f"spec.registries[{index}] ({reg.name}, kind {reg.kind})"
            out.extend(ConfigError(doc.file, doc.ref, where, p) for p in adapter_problems(exc))
    return out


def rule_conflicts(objects: list[Any]) -> list[str]:
    """Equal-precedence route rules, where today's Istio kinds override Istio 0.2's, and
    PeerAuthentications that lose their scope to another (the same snapshot Pilot builds)."""
    snapshot = ConfigSnapshot.of(o for o in objects if isinstance(o, ROUTING_TYPES))
    return [str(c) for c in snapshot.conflicts] + list(snapshot.notes)
