"""``security.istio.io`` ``PeerAuthentication``: which mutual TLS a workload's sidecar accepts.

A PeerAuthentication in the root namespace (:data:`ROOT_NAMESPACE`) without a selector sets the
mesh-wide mode; one without a selector elsewhere sets its namespace's; one with a selector sets
the mode of the matching workloads of its namespace, and per port (``portLevelMtls``, keyed by
the workload's own port). ``STRICT``, ``PERMISSIVE``, ``DISABLE`` (plain text only) and
``UNSET`` (inherit) are understood. :func:`policy` folds them into the mesh config's
:class:`~security.mtls.Policy`, so the mesh-config form keeps working beneath them.

Where two objects claim the same scope, the older one wins in Istio; files have no creation
time, so the first by namespace/name wins here and the others are reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from meshfed.core.resources import ConfigError, Document, FieldReader
from meshfed.registry.model import Labels
from meshfed.security import mtls

API_VERSIONS = frozenset({"security.istio.io/v1beta1", "security.istio.io/v1"})
ROOT_NAMESPACE = "istio-system"
MODES = {
    "STRICT": mtls.Mode.STRICT,
    "PERMISSIVE": mtls.Mode.PERMISSIVE,
    "DISABLE": mtls.Mode.OFF,
}
MAX_PORTS = 1024


@attrs.frozen(slots=True)
class PeerAuthentication:
    name: str
    namespace: str
    file: str
    selector: Labels | None  # None: the namespace (or, in the root namespace, the mesh)
    mode: mtls.Mode | None  # None: UNSET, inherited
    ports: tuple[tuple[int, mtls.Mode], ...] = ()

    @property
    def ref(self) -> str:
        return f"PeerAuthentication {self.namespace}/{self.name}"


def _mode(r: FieldReader) -> mtls.Mode | None:
    r.unknown_fields({"mode"})
    value = r.str("mode", default="UNSET")
    if value == "UNSET":
        return None
    if value not in MODES:
        r.error("mode", f"expected STRICT, PERMISSIVE, DISABLE or UNSET, got {value!r}")
        return None
    return MODES[value]


def parse_peer_authentication(
    doc: Document,
) -> tuple[PeerAuthentication | None, list[ConfigError]]:
    r = FieldReader(doc.file, doc.ref, doc.spec, "spec")
    if doc.api_version not in API_VERSIONS:
        r.errors.append(
            ConfigError(
                doc.file,
                doc.ref,
                "apiVersion",
                f"expected one of {', '.join(sorted(API_VERSIONS))}, got {doc.api_version!r}",
            )
        )
    r.unknown_fields({"selector", "mtls", "portLevelMtls"})
    selector = None
    sel = r.reader("selector")
    if sel is not None:
        sel.unknown_fields({"matchLabels"})
        selector = Labels(sel.labels("matchLabels"))
    mode = None
    section = r.reader("mtls")
    if section is not None:
        mode = _mode(section)
    ports: list[tuple[int, mtls.Mode]] = []
    levels = r.reader("portLevelMtls")
    if levels is not None:
        if selector is None:
            r.error("selector", "is required with portLevelMtls (as in Istio)")
        if len(levels.data) > MAX_PORTS:
            levels.error("", f"expected at most {MAX_PORTS} ports")
        for key in sorted(levels.data, key=str)[:MAX_PORTS]:
            try:
                port = int(str(key))
            except ValueError:
                port = 0
            if not 1 <= port <= 65535 or str(port) != str(key) or isinstance(key, bool):
                levels.error(str(key), "expected a port number 1-65535")
                continue
            value = levels.data[key]
            if not isinstance(value, Mapping):
                levels.error(str(key), "expected a mapping with mode")
                continue
            entry = FieldReader(levels.file, levels.obj, value, levels.field_path(str(key)))
            entry.errors = levels.errors
            port_mode = _mode(entry)
            if port_mode is None:
                entry.error("mode", "expected STRICT, PERMISSIVE or DISABLE for a port")
                continue
            ports.append((port, port_mode))
    if r.errors:
        return None, r.errors
    return PeerAuthentication(doc.name, doc.namespace, doc.file, selector, mode, tuple(ports)), []


@attrs.frozen(slots=True)
class Folded:
    policy: mtls.Policy
    notes: tuple[str, ...]


def policy(base: mtls.Policy, objects: Sequence[PeerAuthentication]) -> Folded:
    """``base`` (the mesh config's policy) under ``objects``, with the precedence the module
    states; each object that loses a scope to another is reported."""
    mesh: mtls.Mode | None = None
    namespaces: dict[str, mtls.Mode] = {}
    workloads: list[mtls.WorkloadMode] = []
    scopes: dict[tuple[str, ...], str] = {}
    notes: list[str] = []
    for pa in sorted(objects, key=lambda o: (o.namespace, o.name)):
        if pa.selector is None:
            scope: tuple[str, ...] = (
                ("mesh",)
                if pa.namespace == ROOT_NAMESPACE
                else (
                    "namespace",
                    pa.namespace,
                )
            )
        else:
            scope = ("workload", pa.namespace, *sorted(f"{k}={v}" for k, v in pa.selector.items()))
        if scope in scopes:
            notes.append(f"{pa.ref} is not applied: {scopes[scope]} sets the same scope")
            continue
        scopes[scope] = pa.ref
        if pa.selector is not None:
            workloads.append(
                mtls.WorkloadMode(pa.namespace, dict(pa.selector), pa.mode, dict(pa.ports))
            )
        elif pa.mode is None:
            continue
        elif scope == ("mesh",):
            mesh = pa.mode
        else:
            namespaces[pa.namespace] = pa.mode
    # More specific selectors first: a workload matched by two takes the narrower one.
    workloads.sort(key=lambda w: (-len(w.selector), w.namespace, sorted(w.selector.items())))
    return Folded(base.with_peer_authentication(mesh, namespaces, workloads), tuple(notes))
