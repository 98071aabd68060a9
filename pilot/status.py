"""The operator view over HTTP: per-proxy sync state and what Pilot last sent each proxy.

Routes (added to the hub's monitoring port):

- ``GET /debug/syncz[?proxy=ID]``: every connected proxy with, per type, SYNCED / NOT SENT /
  STALE / NACKED, versions, the NACK error, and whether it has ACKed a full config (``ready``).
- ``GET /debug/config_dump?proxy=ID[&type=cluster|listener|route|endpoint]``: the resources
  Pilot last sent that proxy, as JSON (what ``meshfed proxy-config`` prints).

These answer from Pilot's own bookkeeping: they show what was sent and acknowledged, which is
what an operator debugging a NACK or a stale proxy needs; Envoy's admin ``/config_dump`` shows
the other side.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from google.protobuf import json_format

from meshfed.pilot import xds_types as T
from meshfed.pilot.ads import DiscoveryServer


def syncz(discovery: DiscoveryServer | None, proxy: str | None = None) -> dict:
    if discovery is None:
        return {"proxies": []}
    conns = sorted(discovery.connections.values(), key=lambda c: (c.node.id, c.connected_at))
    if proxy:
        found = discovery.find(proxy)
        conns = [found] if found is not None else []
    return {"proxies": [c.describe() for c in conns]}


def config_dump(discovery: DiscoveryServer, proxy: str, kind: str | None = None) -> dict | None:
    """What was last sent to ``proxy``, by type (or one type), or None if not connected."""
    conn = discovery.find(proxy)
    if conn is None:
        return None
    types = [T.BY_KIND[kind]] if kind else list(T.PUSH_ORDER)
    configs = {}
    for type_url in types:
        sent = conn.sent.get(type_url, {})
        configs[T.short(type_url)] = [
            {
                "name": name,
                "version": res.version,
                "resource": json_format.MessageToDict(res.body),
            }
            for name, res in sorted(sent.items())
        ]
    return {"proxy": conn.node.id, "connection": conn.id, "configs": configs}


def routes(get: Callable[[], DiscoveryServer | None]) -> list[web.RouteDef]:
    """aiohttp routes serving the views above; ``get`` returns the live discovery server."""

    async def handle_syncz(request: web.Request) -> web.Response:
        return web.json_response(syncz(get(), request.query.get("proxy")))

    async def handle_config_dump(request: web.Request) -> web.Response:
        proxy = request.query.get("proxy", "")
        kind = request.query.get("type") or None
        if kind is not None and kind not in T.BY_KIND:
            return web.json_response(
                {"error": f"unknown type {kind!r}; expected cluster, listener, route or endpoint"},
                status=400,
            )
        if not proxy:
            return web.json_response({"error": "missing ?proxy=ID"}, status=400)
        discovery = get()
        dump = config_dump(discovery, proxy, kind) if discovery is not None else None
        if dump is None:
            return web.json_response({"error": f"proxy {proxy!r} is not connected"}, status=404)
        return web.json_response(dump)

    return [
        web.get("/debug/syncz", handle_syncz),
        web.get("/debug/config_dump", handle_config_dump),
    ]
