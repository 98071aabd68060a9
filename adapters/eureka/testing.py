"""Registering instances through Eureka's REST API, and running the adapter: for tests and bench.

Why it exists: the integration tests and the benchmark act as Eureka *clients* (the way a Spring
or Netflix OSS application does) against a real Eureka server, and need the same few calls
(register, heartbeat, status override, cancel) without each writing them again. The calls are
the documented REST operations (``POST /apps/{app}``, ``PUT /apps/{app}/{id}``,
``PUT|DELETE /apps/{app}/{id}/status``, ``DELETE /apps/{app}/{id}``), sent as JSON. Nothing here
imitates a server. Product code does not import this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp

from meshfed.adapters.contract import AdapterContext
from meshfed.adapters.eureka.registry import EurekaRegistry, create
from meshfed.registry.aggregate import AggregateRegistry

DEFAULT_DC = {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"}


def instance_doc(
    app: str,
    instance_id: str,
    ip: str,
    port: int | None = 8080,
    *,
    secure_port: int | None = None,
    status: str = "UP",
    vip: str | None = None,
    metadata: Mapping[str, str] | None = None,
    lease_seconds: int = 90,
    renewal_seconds: int = 30,
    data_center: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An ``{"instance": ...}`` registration body as Eureka's Java client sends it."""
    vip = app.lower() if vip is None else vip
    return {
        "instance": {
            "instanceId": instance_id,
            "hostName": ip,
            "app": app.upper(),
            "ipAddr": ip,
            "status": status,
            "overriddenstatus": "UNKNOWN",
            "port": {"$": port or 0, "@enabled": "true" if port else "false"},
            "securePort": {
                "$": secure_port or 443,
                "@enabled": "true" if secure_port else "false",
            },
            "countryId": 1,
            "dataCenterInfo": dict(data_center or DEFAULT_DC),
            "leaseInfo": {
                "renewalIntervalInSecs": renewal_seconds,
                "durationInSecs": lease_seconds,
            },
            "metadata": dict(metadata or {}),
            "homePageUrl": f"http://{ip}:{port}/",
            "vipAddress": vip,
            "secureVipAddress": vip,
            "isCoordinatingDiscoveryServer": "false",
            "lastUpdatedTimestamp": str(int(time.time() * 1000)),
            "lastDirtyTimestamp": str(int(time.time() * 1000)),
        }
    }


class EurekaRest:
    """The client side of Eureka's REST API (what an application does), over aiohttp."""

    def __init__(self, eureka_url: str) -> None:
        self.base = eureka_url if eureka_url.endswith("/") else eureka_url + "/"
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> EurekaRest:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def _call(self, method: str, path: str, json: Any = None) -> int:
        assert self._session is not None, "use EurekaRest as an async context manager"
        async with self._session.request(method, self.base + path, json=json) as response:
            await response.read()
            return response.status

    async def register(self, doc: Mapping[str, Any]) -> int:
        """``POST apps/{app}``: 204 when registered."""
        return await self._call("POST", f"apps/{quote(doc['instance']['app'])}", json=doc)

    async def heartbeat(self, app: str, instance_id: str) -> int:
        """``PUT apps/{app}/{id}``: 200 when renewed, 404 when the server forgot the instance."""
        return await self._call("PUT", f"apps/{quote(app.upper())}/{quote(instance_id)}")

    async def set_status(self, app: str, instance_id: str, status: str) -> int:
        """``PUT apps/{app}/{id}/status?value=``: the operator's status override."""
        path = f"apps/{quote(app.upper())}/{quote(instance_id)}/status?value={quote(status)}"
        return await self._call("PUT", path)

    async def delete_override(self, app: str, instance_id: str) -> int:
        """``DELETE apps/{app}/{id}/status``: remove the override (the instance goes UP)."""
        path = f"apps/{quote(app.upper())}/{quote(instance_id)}/status?value=UP"
        return await self._call("DELETE", path)

    async def cancel(self, app: str, instance_id: str) -> int:
        """``DELETE apps/{app}/{id}``: deregister."""
        return await self._call("DELETE", f"apps/{quote(app.upper())}/{quote(instance_id)}")


@contextlib.asynccontextmanager
async def running_adapter(
    params: Mapping[str, Any],
    aggregate: AggregateRegistry | None = None,
    name: str = "eureka",
) -> AsyncIterator[tuple[AggregateRegistry, EurekaRegistry]]:
    """An aggregate with one running Eureka adapter; stopped (and its task awaited) on exit."""
    aggregate = aggregate or AggregateRegistry()
    adapter = create(AdapterContext(aggregate.add_member(name, "eureka"), params))
    task = asyncio.create_task(adapter.run(), name=f"eureka-adapter-{name}")
    try:
        yield aggregate, adapter
    finally:
        await adapter.stop()
        await asyncio.wait_for(task, 15)


async def wait_for(check: Callable[[], bool | Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll ``check`` every 50 ms until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
