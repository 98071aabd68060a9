"""The hub's lifecycle and supervision with real parts on loopback (no peers needed)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from meshfed.adapters.contract import AdapterContext
from meshfed.adapters.workloads.server import WorkloadRegistration
from meshfed.config import MeshConfig, RegistryConfig
from meshfed.core.component import HubContext
from meshfed.core.lifecycle import StartFailed
from meshfed.core.supervisor import Supervisor
from meshfed.hub import Hub
from meshfed.pilot.server import PilotServer
from meshfed.registry.aggregate import Member
from meshfed.registry.model import Port, Protocol, Service

SERVICES = Path(__file__).parents[1] / "defaults" / "services.yaml"


def _fast() -> Supervisor:
    return Supervisor(backoff_multiplier=0.01, backoff_max=0.05, stable_after=0.3)


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


class FlakyAdapter:
    """Crashes on its first ``crashes`` runs (a bug, a bad answer), then follows quietly."""

    def __init__(self, context: AdapterContext, crashes: int) -> None:
        self.member: Member = context.member
        self.crashes = crashes
        self.runs = 0
        self.stopped = asyncio.Event()
        self.stop_calls = 0

    @property
    def synced(self) -> bool:
        return self.member.synced

    async def run(self) -> None:
        self.runs += 1
        self.member.replace(
            [Service("flaky.example", "default", [Port(80, "http", Protocol.HTTP)])]
        )
        self.member.mark_synced()
        if self.runs <= self.crashes:
            raise ConnectionResetError("the platform hung up")
        await self.stopped.wait()

    async def stop(self) -> None:
        self.stop_calls += 1
        self.stopped.set()

    def describe(self) -> dict[str, Any]:
        return {"runs": self.runs}


def _hub(components: list[Any], crashes: int = 0, **mesh: Any) -> tuple[Hub, list[FlakyAdapter]]:
    made: list[FlakyAdapter] = []

    def factory(context: AdapterContext) -> FlakyAdapter:
        made.append(FlakyAdapter(context, crashes))
        return made[-1]

    config = MeshConfig(
        monitoring_address="127.0.0.1:0",
        registries=(RegistryConfig("flaky", "flaky"),),
        **mesh,
    )
    hub = Hub(config, components, supervisor=_fast(), factories={"flaky": factory})
    return hub, made


async def _ready(hub: Hub) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{hub.monitoring_port}/healthz/ready"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json()


async def test_a_crashed_adapter_is_restarted_and_degraded_clears_once_it_stays_up() -> None:
    hub, made = _hub([], crashes=2)
    await hub.start()
    (adapter,) = made
    try:
        member = hub.aggregate.members[0]
        seen: list[str | None] = []
        hub.aggregate.subscribe_status(lambda: seen.append(member.degraded))
        await _until(lambda: adapter.runs == 3)
        assert any(s and "adapter crashed: ConnectionResetError" in s for s in seen) or (
            member.degraded and "crashed" in member.degraded
        )
        await _until(lambda: member.degraded is None)
        status, body = await _ready(hub)
        assert status == 200 and body["degraded"] == []
        assert hub.aggregate.service("flaky.example") is not None  # state kept throughout
    finally:
        await hub.stop()
    assert adapter.stop_calls == 1


async def test_an_adapter_own_degraded_reason_is_not_cleared_by_recovery() -> None:
    hub, made = _hub([], crashes=1)
    await hub.start()
    (adapter,) = made
    try:
        member = hub.aggregate.members[0]
        await _until(lambda: adapter.runs == 2)
        member.set_degraded("datacenter dc2 unreachable")  # the adapter's own finding
        await asyncio.sleep(0.5)  # past stable_after
        assert member.degraded == "datacenter dc2 unreachable"
    finally:
        await hub.stop()


class SlowStopAdapter(FlakyAdapter):
    """Tells its run to end, then waits for its own cleanup (threads, a session) to finish."""

    async def stop(self) -> None:
        self.stop_calls += 1
        self.stopped.set()
        await asyncio.sleep(0.05)  # the run returns meanwhile


async def test_an_adapter_that_returns_while_its_stop_awaits_is_no_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    made: list[SlowStopAdapter] = []

    def factory(context: AdapterContext) -> SlowStopAdapter:
        made.append(SlowStopAdapter(context, 0))
        return made[-1]

    config = MeshConfig(
        monitoring_address="127.0.0.1:0", registries=(RegistryConfig("slow", "slow"),)
    )
    hub = Hub(config, [], supervisor=_fast(), factories={"slow": factory})
    await hub.start()
    member = hub.aggregate.members[0]
    await _until(lambda: member.synced)
    with caplog.at_level("WARNING"):
        await hub.stop()
    assert made[0].runs == 1  # not restarted
    assert member.degraded is None
    assert [r.getMessage() for r in caplog.records if r.levelname in ("WARNING", "ERROR")] == []


class FailingTaskComponent:
    """A component whose background work fails until ``healthy`` is set."""

    def __init__(self) -> None:
        self.healthy = asyncio.Event()
        self.stopped = asyncio.Event()

    async def start(self, hub: HubContext) -> None:
        hub.supervisor.spawn("test store", self._run)

    async def _run(self) -> None:
        if not self.healthy.is_set():
            raise ValueError("precedence: expected an integer, got '²'")
        await self.stopped.wait()

    async def stop(self) -> None:
        self.stopped.set()

    def routes(self) -> list[web.RouteDef]:
        return []

    def not_ready(self) -> list[str]:
        return []


async def test_a_failing_component_task_is_visible_in_readiness_and_tasksz() -> None:
    component = FailingTaskComponent()
    hub, _ = _hub([component])
    await hub.start()
    try:
        await _until(lambda: "test store" in hub.supervisor.failures())
        status, body = await _ready(hub)
        assert status == 200  # still serving its last good state
        assert any("test store failing" in d and "precedence" in d for d in body["degraded"])
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{hub.monitoring_port}/debug/tasksz"
            async with session.get(url) as response:
                tasks = await response.json()
        assert tasks["test store"]["restarts"] >= 1 and tasks["registry flaky"]["running"]
        component.healthy.set()
        await _until(lambda: not hub.supervisor.failures())
        assert (await _ready(hub))[1]["degraded"] == []
    finally:
        await hub.stop()


async def test_pilot_on_a_taken_port_unwinds_every_part_started_before_it(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    config = tmp_path / "rules"
    config.mkdir()
    registration = WorkloadRegistration(tmp_path / "bundle.pem")
    pilot = PilotServer()
    hub, made = _hub(
        [registration, pilot],
        discovery_address=f"127.0.0.1:{port}",
        config_paths=(str(config),),
    )
    try:
        with pytest.raises(StartFailed, match="PilotServer could not start"):
            await hub.start()
    finally:
        taken.close()
    (adapter,) = made
    assert adapter.stop_calls == 1  # the adapters were stopped
    assert not any(t["running"] for t in hub.supervisor.describe().values())
    assert {"registry flaky", "registry workloads"} <= set(hub.supervisor.describe())
    assert hub.monitoring_port == 0  # the monitoring port was never opened
    assert pilot._grpc is None and pilot._debounce is None
    assert all(f.files._stop.is_set() for f in pilot._owned_stores)  # the file store stopped


async def test_pilot_runs_its_file_store_under_the_hub_supervisor(tmp_path: Path) -> None:
    config = tmp_path / "rules"
    config.mkdir()
    hub, _ = _hub([PilotServer()], discovery_address="127.0.0.1:0", config_paths=(str(config),))
    await hub.start()
    try:
        tasks = hub.supervisor.describe()
        assert tasks["pilot config files 0"]["running"] is True
    finally:
        await hub.stop()
    assert hub.supervisor.describe()["pilot config files 0"]["running"] is False
    assert hub.supervisor.failures() == {}
