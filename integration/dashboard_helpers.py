"""A real browser on the hub's dashboard: Debian's Chromium, headless, driven by Playwright.

Playwright drives the system Chromium (:func:`~integration.peers.artifacts.chromium_path`,
provisioned by ``python -m integration.provision --only chromium``); it downloads no browser of
its own. The page is read as a user sees it: through the DOM that the page's JavaScript built
from the hub's server-sent events, never through the JSON API. :func:`keep_screenshot` saves
each picture under the test's tmp dir and, when ``MESHFED_DASHBOARD_SHOTS`` names a folder,
there too (that is how the picture in the docs is made).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from integration.peers.artifacts import chromium_path, require_binary

VIEWPORT = {"width": 1280, "height": 900}
FIRST_DRAW_MS = 15_000


@dataclass
class Dashboard:
    """An open dashboard page and the JavaScript errors it has raised so far."""

    page: Any  # playwright.async_api.Page
    errors: list[str] = field(default_factory=list)
    navigations: list[str] = field(default_factory=list)


@asynccontextmanager
async def open_dashboard(base_url: str) -> AsyncIterator[Dashboard]:
    """A headless Chromium page on ``base_url``/dashboard, once the first state has been drawn."""
    chromium = require_binary(chromium_path(), "chromium", "apt", "chromium")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(chromium),
            headless=True,
            # As root (CI and these machines) Chromium refuses to start with its sandbox.
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            page = await browser.new_page(viewport=VIEWPORT)
            board = Dashboard(page)
            page.on("pageerror", lambda exc: board.errors.append(str(exc)))
            page.on(
                "console",
                lambda msg: board.errors.append(msg.text) if msg.type == "error" else None,
            )
            page.on(
                "framenavigated",
                lambda frame: (
                    board.navigations.append(frame.url) if frame == page.main_frame else None
                ),
            )
            await page.goto(base_url + "/dashboard")
            await page.wait_for_selector("body[data-updates]", timeout=FIRST_DRAW_MS)
            yield board
        finally:
            await browser.close()


async def mark_page(page: Any) -> None:
    """Leave a marker in the page's JS state: gone after a reload, kept by live updates."""
    await page.evaluate("window.__meshfedMarker = 'no reload'")


async def still_marked(page: Any) -> bool:
    return bool(await page.evaluate("window.__meshfedMarker === 'no reload'"))


async def updates(page: Any) -> int:
    """How many state documents the page has drawn (its ``body[data-updates]``)."""
    return int(await page.get_attribute("body", "data-updates") or 0)


async def endpoint_rows(page: Any, host: str) -> list[dict[str, str]]:
    """The endpoint table of ``host`` as drawn: address, source registry, health per row."""
    rows: list[dict[str, str]] = await page.eval_on_selector_all(
        f'.service[data-host="{host}"] tr[data-address]',
        """rows => rows.map(r => ({
            address: r.querySelector('.address').textContent,
            registry: r.querySelector('.registry').textContent,
            health: r.querySelector('.health').textContent,
        }))""",
    )
    return rows


async def registry_rows(page: Any) -> dict[str, dict[str, str]]:
    """The registries table as drawn: {name: {kind, state, last_event}}."""
    rows: list[dict[str, str]] = await page.eval_on_selector_all(
        "#registries tbody tr[data-registry]",
        """rows => rows.map(r => ({
            name: r.querySelector('.name').textContent,
            kind: r.children[1].textContent,
            state: r.querySelector('.state .badge').textContent,
            last_event: r.querySelector('.last-event').textContent,
        }))""",
    )
    return {r["name"]: r for r in rows}


async def summary(page: Any) -> dict[str, int]:
    """The summary line's counts as drawn: {services, endpoints, conflicts, ...}."""
    counts: dict[str, str] = await page.eval_on_selector_all(
        "#summary [data-count]",
        "spans => Object.fromEntries(spans.map(s => [s.dataset.count, s.querySelector('b')"
        ".textContent]))",
    )
    return {k: int(v) for k, v in counts.items()}


async def keep_screenshot(page: Any, tmp_path: Path, name: str, publish: bool = True) -> Path:
    """Save a full-page picture under ``tmp_path``; also under ``$MESHFED_DASHBOARD_SHOTS``
    when that is set and ``publish`` is true (the pictures the docs show)."""
    shot = tmp_path / name
    await page.screenshot(path=str(shot), full_page=True)
    folder = os.environ.get("MESHFED_DASHBOARD_SHOTS")
    if folder and publish:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(folder) / name)
    return shot
