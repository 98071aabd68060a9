"""The contract between Mixer's runtime and a handler kind: what a plugin must provide.

A handler kind (``denier``, ``memquota``, ``prometheus``, or one a user installs with ``pip``) is
an object satisfying :class:`HandlerKind`, published in the ``meshfed.mixer.handlers``
entry-point group under the kind name users write in config::

    [project.entry-points."meshfed.mixer.handlers"]
    mykind = "mypackage.handler:KIND"

Life of a handler:

1. Config time: :meth:`HandlerKind.parse_params` reads the handler resource's ``spec`` (Istio
   0.2 handler CRDs have their params as ``spec``) through a :class:`FieldReader`, reporting every
   bad field with ``reader.error`` so the user sees file, object and field. It returns the parsed
   params, or ``None`` when the reader recorded errors. No I/O.
2. When a config snapshot is activated: :meth:`HandlerKind.build` makes a :class:`Handler` from
   params. It may open connections (Redis, a list provider URL) and must not block the event loop.
   A handler whose params did not change between snapshots is kept, not rebuilt.
3. Per request the runtime calls ``check`` / ``report`` / ``quota`` with instances of the templates
   the kind declared. Each call is bounded by the runtime's timeout; an exception or a timeout
   is counted and logged by the runtime, and the other handlers still run.
4. When a snapshot that no longer names the handler has drained: :meth:`Handler.close`.

A method for a variety the kind did not declare is never called.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Protocol, runtime_checkable

import attrs
import prometheus_client

from meshfed.core.resources import FieldReader
from meshfed.mixer.templates import TEMPLATES, Instance, Quota

OK = 0  # google.rpc.Code values used by handlers
INVALID_ARGUMENT = 3
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
UNAVAILABLE = 14
UNAUTHENTICATED = 16

# How long a result may be reused by a caching client when a handler states nothing.
DEFAULT_VALID_DURATION = dt.timedelta(seconds=5)
DEFAULT_VALID_USE_COUNT = 10_000


@attrs.frozen(slots=True)
class CheckResult:
    """A handler's verdict on one check instance (``google.rpc.Status`` + validity)."""

    code: int = OK
    message: str = ""
    valid_duration: dt.timedelta = DEFAULT_VALID_DURATION
    valid_use_count: int = DEFAULT_VALID_USE_COUNT

    @property
    def ok(self) -> bool:
        return self.code == OK


@attrs.frozen(slots=True)
class QuotaRequest:
    """What ``Check`` asked of one quota (Istio 0.2's ``QuotaParams`` plus the call's id)."""

    amount: int
    best_effort: bool = False
    deduplication_id: str = ""


@attrs.frozen(slots=True)
class QuotaResult:
    """What was granted; ``granted`` may be less than asked only for best-effort requests."""

    granted: int
    valid_duration: dt.timedelta = dt.timedelta(0)


@attrs.frozen
class HandlerEnv:
    """What the runtime gives a handler when building it."""

    name: str  # the handler's reference, "name.kind.namespace"
    logger: logging.Logger
    # Where handlers publish metrics (the ``prometheus`` kind): served on the monitoring port.
    metrics: prometheus_client.CollectorRegistry


@runtime_checkable
class Handler(Protocol):
    """A configured handler. Implement the methods of the varieties the kind declares."""

    async def check(self, instance: Instance) -> CheckResult: ...

    async def report(self, instances: Sequence[Instance]) -> None: ...

    async def quota(self, instance: Quota, request: QuotaRequest) -> QuotaResult: ...

    async def close(self) -> None: ...


@runtime_checkable
class HandlerKind(Protocol):
    """A kind of handler, as published in the ``meshfed.mixer.handlers`` entry-point group."""

    @property
    def name(self) -> str:
        """The kind as written in config (``denier``)."""
        ...

    @property
    def templates(self) -> frozenset[str]:
        """The template kinds (``checknothing``, ``metric``, ...) this kind accepts."""
        ...

    def parse_params(self, reader: FieldReader) -> Any | None: ...

    async def build(self, params: Any, env: HandlerEnv) -> Handler: ...


ENTRY_POINT_GROUP = "meshfed.mixer.handlers"
BUILT_IN_DISTRIBUTION = "meshfed"


def load_kinds(logger: logging.Logger | None = None) -> Mapping[str, HandlerKind]:
    """Every installed handler kind by name (built-in and third-party alike).

    A plugin is someone else's code: one whose entry point fails to import, raises while
    loading, does not satisfy :class:`HandlerKind`, or publishes under a name other than its
    own ``name`` is logged and skipped, so a broken ``pip install`` never takes Mixer down.
    When two distributions publish the same name, meshfed's own kind wins (a plugin cannot
    shadow a built-in); between two plugins the first found (``sys.path`` order) does. Either
    way the clash is logged.
    """
    log = logger or logging.getLogger(__name__)
    kinds: dict[str, HandlerKind] = {}
    origins: dict[str, str] = {}
    # meshfed's own first (the sort is stable), so a clashing plugin is refused before its
    # module is even imported
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: not _built_in(e)):
        dist = getattr(ep, "dist", None)
        origin = f"{ep.value} ({dist.name if dist else 'unknown distribution'})"
        if ep.name in kinds:
            log.error(
                "mixer handler kind %r from %s skipped: the name is taken by %s",
                ep.name,
                origin,
                origins[ep.name],
            )
            continue
        try:
            kind = ep.load()
        except (Exception, SystemExit) as exc:  # any failure of foreign code at import time
            log.error("mixer handler kind %r from %s failed to load: %r", ep.name, origin, exc)
            continue
        problem = _kind_problem(ep.name, kind)
        if problem:
            log.error("mixer handler kind %r from %s skipped: %s", ep.name, origin, problem)
            continue
        kinds[ep.name] = kind
        origins[ep.name] = origin
    return kinds


def _built_in(ep: EntryPoint) -> bool:
    dist = getattr(ep, "dist", None)
    return dist is not None and dist.name == BUILT_IN_DISTRIBUTION


def _kind_problem(published: str, kind: object) -> str:
    """Why ``kind`` cannot be used as the handler kind ``published`` ("" when it can)."""
    try:
        if not isinstance(kind, HandlerKind):
            return "not a HandlerKind (needs name, templates, parse_params and build)"
        name, templates = kind.name, kind.templates
    except Exception as exc:  # a property of foreign code raising
        return f"reading its name or templates raised {exc!r}"
    if name != published:
        return f"its name is {name!r}, but it is published as {published!r}"
    if not isinstance(templates, frozenset | set) or not templates:
        return "templates must be a non-empty set of template kinds"
    unknown = sorted(str(t) for t in templates if t not in TEMPLATES)
    if unknown:
        return f"unknown templates {', '.join(unknown)} (known: {', '.join(sorted(TEMPLATES))})"
    return ""
