"""Activating a compiled config: build its handlers, swap it in, close what is gone.

A :class:`Snapshot` is a compiled config plus live handlers. The runtime holds one reference to
the current snapshot; a request takes that reference once at its start and uses only it, so a
request in flight finishes on the snapshot it began with. A new snapshot is fully built (every
handler constructed) before the reference changes. Handlers whose kind and params are unchanged
are carried over, not rebuilt; handlers no longer named are closed after the requests still
using the old snapshot have finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

import attrs
import prometheus_client

from meshfed.core.resources import ConfigError
from meshfed.mixer.config.compile import CompiledConfig
from meshfed.mixer.handlers.api import Handler, HandlerEnv, HandlerKind

log = logging.getLogger("meshfed.mixer.runtime")


@attrs.define(eq=False)
class Snapshot:
    version: int
    config: CompiledConfig
    handlers: Mapping[str, Handler]
    # handler ref -> (kind, params) it was built from, to decide reuse
    built_from: Mapping[str, tuple[str, Any]]
    problems: tuple[ConfigError, ...] = ()
    in_flight: int = 0
    _drained: asyncio.Event = attrs.field(factory=asyncio.Event)

    def enter(self) -> None:
        self.in_flight += 1
        self._drained.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._drained.set()

    async def drained(self) -> None:
        if self.in_flight:
            await self._drained.wait()


EMPTY = CompiledConfig(manifest={}, rules=(), instances={}, handlers={}, errors=())


async def build_snapshot(
    config: CompiledConfig,
    kinds: Mapping[str, HandlerKind],
    previous: Snapshot | None,
    metrics: prometheus_client.CollectorRegistry,
    version: int,
) -> Snapshot:
    """Build every handler ``config`` names (reusing unchanged ones of ``previous``)."""
    handlers: dict[str, Handler] = {}
    built_from: dict[str, tuple[str, Any]] = {}
    problems: list[ConfigError] = []
    for ref, spec in config.handlers.items():
        key = (spec.kind, spec.params)
        if previous is not None and previous.built_from.get(ref) == key:
            handlers[ref] = previous.handlers[ref]
            built_from[ref] = key
            continue
        kind = kinds.get(spec.kind)
        if kind is None:
            problems.append(ConfigError(spec.origin_file, ref, "kind", "kind not installed"))
            continue
        env = HandlerEnv(ref, logging.getLogger(f"meshfed.mixer.handler.{ref}"), metrics)
        try:
            handlers[ref] = await kind.build(spec.params, env)
            built_from[ref] = key
        except Exception as exc:
            log.error("handler %s (%s) could not be built: %s", ref, spec.kind, exc)
            problems.append(
                ConfigError(spec.origin_file, f"{spec.kind} {ref}", "spec", f"build failed: {exc}")
            )
    return Snapshot(version, config, handlers, built_from, tuple(problems))


async def retire(old: Snapshot, new: Snapshot) -> None:
    """Close the handlers of ``old`` that ``new`` does not carry over, once ``old`` drained."""
    gone = [h for ref, h in old.handlers.items() if new.handlers.get(ref) is not h]
    if not gone:
        return
    await old.drained()
    for handler in gone:
        with contextlib.suppress(Exception):
            await handler.close()
