"""Mutual TLS configured by Pilot: real Pilot, node agents with Pilot-driven sidecars, traffic.

Pilot builds every sidecar's config from the registry; its cache calls the :mod:`security.mtls`
hook, which turns on mutual TLS where the registry says a sidecar terminates it.

Hosts 127.0.91.x: A is a client with a sidecar only; B (HTTP) and T (TCP) run an app behind
their sidecar's inbound listener; L is a legacy HTTP server without a sidecar. Mesh-wide mode
STRICT. Asserted: A reaches B over mutual TLS and B's app sees A's SPIFFE ID; A reaches T's TCP
app over mutual TLS; A reaches L in plain text; a client without a sidecar is refused by B.
M is a service half migrated to the mesh (B's sidecar and the legacy L behind one name): A
reaches both of its endpoints, B over mutual TLS and L in plain text, with no failed request.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from integration.security_helpers import TRUST_DOMAIN, agent_config, http_echo, tcp_echo
from meshfed import envoy_config
from meshfed.nodeagent.agent import NodeAgent
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

A_IP, B_IP, T_IP, L_IP = "127.0.91.2", "127.0.91.3", "127.0.91.4", "127.0.91.5"
B_HOST, T_HOST, L_HOST, M_HOST = (
    "b.default.svc.cluster.local",
    "t.default.svc.cluster.local",
    "legacy.default.svc.cluster.local",
    "mixed.default.svc.cluster.local",
)
MESHED = {mtls.TLS_MODE_LABEL: mtls.TLS_MODE_MTLS}


def _id(sa: str) -> str:
    return spiffe_id(TRUST_DOMAIN, "default", sa)


@pytest.fixture
async def pilot() -> AsyncIterator[PilotServer]:
    aggregate = AggregateRegistry()
    member = aggregate.add_member("test")
    member.replace(
        [
            Service(B_HOST, ports=[Port(80, "http", Protocol.HTTP)]),
            Service(T_HOST, ports=[Port(7379, "tcp", Protocol.TCP)]),
            Service(L_HOST, ports=[Port(80, "http", Protocol.HTTP)]),
            Service(M_HOST, ports=[Port(80, "http", Protocol.HTTP)]),
        ],
        {
            B_HOST: [Endpoint(B_IP, {"http": 9080}, MESHED, identity=_id("b"))],
            T_HOST: [Endpoint(T_IP, {"tcp": 7379}, MESHED, identity=_id("t"))],
            # A known identity (service account) but no sidecar: no tlsMode label.
            L_HOST: [Endpoint(L_IP, {"http": 9080}, identity=_id("legacy"))],
            M_HOST: [
                Endpoint(B_IP, {"http": 9080}, MESHED, identity=_id("b")),
                Endpoint(L_IP, {"http": 9080}, identity=_id("legacy")),
            ],
        },
    )
    member.mark_synced()
    server = PilotServer(
        aggregate, "127.0.0.1:0", 0.02, 0.2, mtls_policy=mtls.Policy(mtls.Mode.STRICT)
    )
    await server.start()
    yield server
    await server.stop()


async def _agent(
    stack: AsyncExitStack,
    base: Path,
    ca: CAServer,
    tokens: JoinTokenStore,
    pilot: PilotServer,
    ip: str,
    account: str,
    app_ports: str = "",
) -> NodeAgent:
    spec = ProxySpec(
        ip=ip,
        workload=account,
        namespace="default",
        identity=_id(account),
        app_ports=app_ports,
        pilot=f"127.0.0.1:{pilot.port}",
    )
    config = agent_config(base, ca, tokens, "default", account, bootstrap=pilot_bootstrap(spec))
    agent = NodeAgent(config)
    await agent.start()
    stack.push_async_callback(agent.stop)
    return agent


async def _eventually_get(
    session: aiohttp.ClientSession, url: str, host: str, timeout: float = 30.0
) -> tuple[int, str]:
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            async with session.get(
                url, headers={"Host": host}, timeout=aiohttp.ClientTimeout(total=5)
            ) as resp:
                last = (resp.status, await resp.text())
                if resp.status == 200:
                    return last
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            last = exc
        await asyncio.sleep(0.2)
    raise AssertionError(f"no 200 from {url} (Host {host}) in {timeout}s; last: {last!r}")


async def _eventually_echo(host: str, port: int, payload: bytes, timeout: float = 30.0) -> bytes:
    deadline = asyncio.get_running_loop().time() + timeout
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
            try:
                writer.write(payload)
                await writer.drain()
                return await asyncio.wait_for(reader.readexactly(len(payload)), 5)
            finally:
                writer.close()
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            last = exc
        await asyncio.sleep(0.2)
    raise AssertionError(f"no echo from {host}:{port} in {timeout}s; last: {last!r}")


async def test_pilot_configured_mtls_http_tcp_and_plain(
    pilot: PilotServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshfed.nodeagent")
    ca = CertificateAuthority.load_or_create(FileStorage(tmp_path / "ca"), TRUST_DOMAIN)
    tokens = JoinTokenStore(tmp_path / "ca" / "tokens.json")
    ca_server = CAServer(SigningService(ca, tokens), "127.0.0.1:0", "127.0.0.1:0")
    await ca_server.start()
    with ExitStack() as apps:
        apps.enter_context(http_echo(B_IP, 8080))
        apps.enter_context(http_echo(L_IP, 9080))
        apps.enter_context(tcp_echo(T_IP, 7380))
        async with AsyncExitStack() as stack:
            stack.push_async_callback(ca_server.stop)
            await _agent(stack, tmp_path, ca_server, tokens, pilot, A_IP, "a")
            await _agent(stack, tmp_path, ca_server, tokens, pilot, B_IP, "b", "9080:8080")
            await _agent(stack, tmp_path, ca_server, tokens, pilot, T_IP, "t", "7379:7380")
            outbound = f"http://{A_IP}:15001/"
            async with aiohttp.ClientSession() as session:
                # HTTP over mutual TLS; B's app sees A's verified identity.
                _, body = await _eventually_get(session, outbound, B_HOST)
                xfcc = json.loads(body).get("x-forwarded-client-cert", "")
                assert f"URI={_id('a')}" in xfcc and f"By={_id('b')}" in xfcc

                # proxy-config secret's table, cut from A's real config dump: its SDS
                # certificate chain and trust bundle, active, valid today.
                async with session.get(f"http://{A_IP}:15000/config_dump") as resp:
                    secrets = envoy_config.secret_rows(await resp.json(content_type=None))
                # the node agent's log names the identity as a field (--log-format json)
                obtained = [getattr(r, "identity", "") for r in caplog.records]
                assert _id("a") in obtained, caplog.records
                kinds = {(r[1], r[2], r[3]) for r in secrets}
                assert {("Cert Chain", "ACTIVE", "true"), ("CA", "ACTIVE", "true")} <= kinds, (
                    secrets
                )

                # A meshed client reaches a server without a sidecar, in plain text.
                _, body = await _eventually_get(session, outbound, L_HOST)
                assert "x-forwarded-client-cert" not in json.loads(body)

                # Half migrated: each endpoint gets the transport it can answer, per request.
                await _eventually_get(session, outbound, M_HOST)  # A's config has M
                identities = []
                for _ in range(20):  # each request once: a refused handshake would show
                    async with session.get(
                        outbound, headers={"Host": M_HOST}, timeout=aiohttp.ClientTimeout(total=5)
                    ) as resp:
                        assert resp.status == 200, (resp.status, await resp.text())
                        body = await resp.text()
                    xfcc = json.loads(body).get("x-forwarded-client-cert", "")
                    identities.append("mtls" if f"By={_id('b')}" in xfcc else xfcc or "plain")
                assert set(identities) == {"mtls", "plain"}, identities

                # STRICT: a client without a sidecar (plain HTTP to B's inbound) is refused.
                with pytest.raises((aiohttp.ClientError, OSError, asyncio.TimeoutError)):
                    async with session.get(
                        f"http://{B_IP}:9080/", timeout=aiohttp.ClientTimeout(total=5)
                    ) as resp:
                        raise AssertionError(f"plain client served: {resp.status}")

            # TCP over mutual TLS: A's local port for t -> T's sidecar -> T's app. T's sidecar
            # may still be receiving its config: retry (bounded) until the echo comes back.
            assert await _eventually_echo(A_IP, 7379, b"meshfed-tcp") == b"meshfed-tcp"
            # T's sidecar terminated TLS from A's identity (its listener's SSL stats).
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://{T_IP}:15000/stats?filter=ssl.handshake$") as resp,
            ):
                stats = await resp.text()
            assert any(
                line.startswith("listener.") and int(line.rsplit(":", 1)[1]) > 0
                for line in stats.splitlines()
            ), stats
