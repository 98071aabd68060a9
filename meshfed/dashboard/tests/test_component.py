"""The dashboard component inside a real hub: the page, its assets, the state document, and
server-sent events that follow a registry change (two static registries over tmp folders)."""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from meshfed.config import MeshConfig, RegistryConfig
from meshfed.dashboard import Dashboard
from meshfed.dashboard import component as dashboard_component
from meshfed.hub import Hub

HOST = "web.default.svc.cluster.local"


def services(address: str, protocol: str = "HTTP") -> str:
    return textwrap.dedent(
        f"""
        apiVersion: networking.meshfed.io/v1alpha1
        kind: ServiceEntry
        metadata: {{name: web}}
        spec:
          hosts: [{HOST}]
          location: MESH_INTERNAL
          ports: [{{number: 80, name: http, protocol: {protocol}}}]
          endpoints:
            - {{address: {address}, labels: {{version: v1}}}}
        """
    )


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[tuple[Hub, str, Path]]:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "web.yaml").write_text(services("127.0.0.2"))
    (tmp_path / "b" / "web.yaml").write_text(services("127.0.0.3", protocol="TCP"))
    mesh = MeshConfig(
        monitoring_address="127.0.0.1:0",
        registries=(
            RegistryConfig("primary", "static", {"paths": [str(tmp_path / "a")]}),
            RegistryConfig("vms", "static", {"paths": [str(tmp_path / "b")]}),
        ),
    )
    hub = Hub(mesh, [Dashboard()])
    await hub.start()
    for _ in range(100):
        if hub.aggregate.synced:
            break
        await asyncio.sleep(0.05)
    try:
        yield hub, f"http://127.0.0.1:{hub.monitoring_port}", tmp_path
    finally:
        await hub.stop()


async def test_page_and_assets_are_served_by_the_hub(hub) -> None:
    _, url, _ = hub
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/dashboard") as r:
            page = await r.text()
            assert r.status == 200 and r.content_type == "text/html"
        # Every asset the page names is served here: no CDN, nothing from elsewhere.
        for ref in ("/dashboard/static/dashboard.js", "/dashboard/static/dashboard.css",
                    "/dashboard/static/logo.svg"):  # fmt: skip
            assert ref in page
            async with session.get(url + ref) as r:
                assert r.status == 200 and len(await r.read()) > 100
        assert "http://" not in page and "https://" not in page
        async with session.get(url + "/dashboard/static/component.py") as r:
            assert r.status == 404
        async with session.get(url + "/dashboard/static/..%2Fcomponent.py") as r:
            assert r.status == 404


async def test_state_has_the_catalog_with_sources_conflicts_and_registries(hub) -> None:
    _, url, _ = hub
    async with aiohttp.ClientSession() as session, session.get(url + "/dashboard/api/state") as r:
        doc = await r.json()
    (svc,) = doc["services"]
    assert svc["hostname"] == HOST and svc["conflict"] is True
    assert {(e["address"], e["registry"]) for e in svc["endpoints"]} == {
        ("127.0.0.2", "primary"),
        ("127.0.0.3", "vms"),
    }
    assert svc["healthy_endpoints"] == 2
    (conflict,) = doc["conflicts"]
    assert conflict["winner"] == "primary" and conflict["loser"] == "vms"
    assert [(m["name"], m["synced"]) for m in doc["members"]] == [("primary", True), ("vms", True)]
    assert doc["summary"]["conflicts"] == 1 and doc["readiness"]["ready"] is True
    assert doc["proxies"] == [] and doc["mixer"] is None and doc["graph"] is None


async def read_event(stream: aiohttp.StreamReader) -> dict:
    data = None
    while True:
        line = (await stream.readline()).decode()
        if line.startswith("data: "):
            data = json.loads(line[6:])
        elif line == "\n" and data is not None:
            return data


async def test_events_follow_a_registry_change(hub) -> None:
    _, url, tmp_path = hub
    async with aiohttp.ClientSession() as session, session.get(url + "/dashboard/events") as r:
        assert r.status == 200 and r.content_type == "text/event-stream"
        first = await asyncio.wait_for(read_event(r.content), 5)
        assert len(first["services"][0]["endpoints"]) == 2
        started = time.monotonic()
        (tmp_path / "b" / "web.yaml").write_text(services("127.0.0.9", protocol="TCP"))
        while True:
            doc = await asyncio.wait_for(read_event(r.content), 10)
            addresses = {e["address"] for e in doc["services"][0]["endpoints"]}
            if "127.0.0.9" in addresses:
                break
        assert addresses == {"127.0.0.2", "127.0.0.9"}
        assert time.monotonic() - started < 5
        (vms,) = [m for m in doc["members"] if m["name"] == "vms"]
        assert vms["last_event"]["hosts"] == [HOST]


async def test_open_streams_do_not_hold_the_hub_at_stop(hub) -> None:
    the_hub, url, _ = hub
    async with aiohttp.ClientSession() as session:
        streams = [await session.get(url + "/dashboard/events") for _ in range(3)]
        for s in streams:
            await asyncio.wait_for(read_event(s.content), 5)
        started = time.monotonic()
        await the_hub.stop()
        assert time.monotonic() - started < 5  # aiohttp alone would wait 60 s for them
        for s in streams:
            s.close()


async def test_streams_are_bounded(hub, monkeypatch) -> None:
    _, url, _ = hub
    monkeypatch.setattr(dashboard_component, "MAX_STREAMS", 2)
    async with aiohttp.ClientSession() as session:
        kept = [await session.get(url + "/dashboard/events") for _ in range(2)]
        for s in kept:
            await asyncio.wait_for(read_event(s.content), 5)
        async with session.get(url + "/dashboard/events") as refused:
            assert refused.status == 503
        for s in kept:
            s.close()
