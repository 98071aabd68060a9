"""The dashboard in a real browser: what an operator sees, and that it changes live.

``meshfed up`` federates two registries: a static file (``vms``) and a real Consul dev agent
(``consul``). Both define ``web.service.consul``, the file naming its port ``http`` and Consul
``tcp``: a conflict that the file wins by precedence, while the endpoints of both are merged.
Headless Chromium (Debian's, driven by Playwright) opens ``/dashboard`` and the test reads the
page's DOM: each endpoint with its source registry and health, the conflict, the registries'
state and the summary. Then a service is registered in Consul and another one is added to the
static file, and both appear on the same page (its JavaScript state survives, so no reload):
the server-sent events carried them. Set ``MESHFED_DASHBOARD_SHOTS=docs/img`` to refresh the
picture in the docs. Hosts: the hub on 127.<run>.91.1; endpoint addresses 127.0.91.x (data).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from integration.dashboard_helpers import (
    endpoint_rows,
    keep_screenshot,
    mark_page,
    open_dashboard,
    registry_rows,
    still_marked,
    summary,
    updates,
)
from integration.peers.consul import ConsulAgent, start_dev_agent
from integration.pilot_helpers import addr

HOST = addr(91, 1)
WEB = "web.service.consul"
PAYMENTS = "payments.service.consul"
CATALOG = "catalog.default.svc.cluster.local"
CART = "cart.default.svc.cluster.local"
LIVE_MS = 15_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _entry(name: str, host: str, port_name: str, addresses: list[str]) -> str:
    endpoints = ", ".join(f"{{address: {a}, labels: {{app: {name}}}}}" for a in addresses)
    return (
        "apiVersion: networking.meshfed.io/v1alpha1\nkind: ServiceEntry\n"
        f"metadata: {{name: {name}, namespace: default}}\n"
        f"spec:\n  hosts: [{host}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n"
        f"  ports: [{{number: 8080, name: {port_name}, protocol: HTTP}}]\n"
        f"  endpoints: [{endpoints}]\n"
    )


STATIC = "---\n".join(
    [
        _entry("catalog", CATALOG, "http", ["127.0.91.11", "127.0.91.12"]),
        # Consul names this port after its protocol (tcp): the deliberate conflict.
        _entry("web", WEB, "http", ["127.0.91.21"]),
    ]
)


def _mesh(tmp_path: Path, services: Path, consul: ConsulAgent, monitoring: int) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    path = tmp_path / "mesh.yaml"
    path.write_text(
        "apiVersion: meshfed.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: m}\nspec:\n"
        f"  listen: {{monitoring: '{HOST}:{monitoring}', discovery: '{HOST}:{_free_port()}'}}\n"
        f"  configPaths: [{rules}]\n"
        "  registries:\n"
        f"    - {{name: vms, kind: static, paths: [{services}]}}\n"
        f"    - {{name: consul, kind: consul, addresses: ['{consul.http_addr}'], wait: 5s}}\n"
    )
    return path


def _register(agent: ConsulAgent, service: str, node: str, address: str, healthy: bool) -> None:
    check = {
        "Node": node,
        "CheckID": f"{node}-alive",
        "Name": "alive",
        "Status": "passing" if healthy else "critical",
        "ServiceID": f"{service}-{node}",
    }
    agent.client().catalog.register(
        node,
        address,
        service={"Service": service, "ID": f"{service}-{node}", "Port": 8080},
        check=check,
    )


async def _until(check: Callable[[], Awaitable[Any]], what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, OSError):
            value = await check()
            if value:
                return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def test_the_dashboard_shows_the_federated_catalog_and_follows_registry_changes(
    tmp_path: Path,
) -> None:
    peers = contextlib.ExitStack()
    consul = await asyncio.to_thread(peers.enter_context, start_dev_agent(tmp_path / "consul"))
    try:
        await _with_consul(tmp_path, consul)
    finally:
        await asyncio.to_thread(peers.close)


async def _with_consul(tmp_path: Path, consul: ConsulAgent) -> None:
    await asyncio.to_thread(_register, consul, "web", "vm-web-1", "127.0.91.1", True)
    await asyncio.to_thread(_register, consul, "web", "vm-web-2", "127.0.91.2", False)
    services = tmp_path / "services.yaml"
    services.write_text(STATIC)
    monitoring = _free_port()
    hub_log = (tmp_path / "hub.log").open("wb")  # a file: a pipe nobody reads could fill
    hub = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshfed.cli", "up", "--config",
        str(_mesh(tmp_path, services, consul, monitoring)),
        stdout=asyncio.subprocess.DEVNULL, stderr=hub_log,
        env={**os.environ, "MESHFED_WORKLOAD_STATE": ""},
    )  # fmt: skip
    base = f"http://{HOST}:{monitoring}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:

            async def ready() -> bool:
                async with session.get(f"{base}/healthz/ready") as response:
                    return response.status == 200

            await _until(ready, "the hub's readiness", 60)

        async with open_dashboard(base) as board:
            page = board.page
            # Consul's first answer may come after the first document: wait for what it adds.
            await page.wait_for_selector(
                f'.service[data-host="{WEB}"] tr[data-registry="consul"]', timeout=LIVE_MS
            )
            registries = await registry_rows(page)
            # The hub's own push registry (VMs joining through their node agent) is the third.
            assert list(registries) == ["vms", "consul", "workloads"], registries
            kinds = {name: row["kind"] for name, row in registries.items()}
            assert kinds == {"vms": "static", "consul": "consul", "workloads": "nodeagent"}
            assert {row["state"] for row in registries.values()} == {"synced"}, registries
            assert await page.text_content("#readiness") == "ready"
            assert await page.text_content("#live") == "live"

            web = sorted(await endpoint_rows(page, WEB), key=lambda r: r["address"])
            assert web == [
                {"address": "127.0.91.1", "registry": "consul", "health": "healthy"},
                {"address": "127.0.91.2", "registry": "consul", "health": "unhealthy"},
                {"address": "127.0.91.21", "registry": "vms", "health": "healthy"},
            ], web
            catalog = await endpoint_rows(page, CATALOG)
            assert [(r["address"], r["registry"]) for r in catalog] == [
                ("127.0.91.11", "vms"),
                ("127.0.91.12", "vms"),
            ], catalog

            # The conflict: highlighted on the service, listed with who won and why.
            conflicted = await page.eval_on_selector_all(
                ".service.conflict", "nodes => nodes.map(n => n.dataset.host)"
            )
            assert conflicted == [WEB], conflicted
            badge = f'.service[data-host="{WEB}"] .head .badge'
            assert await page.text_content(badge) == "conflict"
            message = await page.text_content(f'#conflicts li[data-conflict="{WEB}"]')
            assert message is not None
            assert "port 8080 name is http in vms but tcp in consul" in message, message
            assert "vms wins by precedence" in message, message
            counts = await summary(page)
            assert counts["services"] == 2 and counts["endpoints"] == 5, counts
            assert counts["conflicts"] == 1 and counts["registries"] == 3, counts
            await keep_screenshot(page, tmp_path, "dashboard.png")

            # Live: a Consul registration and a static-file edit reach the open page.
            await mark_page(page)
            drawn = await updates(page)
            await asyncio.to_thread(_register, consul, "payments", "vm-pay-1", "127.0.91.3", True)
            await page.wait_for_selector(f'.service[data-host="{PAYMENTS}"]', timeout=LIVE_MS)
            assert await endpoint_rows(page, PAYMENTS) == [
                {"address": "127.0.91.3", "registry": "consul", "health": "healthy"}
            ]
            last = await page.text_content('#registries tr[data-registry="consul"] .last-event')
            assert last is not None and PAYMENTS in last, last

            services.write_text(STATIC + "---\n" + _entry("cart", CART, "http", ["127.0.91.31"]))
            await page.wait_for_selector(f'.service[data-host="{CART}"]', timeout=LIVE_MS)
            assert await endpoint_rows(page, CART) == [
                {"address": "127.0.91.31", "registry": "vms", "health": "healthy"}
            ]
            last = await page.text_content('#registries tr[data-registry="vms"] .last-event')
            assert last is not None and CART in last, last
            assert (await summary(page))["services"] == 4

            assert await still_marked(page), "the page was reloaded"
            assert len(board.navigations) == 1, board.navigations
            assert await updates(page) > drawn
            await keep_screenshot(page, tmp_path, "dashboard-live.png", publish=False)
            assert board.errors == [], board.errors
    finally:
        if hub.returncode is None:
            hub.send_signal(signal.SIGTERM)
        await asyncio.wait_for(hub.wait(), 40)
        hub_log.close()
    log = (tmp_path / "hub.log").read_text()
    assert hub.returncode == 0, log
    assert "Traceback" not in log, log
