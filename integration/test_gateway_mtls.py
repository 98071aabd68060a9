"""The ingress gateway as a mesh client under STRICT mutual TLS, with real peers throughout.

A real CA signs; a node agent per identity writes its certificate as files Envoy watches; Pilot
runs with mesh-wide STRICT mTLS. The backend ``web`` is an app behind a Pilot-driven sidecar
started by its node agent (so its endpoint is marked as terminating mTLS). Two gateways are
started with the real CLI, ``meshfed proxy --gateway``:

- GW with ``--secrets-dir`` (the ``ingress`` identity's agent): client -> gateway (plain HTTP,
  and HTTPS terminated with a certificate from a secret folder) -> mutual TLS -> web's sidecar
  -> app. The app sees the gateway's SPIFFE ID in ``x-forwarded-client-cert`` (set by web's
  sidecar; a header the client forged is not what arrives).
- GW2 without SDS, in the same mesh: Pilot gives it plain clusters and reports the problem; the
  STRICT sidecar refuses it, so the client gets 503 from the gateway; the CLI warned at start.

Hosts: 127.0.110.x.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from integration.routing_helpers import RoutingMesh, VersionBackend, https_get, make_tls_pair
from integration.security_helpers import TRUST_DOMAIN, agent_config
from meshfed.nodeagent.agent import NodeAgent
from meshfed.pilot.translate.traffic import TrafficOptions
from meshfed.proxy import ProxySpec
from meshfed.proxy import bootstrap as pilot_bootstrap
from meshfed.registry.model import Endpoint, Port, Protocol, Service, spiffe_id
from meshfed.security import mtls
from meshfed.security.ca import CertificateAuthority
from meshfed.security.service import CAServer, SigningService
from meshfed.security.storage import FileStorage
from meshfed.security.tokens import JoinTokenStore

pytestmark = pytest.mark.timeout(240)

GW_IP, GW2_IP, WEB_IP = "127.0.110.2", "127.0.110.3", "127.0.110.11"
HTTP_PORT, TLS_PORT = 8080, 8443
WEB = "web.default.svc.cluster.local"
MESHED = {mtls.TLS_MODE_LABEL: mtls.TLS_MODE_MTLS}
GATEWAY = """apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: front, namespace: default}
spec:
  ingressClassName: meshfed
  tls: [{hosts: [web.example.com], secretName: front-tls}]
  rules:
  - host: web.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
"""


def _id(account: str) -> str:
    return spiffe_id(TRUST_DOMAIN, "default", account)


def xfcc(request: dict) -> str:
    """The x-forwarded-client-cert header a VersionBackend recorded (any spelling)."""
    found = [v for k, v in request["headers"].items() if k.lower() == "x-forwarded-client-cert"]
    return found[0] if found else ""


class CliProxy:
    """``meshfed proxy`` as a real subprocess (its own session), stopped by its own PID."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args, self.log = args, log
        self.proc: asyncio.subprocess.Process | None = None
        self.stderr = b""

    async def start(self, timeout: float = 60.0) -> str:
        """Start; return the ``ready:`` line once Pilot says the config was ACKed."""
        meshfed = Path(sys.executable).with_name("meshfed")
        self.proc = await asyncio.create_subprocess_exec(
            str(meshfed),
            "proxy",
            *self.args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        lines = []
        async with asyncio.timeout(timeout):
            while True:
                line = (await self.proc.stdout.readline()).decode()
                if not line:
                    raise AssertionError(f"meshfed proxy exited: {lines} {await self._err()}")
                lines.append(line)
                if line.startswith("ready:"):
                    return line

    async def _err(self) -> str:
        assert self.proc is not None and self.proc.stderr is not None
        with contextlib.suppress(TimeoutError):
            self.stderr += await asyncio.wait_for(self.proc.stderr.read(), 5)
        return self.stderr.decode(errors="replace")

    async def stop(self) -> str:
        """SIGTERM (the CLI stops its Envoy); return what it wrote to stderr."""
        if self.proc is None:
            return ""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        return await self._err()


@contextlib.asynccontextmanager
async def strict_mesh(tmp_path: Path) -> AsyncIterator[tuple[RoutingMesh, CAServer, Path]]:
    certs = tmp_path / "certs"
    mesh = RoutingMesh(tmp_path / "rules", TrafficOptions(gateway_certs_dir=str(certs)))
    mesh.pilot.mtls_policy = mtls.Policy(mtls.Mode.STRICT)
    ca = CertificateAuthority.load_or_create(FileStorage(tmp_path / "ca"), TRUST_DOMAIN)
    tokens = JoinTokenStore(tmp_path / "ca" / "tokens.json")
    ca_server = CAServer(SigningService(ca, tokens), "127.0.0.1:0", "127.0.0.1:0")
    await ca_server.start()
    try:
        await mesh.start()
        yield mesh, ca_server, certs
    finally:
        await mesh.stop()
        await ca_server.stop()


async def get(
    session: aiohttp.ClientSession, url: str, host: str, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    async with session.get(
        url, headers={"Host": host, **(headers or {})}, timeout=aiohttp.ClientTimeout(total=10)
    ) as resp:
        return resp.status, await resp.text()


async def eventually_ok(session: aiohttp.ClientSession, url: str, host: str) -> str:
    """The first 200's body; the backend's sidecar may still be taking its config."""
    last: object = None
    for _ in range(100):
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
            last = await get(session, url, host)
            if last[0] == 200:
                return last[1]
        await asyncio.sleep(0.2)
    raise AssertionError(f"no 200 from {url} (Host {host}); last: {last!r}")


async def test_gateway_reaches_strict_backend_with_its_own_identity_only_with_sds(
    tmp_path: Path,
) -> None:
    async with strict_mesh(tmp_path) as (mesh, ca, certs), contextlib.AsyncExitStack() as stack:
        client_ca, _, _ = make_tls_pair(certs / "front-tls", ["web.example.com"])
        app = VersionBackend("web", WEB_IP, 8080)  # the app behind web's sidecar
        await app.start()
        stack.push_async_callback(app.stop)
        mesh.member.replace(
            [Service(WEB, ports=(Port(80, "http", Protocol.HTTP),))],
            {WEB: [Endpoint(WEB_IP, {"http": 9080}, MESHED, identity=_id("web"))]},
        )
        await mesh.apply("front", GATEWAY)
        pilot = f"127.0.0.1:{mesh.pilot.port}"
        # web's node agent runs its Pilot-driven sidecar: inbound 9080 -> app 8080, STRICT.
        web_spec = ProxySpec(
            ip=WEB_IP, workload="web", identity=_id("web"), app_ports="9080:8080", pilot=pilot
        )
        web_agent = NodeAgent(
            agent_config(
                tmp_path,
                ca,
                ca.service.tokens,
                "default",
                "web",
                bootstrap=pilot_bootstrap(web_spec),
            )
        )
        await web_agent.start()
        stack.push_async_callback(web_agent.stop)
        # The gateway's node agent only writes its secret files; the gateway is
        # `meshfed proxy --gateway`.
        gw_agent = NodeAgent(agent_config(tmp_path, ca, ca.service.tokens, "default", "ingress"))
        await gw_agent.start()
        stack.push_async_callback(gw_agent.stop)
        common = ["--gateway", "--gateway-port", str(HTTP_PORT), "--pilot", pilot]
        common += ["--hub", mesh.hub_url, "--status-port", "0", "--workload", "ingress"]
        sds = str(gw_agent.config.secrets_dir)
        gw = CliProxy([*common, "--ip", GW_IP, "--secrets-dir", sds], tmp_path / "gw.log")
        stack.push_async_callback(gw.stop)
        ready = await gw.start()
        assert ready.startswith("ready: router~127.0.110.2~ingress.default")

        async with aiohttp.ClientSession() as session:
            # Plain HTTP to the gateway, mutual TLS from the gateway to web's sidecar.
            base = f"http://{GW_IP}:{HTTP_PORT}"
            assert await eventually_ok(session, base + "/plain", "web.example.com") == "web"
            forged = {"x-forwarded-client-cert": f"URI={_id('attacker')}"}
            status, body = await get(session, base + "/forged", "web.example.com", forged)
            assert (status, body) == (200, "web")
            seen = {r["path"]: xfcc(r) for r in app.requests}
            for path in ("/plain", "/forged"):
                assert f"URI={_id('ingress')}" in seen[path], seen
                assert f"By={_id('web')}" in seen[path], seen
                assert "attacker" not in seen[path]
        # HTTPS terminated at the gateway (certificate from the secret folder), then mTLS.
        line, _ = await https_get(GW_IP, TLS_PORT, "web.example.com", client_ca)
        assert line == "web"
        assert app.requests[-1]["path"] == "/" and f"URI={_id('ingress')}" in xfcc(app.requests[-1])
        # The gateway's own upstream TLS handshakes (Envoy's stats on its cluster to web).
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{GW_IP}:15000/stats?filter=ssl.handshake$") as resp,
        ):
            stats = await resp.text()
        handshakes = [
            int(line.rsplit(":", 1)[1])
            for line in stats.splitlines()
            if line.startswith(f"cluster.outbound|80||{WEB}.ssl.handshake")
        ]
        assert handshakes and handshakes[0] > 0, stats
        assert not mesh.syncz(ready.split()[1])["problems"]

        # The same gateway without SDS: plain clusters, a problem, and STRICT refuses it.
        served = len(app.requests)
        mesh_config = tmp_path / "mesh.yaml"
        mesh_config.write_text(
            "apiVersion: meshfed.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\n"
            "spec: {pilot: {mtls: {mode: STRICT}}}\n"
        )
        gw2 = CliProxy(
            [*common, "--ip", GW2_IP, "--config", str(mesh_config)], tmp_path / "gw2.log"
        )
        stack.push_async_callback(gw2.stop)
        ready2 = await gw2.start()
        node2 = ready2.split()[1]
        (problem,) = mesh.syncz(node2)["problems"]
        assert "no SDS source" in problem and f"outbound|80||{WEB}" in problem
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                status, body = await get(
                    session, f"http://{GW2_IP}:{HTTP_PORT}/", "web.example.com"
                )
                # The route matched; the upstream connection is what failed (TLS required).
                assert status == 503 and "upstream connect error" in body, body
        assert len(app.requests) == served  # nothing reached the app
        stderr = await gw2.stop()
        assert "no --secrets-dir" in stderr and "STRICT services refuse it" in stderr
