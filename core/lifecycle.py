"""One lifecycle for every process: parts started in order, stopped in reverse, always.

Why: a process is a stack of parts (registry adapters, Pilot's gRPC server, the CA's servers, the
monitoring port). If one of them cannot start (a port already taken), every part started before
it must be stopped again, in reverse order, so the process exits cleanly instead of leaving
adapters polling with nobody serving. The same unwinding runs at a normal stop. It is aiohttp's
``CleanupContext`` idea with a typed contract: each part is a :class:`Component`.

Promises:

- :meth:`Lifecycle.start` starts the parts in the order they were added. When one raises (or the
  start is cancelled), the parts already started are stopped in reverse and
  :class:`StartFailed` (or the cancellation) is raised; no part is left running.
- :meth:`Lifecycle.stop` stops every started part in reverse order, once; a part whose ``stop``
  raises is logged and collected, and the parts below it are still stopped.
- :func:`handle_stop_signals`: SIGINT / SIGTERM set the process's stop event; if the process has
  not exited ``hard_exit_after`` seconds later (a part that does not stop), or on a second
  signal, it exits at once, so a signal always ends the process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Protocol, runtime_checkable

import attrs

log = logging.getLogger("meshfed.core.lifecycle")


@runtime_checkable
class Component(Protocol):
    """A part of a process, started once and stopped once.

    ``stop`` is also called when ``start`` raised, so it must tolerate a half-done start."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@attrs.frozen
class Step:
    """A :class:`Component` made of two callables (for parts whose start takes arguments)."""

    on_start: Callable[[], Awaitable[None]]
    on_stop: Callable[[], Awaitable[None]]

    async def start(self) -> None:
        await self.on_start()

    async def stop(self) -> None:
        await self.on_stop()


@attrs.frozen
class StopError:
    part: str
    error: BaseException

    def __str__(self) -> str:
        return f"{self.part}: {type(self.error).__name__}: {self.error}"


class StartFailed(Exception):
    """A part could not start; every part started before it has been stopped again."""

    def __init__(self, part: str, cause: BaseException, stop_errors: list[StopError]) -> None:
        detail = f"{part} could not start: {cause}"
        if stop_errors:
            detail += "; while unwinding: " + "; ".join(str(e) for e in stop_errors)
        super().__init__(detail)
        self.part = part
        self.cause = cause
        self.stop_errors = stop_errors


class Lifecycle:
    """Named parts, started in order and stopped in reverse."""

    def __init__(self) -> None:
        self._parts: list[tuple[str, Component]] = []
        self._started: list[tuple[str, Component]] = []

    def add(self, name: str, part: Component) -> None:
        self._parts.append((name, part))

    @property
    def started(self) -> list[str]:
        return [name for name, _ in self._started]

    async def start(self) -> None:
        for name, part in self._parts[len(self._started) :]:
            try:
                await part.start()
            except BaseException as exc:
                # A part that failed half-way may hold resources too: stop it first.
                errors = await self._stop_one(name, part)
                errors += await self.stop()
                if isinstance(exc, Exception):
                    raise StartFailed(name, exc, errors) from exc
                raise
            self._started.append((name, part))
            log.debug("started %s", name)

    async def stop(self) -> list[StopError]:
        """Stop every started part in reverse; returns (and logs) the errors met."""
        errors: list[StopError] = []
        while self._started:
            name, part = self._started.pop()
            errors += await self._stop_one(name, part)
        return errors

    @staticmethod
    async def _stop_one(name: str, part: Component) -> list[StopError]:
        try:
            await part.stop()
        except Exception as exc:
            log.error("stopping %s failed: %s: %s", name, type(exc).__name__, exc)
            return [StopError(name, exc)]
        log.debug("stopped %s", name)
        return []


def handle_stop_signals(stop: asyncio.Event, hard_exit_after: float = 30.0) -> Callable[[], None]:
    """Make SIGINT / SIGTERM set ``stop``; returns a function that restores the old handlers
    and cancels the exit timer (call it once the process has stopped cleanly).

    The handler is a plain ``signal`` handler, not the loop's: it runs even while the loop is
    blocked, and the exit timer runs in a thread of its own.
    """
    loop = asyncio.get_running_loop()
    signalled = threading.Event()
    timers: list[threading.Timer] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if signalled.is_set():
            log.error("second signal %d: exiting now", signum)
            os._exit(128 + signum)
        signalled.set()
        log.info("signal %d: stopping", signum)
        loop.call_soon_threadsafe(stop.set)
        timer = threading.Timer(hard_exit_after, _hard_exit, (signum, hard_exit_after))
        timer.daemon = True
        timer.start()
        timers.append(timer)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for timer in timers:
            timer.cancel()
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def _hard_exit(signum: int, after: float) -> None:
    log.error("still running %.0fs after signal %d: exiting without a clean stop", after, signum)
    logging.shutdown()
    os._exit(128 + signum)
