"""PeerAuthentication through real Pilot, node agents and Envoy sidecars, with real traffic.

Hosts 127.0.92.x. A is a client with a sidecar (namespace ``default``); S (namespace ``secure``)
and P (namespace ``default``) each run an HTTP app behind their sidecar. The mesh config says
OFF; the config folder holds Istio's mesh-wide ``PERMISSIVE`` (root namespace ``istio-system``)
and ``STRICT`` for the namespace ``secure``. Asserted: A reaches both over mutual TLS (their apps
see A's SPIFFE ID); a plain client is refused by S only, and served by P; turning ``secure``
PERMISSIVE (a file edit, no restart) lets the plain client in there too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from integration.security_helpers import TRUST_DOMAIN, agent_config, http_echo
from meshfed.nodeagent.agent import NodeAgent
from meshfed.pilot.config.store import FileConfigStore
from meshfed.pilot.server import PilotServer
from meshfed.proxy import ProxySpec
from meshfed.proxy import bootstrap as pilot_bootstrap
from meshfed.registry.aggregate import AggregateRegistry
from meshfed.registry.model import Endpoint, Port, Protocol, Service, spiffe_id
from meshfed.security import mtls
from meshfed.security.ca import CertificateAuthority
from meshfed.security.service import CAServer, SigningService
from meshfed.security.storage import FileStorage
from meshfed.security.tokens import JoinTokenStore

pytestmark = pytest.mark.timeout(180)

A_IP, S_IP, P_IP = "127.0.92.2", "127.0.92.3", "127.0.92.4"
S_HOST, P_HOST = "web.secure.svc.cluster.local", "web.default.svc.cluster.local"
MESHED = {mtls.TLS_MODE_LABEL: mtls.TLS_MODE_MTLS, "app": "web"}
MESH_WIDE = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: PERMISSIVE}
"""
SECURE = """apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {{name: default, namespace: secure}}
spec:
  mtls: {{mode: {mode}}}
"""


@contextlib.asynccontextmanager
async def serve_pilot(
    aggregate: AggregateRegistry, folder: Path, policy: mtls.Policy
) -> AsyncIterator[PilotServer]:
    """Pilot on a free loopback port over ``aggregate``, its config watched in ``folder``."""
    store = FileConfigStore([folder])
    store.load()
    task = asyncio.create_task(store.run())
    server = PilotServer(
        aggregate, "127.0.0.1:0", 0.02, 0.2, config_stores=[store], mtls_policy=policy
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        store.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)


@pytest.fixture
async def pilot(tmp_path: Path) -> AsyncIterator[tuple[PilotServer, Path]]:
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "mesh.yaml").write_text(MESH_WIDE)
    (folder / "secure.yaml").write_text(SECURE.format(mode="STRICT"))
    aggregate = AggregateRegistry()
    member = aggregate.add_member("test")
    member.replace(
        [
            Service(S_HOST, namespace="secure", ports=[Port(80, "http", Protocol.HTTP)]),
            Service(P_HOST, namespace="default", ports=[Port(80, "http", Protocol.HTTP)]),
        ],
        {
            S_HOST: [Endpoint(S_IP, {"http": 9080}, MESHED, identity=_id("secure", "web"))],
            P_HOST: [Endpoint(P_IP, {"http": 9080}, MESHED, identity=_id("default", "web"))],
        },
    )
    member.mark_synced()
    async with serve_pilot(aggregate, folder, mtls.Policy(mtls.Mode.OFF)) as server:
        yield server, folder


def _id(namespace: str, sa: str) -> str:
    return spiffe_id(TRUST_DOMAIN, namespace, sa)


async def _agent(
    stack: AsyncExitStack,
    base: Path,
    ca: CAServer,
    tokens: JoinTokenStore,
    pilot: PilotServer,
    ip: str,
    namespace: str,
    account: str,
    app_ports: str = "",
) -> None:
    spec = ProxySpec(
        ip=ip,
        workload=f"{account}-{namespace}",
        namespace=namespace,
        identity=_id(namespace, account),
        app_ports=app_ports,
        pilot=f"127.0.0.1:{pilot.port}",
    )
    config = agent_config(
        base,
        ca,
        tokens,
        namespace,
        account,
        name=f"{account}-{namespace}",
        bootstrap=pilot_bootstrap(spec),
    )
    agent = NodeAgent(config)
    await agent.start()
    stack.push_async_callback(agent.stop)


async def _get(session: aiohttp.ClientSession, url: str, host: str = "") -> tuple[int, str]:
    headers = {"Host": host} if host else {}
    async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=5)) as r:
        return r.status, await r.text()


async def _eventually(
    session: aiohttp.ClientSession, url: str, host: str = "", timeout: float = 30.0
) -> str:
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            status, body = await _get(session, url, host)
            if status == 200:
                return body
            last = status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            last = exc
        await asyncio.sleep(0.2)
    raise AssertionError(f"no 200 from {url} (Host {host}) in {timeout}s; last: {last!r}")


async def _refused(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        await _get(session, url)
    except (TimeoutError, aiohttp.ClientError, OSError):
        return True
    return False


async def test_strict_namespace_refuses_plain_clients_permissive_elsewhere_serves_them(
    pilot: tuple[PilotServer, Path], tmp_path: Path
) -> None:
    server, folder = pilot
    ca = CertificateAuthority.load_or_create(FileStorage(tmp_path / "ca"), TRUST_DOMAIN)
    tokens = JoinTokenStore(tmp_path / "ca" / "tokens.json")
    ca_server = CAServer(SigningService(ca, tokens), "127.0.0.1:0", "127.0.0.1:0")
    await ca_server.start()
    with ExitStack() as apps:
        apps.enter_context(http_echo(S_IP, 8080))
        apps.enter_context(http_echo(P_IP, 8080))
        async with AsyncExitStack() as stack:
            stack.push_async_callback(ca_server.stop)
            for ip, ns, sa, ports in (
                (A_IP, "default", "client", ""),
                (S_IP, "secure", "web", "9080:8080"),
                (P_IP, "default", "web", "9080:8080"),
            ):
                await _agent(stack, tmp_path, ca_server, tokens, server, ip, ns, sa, ports)
            outbound = f"http://{A_IP}:15001/"
            async with aiohttp.ClientSession() as session:
                # The meshed client reaches both over mutual TLS.
                for host, ns in ((S_HOST, "secure"), (P_HOST, "default")):
                    xfcc = json.loads(await _eventually(session, outbound, host)).get(
                        "x-forwarded-client-cert", ""
                    )
                    assert f"URI={_id('default', 'client')}" in xfcc, (host, xfcc)
                    assert f"By={_id(ns, 'web')}" in xfcc, (host, xfcc)
                # A plain client: served in the PERMISSIVE namespace, refused in the STRICT one.
                body = await _eventually(session, f"http://{P_IP}:9080/")
                assert "x-forwarded-client-cert" not in json.loads(body)
                for _ in range(20):
                    assert await _refused(session, f"http://{S_IP}:9080/")
                    status, _ = await _get(session, f"http://{P_IP}:9080/")
                    assert status == 200
                # A live edit: secure becomes PERMISSIVE and lets the plain client in.
                (folder / "secure.yaml").write_text(SECURE.format(mode="PERMISSIVE"))
                body = await _eventually(session, f"http://{S_IP}:9080/")
                assert "x-forwarded-client-cert" not in json.loads(body)
                xfcc = json.loads(await _eventually(session, outbound, S_HOST)).get(
                    "x-forwarded-client-cert", ""
                )
                assert f"URI={_id('default', 'client')}" in xfcc
