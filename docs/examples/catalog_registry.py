"""A minimal registry adapter: services from an HTTP JSON catalog, polled every few seconds.

The catalog answers ``GET <url>`` with::

    {"services": [{"host": "orders.shop", "namespace": "shop", "ports": {"http": 8080},
                   "instances": [{"ip": "127.0.0.5", "healthy": true, "labels": {"v": "1"}}]}]}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from typing import Any

from meshfed.adapters.contract import AdapterContext
from meshfed.registry.model import Endpoint, Port, Protocol, Service


class CatalogRegistry:
    """One HTTP catalog followed into one member of the aggregate."""

    def __init__(self, context: AdapterContext) -> None:
        url = context.params.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"catalog registry: url: expected an http(s) URL, got {url!r}")
        interval = context.params.get("interval", 5)
        if not isinstance(interval, int | float) or isinstance(interval, bool) or interval <= 0:
            raise ValueError("catalog registry: interval: expected seconds > 0")
        self.member = context.member
        self.url = url
        self.interval = float(interval)
        self._stopped = asyncio.Event()
        self.polls = 0

    @property
    def synced(self) -> bool:
        return self.member.synced

    async def run(self) -> None:
        while not self._stopped.is_set():
            try:
                document = await asyncio.to_thread(self._fetch)  # no I/O on the event loop
                services, endpoints = self._map(document)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                # Unreachable or nonsense: keep the last state in force and say why.
                self.member.set_degraded(f"catalog {self.url}: {exc}")
            else:
                self.member.replace(services, endpoints)  # full state; only differences emitted
                self.member.set_degraded(None)
                self.member.mark_synced()
            self.polls += 1
            with contextlib.suppress(TimeoutError):  # the poll interval, or stop() first
                await asyncio.wait_for(self._stopped.wait(), self.interval)

    async def stop(self) -> None:
        self._stopped.set()

    def describe(self) -> dict[str, Any]:
        return {"url": self.url, "interval": self.interval, "polls": self.polls}

    def _fetch(self) -> Any:
        with urllib.request.urlopen(self.url, timeout=10) as response:
            return json.loads(response.read(4 * 1024 * 1024))  # bounded, like every read

    def _map(self, document: Any) -> tuple[list[Service], dict[str, list[Endpoint]]]:
        services, endpoints = [], {}
        for entry in document["services"]:
            ports = [
                Port(int(number), name, Protocol.HTTP if name.startswith("http") else Protocol.TCP)
                for name, number in sorted(entry["ports"].items())
            ]
            service = Service(entry["host"], entry.get("namespace", "default"), ports)
            services.append(service)
            endpoints[service.hostname] = [
                Endpoint(
                    address=str(i["ip"]),
                    ports={p.name: p.number for p in ports},
                    labels={str(k): str(v) for k, v in (i.get("labels") or {}).items()},
                    healthy=bool(i.get("healthy", True)),
                )
                for i in entry.get("instances", [])
            ]
        return services, endpoints


def create(context: AdapterContext) -> CatalogRegistry:
    """The entry point: ``[project.entry-points."meshfed.registries"] catalog = ...:create``."""
    return CatalogRegistry(context)
