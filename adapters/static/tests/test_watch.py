"""The static registry follows its files live and keeps the last good state on errors."""

import asyncio
import textwrap
from pathlib import Path

import pytest

from meshfed.adapters.static.registry import StaticRegistry
from meshfed.registry import AggregateRegistry

HOST = "web.default.svc.cluster.local"


def entry(addresses: list[str]) -> str:
    endpoints = "\n".join(f"        - {{address: {a}}}" for a in addresses)
    return (
        textwrap.dedent(
            """
        apiVersion: networking.meshfed.io/v1alpha1
        kind: ServiceEntry
        metadata: {name: web}
        spec:
          hosts: [web.default.svc.cluster.local]
          location: MESH_INTERNAL
          ports: [{number: 80, name: http, protocol: HTTP}]
          endpoints:
        """
        )
        + endpoints
        + "\n"
    )


async def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        await asyncio.sleep(0.05)


@pytest.fixture
async def running(tmp_path: Path):
    path = tmp_path / "services.yaml"
    path.write_text(entry(["127.0.0.2"]))
    agg = AggregateRegistry()
    events = []
    agg.subscribe(events.append)
    registry = StaticRegistry(agg.add_member("static"), [tmp_path], "cluster.local")
    task = asyncio.create_task(registry.run())
    await wait_for(lambda: agg.synced)
    yield agg, registry, path, events
    await registry.stop()
    await asyncio.wait_for(task, 5)


async def test_edit_applies_without_restart(running):
    agg, _, path, events = running
    assert [e.address for e in agg.endpoints(HOST)] == ["127.0.0.2"]
    await asyncio.sleep(0.3)  # let the watcher arm before editing
    path.write_text(entry(["127.0.0.2", "127.0.0.3"]))
    await wait_for(lambda: len(agg.endpoints(HOST)) == 2)
    change = events[-1].endpoints[0]
    assert [e.address for e in change.added] == ["127.0.0.3"]
    assert change.removed == () and change.updated == ()


async def test_broken_file_keeps_last_good_state(running, caplog):
    agg, registry, path, events = running
    count = len(events)
    await asyncio.sleep(0.3)
    path.write_text(entry(["127.0.0.2"]).replace("number: 80", "number: eighty"))
    await wait_for(lambda: registry.errors)
    assert [e.address for e in agg.endpoints(HOST)] == ["127.0.0.2"]
    assert len(events) == count
    message = str(registry.errors[0])
    assert str(path) in message and "ServiceEntry default/web" in message
    assert "spec.ports[0].number: expected an integer, got 'eighty'" in message
    assert "keeping its last good state" in caplog.text
    # Fixing the file applies it and clears the error.
    path.write_text(entry(["127.0.0.4"]))
    await wait_for(lambda: not registry.errors and agg.endpoints(HOST)[0].address == "127.0.0.4")


async def test_new_and_deleted_files(running, tmp_path):
    agg, _, _, _ = running
    await asyncio.sleep(0.3)
    extra = tmp_path / "extra.yaml"
    extra.write_text(entry(["127.0.0.9"]).replace("web", "api"))
    await wait_for(lambda: agg.service("api.default.svc.cluster.local") is not None)
    extra.unlink()
    await wait_for(lambda: agg.service("api.default.svc.cluster.local") is None)
    assert agg.service(HOST) is not None
