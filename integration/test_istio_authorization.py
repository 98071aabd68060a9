"""AuthorizationPolicy through real Pilot, node agents and Envoy sidecars, with real traffic.

The mesh of :mod:`integration.test_istio_peer_authentication` (PERMISSIVE everywhere here), a
second meshed client I with another identity, and plain clients bound to two loopback
addresses. Policies on the ``secure`` workload ``app: web``: ALLOW ``GET /api/*`` from the
principal of A, and from the address block of one plain client; DENY ``/api/admin*`` to
everyone. Asserted, each over repeated requests: the allowed principal, method and path get
200; another principal, another method, another path, a plain client outside the block get
403; ``/api/admin`` gets 403 from the principal ALLOW lets in (DENY beats ALLOW); removing the
policies lets everyone in again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path

import aiohttp
import pytest

from integration.security_helpers import TRUST_DOMAIN, http_echo
from integration.test_istio_peer_authentication import (
    A_IP,
    MESH_WIDE,
    MESHED,
    S_HOST,
    S_IP,
    _agent,
    _id,
    serve_pilot,
)
from meshfed.pilot.server import PilotServer
from meshfed.registry.aggregate import AggregateRegistry
from meshfed.registry.model import Endpoint, Port, Protocol, Service
from meshfed.security import mtls
from meshfed.security.ca import CertificateAuthority
from meshfed.security.service import CAServer, SigningService
from meshfed.security.storage import FileStorage
from meshfed.security.tokens import JoinTokenStore

pytestmark = pytest.mark.timeout(180)

I_IP = "127.0.92.5"  # a meshed client with another identity
PLAIN_IN, PLAIN_OUT = "127.0.92.9", "127.0.92.8"  # plain clients inside / outside the block
POLICIES = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-api, namespace: secure}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]
    to: [{operation: {methods: [GET], paths: ["/api/*"]}}]
  - from: [{source: {ipBlocks: [127.0.92.9/32]}}]
    to: [{operation: {methods: [GET]}}]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: secure}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/api/admin*"]}}]}]
"""
N = 20


@pytest.fixture
async def pilot(tmp_path: Path) -> AsyncIterator[tuple[PilotServer, Path]]:
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "mesh.yaml").write_text(MESH_WIDE)
    (folder / "authz.yaml").write_text(POLICIES)
    aggregate = AggregateRegistry()
    member = aggregate.add_member("test")
    member.replace(
        [Service(S_HOST, namespace="secure", ports=[Port(80, "http", Protocol.HTTP)])],
        {S_HOST: [Endpoint(S_IP, {"http": 9080}, MESHED, identity=_id("secure", "web"))]},
    )
    member.mark_synced()
    async with serve_pilot(aggregate, folder, mtls.Policy()) as server:
        yield server, folder


async def _status(
    session: aiohttp.ClientSession, url: str, host: str = "", method: str = "GET"
) -> int:
    headers = {"Host": host} if host else {}
    async with session.request(
        method, url, headers=headers, timeout=aiohttp.ClientTimeout(total=5)
    ) as r:
        await r.read()
        return r.status


async def _until(
    session: aiohttp.ClientSession,
    url: str,
    want: int,
    host: str = "",
    method: str = "GET",
    timeout: float = 30.0,
) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    last: object = None
    while asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(TimeoutError, aiohttp.ClientError, OSError):
            last = await _status(session, url, host, method)
            if last == want:
                return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{method} {url} (Host {host}) never gave {want}; last: {last!r}")


async def _statuses(
    session: aiohttp.ClientSession, url: str, host: str = "", method: str = "GET"
) -> set[int]:
    return {await _status(session, url, host, method) for _ in range(N)}


async def test_allowed_and_denied_principals_paths_methods_and_deny_beats_allow(
    pilot: tuple[PilotServer, Path], tmp_path: Path
) -> None:
    server, folder = pilot
    ca = CertificateAuthority.load_or_create(FileStorage(tmp_path / "ca"), TRUST_DOMAIN)
    tokens = JoinTokenStore(tmp_path / "ca" / "tokens.json")
    ca_server = CAServer(SigningService(ca, tokens), "127.0.0.1:0", "127.0.0.1:0")
    await ca_server.start()
    with ExitStack() as apps:
        apps.enter_context(http_echo(S_IP, 8080))
        async with AsyncExitStack() as stack:
            stack.push_async_callback(ca_server.stop)
            for ip, ns, sa, ports in (
                (A_IP, "default", "client", ""),
                (I_IP, "default", "intruder", ""),
                (S_IP, "secure", "web", "9080:8080"),
            ):
                await _agent(stack, tmp_path, ca_server, tokens, server, ip, ns, sa, ports)
            a, i = f"http://{A_IP}:15001", f"http://{I_IP}:15001"
            inside = aiohttp.TCPConnector(local_addr=(PLAIN_IN, 0))
            outside = aiohttp.TCPConnector(local_addr=(PLAIN_OUT, 0))
            async with (
                aiohttp.ClientSession() as session,
                aiohttp.ClientSession(connector=inside) as plain_in,
                aiohttp.ClientSession(connector=outside) as plain_out,
            ):
                # The policies are in force once A's allowed request is served and its POST
                # is refused by RBAC (the app itself answers 501 to a POST).
                await _until(session, f"{a}/api/books", 200, S_HOST)
                await _until(session, f"{a}/api/books", 403, S_HOST, "POST")
                await _until(session, f"{i}/api/books", 403, S_HOST)
                # Allowed principal, method and path.
                assert await _statuses(session, f"{a}/api/books", S_HOST) == {200}
                # Denied: another method, another path, another principal.
                assert await _statuses(session, f"{a}/api/books", S_HOST, "POST") == {403}
                assert await _statuses(session, f"{a}/other", S_HOST) == {403}
                assert await _statuses(session, f"{i}/api/books", S_HOST) == {403}
                # DENY beats ALLOW: the principal ALLOW lets in is refused the admin path.
                assert await _statuses(session, f"{a}/api/admin/users", S_HOST) == {403}
                # Plain clients (no principal): allowed only from the address block.
                direct = f"http://{S_IP}:9080"
                assert await _statuses(plain_in, f"{direct}/anything") == {200}
                assert await _statuses(plain_out, f"{direct}/anything") == {403}
                assert await _statuses(plain_in, f"{direct}/api/admin") == {403}
                # Without policies, everyone is let in again (a live edit, no restart). A
                # connection opened before the edit keeps the old listener until Envoy drains
                # it, so each check waits for the new one first.
                (folder / "authz.yaml").unlink()
                await _until(session, f"{i}/api/books", 200, S_HOST)
                await _until(session, f"{a}/api/books", 501, S_HOST, "POST")
                await _until(plain_out, f"{direct}/api/admin", 200)
                assert await _statuses(session, f"{i}/api/admin", S_HOST) == {200}
                assert await _statuses(session, f"{a}/api/books", S_HOST, "POST") == {501}
                assert await _statuses(plain_out, f"{direct}/api/admin") == {200}
