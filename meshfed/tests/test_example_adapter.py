"""docs/registry-adapters.md's example adapter, run in a real hub against a real HTTP catalog.

The page quotes docs/examples/catalog_registry.py; this test keeps the two equal and proves the
example does what the page says: contract, sync, updates, degraded on an outage and recovery.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aiohttp import web

from meshfed.adapters.contract import AdapterContext, RegistryAdapter
from meshfed.config import MeshConfig, RegistryConfig
from meshfed.hub import Hub
from meshfed.registry.aggregate import AggregateRegistry

DOCS = Path(__file__).parents[2] / "docs"
EXAMPLE = DOCS / "examples" / "catalog_registry.py"


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("catalog_registry_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def test_the_page_quotes_the_example_as_it_is() -> None:
    page = (DOCS / "registry-adapters.md").read_text()
    block = page.split("```python\n", 1)[1].split("```\n", 1)[0]
    assert block == EXAMPLE.read_text()


def test_the_example_satisfies_the_contract_and_checks_its_parameters() -> None:
    create = _example().create
    member = AggregateRegistry().add_member("catalog", "catalog")
    adapter = create(AdapterContext(member, {"url": "http://127.0.0.1:1/catalog"}))
    assert isinstance(adapter, RegistryAdapter) and adapter.synced is False
    for params, message in (
        ({}, "url: expected"),
        ({"url": "http://x", "interval": 0}, "interval"),
    ):
        with pytest.raises(ValueError, match=message):
            create(AdapterContext(member, params))


async def test_the_example_adapter_follows_a_catalog_inside_the_hub() -> None:
    catalog: dict[str, Any] = {
        "services": [
            {
                "host": "orders.shop",
                "namespace": "shop",
                "ports": {"http": 8080},
                "instances": [{"ip": "127.0.0.5", "labels": {"version": "v1"}}],
            }
        ]
    }
    down = False

    async def serve(request: web.Request) -> web.Response:
        if down:
            return web.Response(status=503, text="maintenance")
        return web.Response(text=json.dumps(catalog), content_type="application/json")

    app = web.Application()
    app.add_routes([web.get("/catalog", serve)])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/catalog"
    mesh = MeshConfig(
        monitoring_address="127.0.0.1:0",
        registries=(RegistryConfig("catalog", "catalog", {"url": url, "interval": 0.05}),),
    )
    hub = Hub(mesh, factories={"catalog": _example().create})
    await hub.start()
    try:
        agg = hub.aggregate
        member = agg.members[0]
        await _until(lambda: agg.synced)
        (endpoint,) = agg.endpoints("orders.shop")
        assert endpoint.address == "127.0.0.5" and endpoint.registry == "catalog"
        assert agg.service("orders.shop").registries == ("catalog",)

        catalog["services"][0]["instances"].append({"ip": "127.0.0.6", "healthy": False})
        await _until(lambda: len(agg.endpoints("orders.shop")) == 2)

        down = True
        await _until(lambda: member.degraded is not None)
        assert "503" in member.degraded
        assert len(agg.endpoints("orders.shop")) == 2  # the last state stays in force

        down = False
        await _until(lambda: member.degraded is None)
    finally:
        await hub.stop()
        await runner.cleanup()
