"""Test support: run a Consul adapter against an aggregate and observe what it does.

Used by the integration tests (``integration/test_consul_*.py``) against real Consul servers and
by the benchmark; it imports nothing from the test harness, only the adapter and the registry.
:class:`RunningAdapter` records every change event and status change, and offers bounded waits,
so a test can assert both on the aggregate's view and on *which* pushes happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from meshfed.adapters.consul.registry import ConsulRegistry, create
from meshfed.adapters.contract import AdapterContext
from meshfed.registry.aggregate import AggregateRegistry
from meshfed.registry.events import ChangeEvent


class RunningAdapter:
    """A Consul adapter running as a task, its member, and the events it caused."""

    def __init__(self, aggregate: AggregateRegistry, adapter: ConsulRegistry) -> None:
        self.aggregate = aggregate
        self.adapter = adapter
        self.member = adapter.member
        self.events: list[ChangeEvent] = []
        self.task: asyncio.Task[None] | None = None
        aggregate.subscribe(self.events.append)

    def events_for(self, hostname: str) -> list[ChangeEvent]:
        """Events that touched ``hostname``."""
        return [e for e in self.events if hostname in e.hostnames]

    def watch_index(self, key: str) -> int:
        """The current index of watch ``key`` (``dc1/web``, ``dc1/services``), 0 if none."""
        watch = self.adapter.describe()["watches"].get(key)
        return int(watch["index"]) if watch else 0

    async def wait_for(
        self, check: Callable[[], Any], what: str, timeout: float = 20.0, interval: float = 0.05
    ) -> Any:
        """Poll ``check`` on the loop until it returns a truthy value; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            await asyncio.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@contextlib.asynccontextmanager
async def running_adapter(
    params: Mapping[str, Any],
    aggregate: AggregateRegistry | None = None,
    name: str = "consul",
    sync_timeout: float | None = 30.0,
) -> AsyncIterator[RunningAdapter]:
    """Start a Consul adapter; wait until it synced (unless ``sync_timeout`` is None); stop it."""
    aggregate = aggregate if aggregate is not None else AggregateRegistry()
    member = aggregate.add_member(name, "consul")
    running = RunningAdapter(aggregate, create(AdapterContext(member, params)))
    running.task = asyncio.create_task(running.adapter.run())
    try:
        if sync_timeout is not None:
            await running.wait_for(lambda: member.synced, "the initial sync", sync_timeout)
        yield running
    finally:
        await running.adapter.stop()
        try:
            await asyncio.wait_for(running.task, 10)
        except (TimeoutError, asyncio.CancelledError):
            running.task.cancel()
