"""AuthorizationPolicy on TCP ports and at the ingress gateway, through real Pilot and Envoy.

TCP (hosts 127.0.150.x): the mesh of :mod:`integration.test_istio_authorization` (PERMISSIVE
mutual TLS) with a TCP echo app behind the ``secure`` workload ``app: db``, meshed clients A
and I with their own identities, plain clients bound to three loopback addresses. ALLOW: A's
principal; I's principal *with* ``methods: [GET]`` (an HTTP-only field: on TCP the rule never
matches); the block 127.0.150.8/31. DENY: 127.0.150.8. Asserted, on fresh connections: A's
and .9's bytes are echoed; I's, .8's (DENY beats ALLOW) and .7's connections are closed with
no byte echoed; a DENY of only ``methods: [GET]`` closes every connection (HTTP-only parts
dropped); a CUSTOM policy on this sidecar without a Mixer client closes the connections it
matches, serves the rest and is named in proxy-status; without policies everyone is echoed again.

Gateway (hosts 127.0.151.x): a real gateway Envoy (no labels, so ``istio: ingressgateway``)
routing web.example.com to a backend; policies selecting ``istio: ingressgateway`` allow the
client address .40 (``ipBlocks``) and .41 (``remoteIpBlocks``) and deny ``/admin*``. Asserted:
.40 and .41 get 200; .42 gets 403, also when it claims .41 in X-Forwarded-For; ``/admin`` gets
403 from an allowed address. A CUSTOM policy selecting the gateway (127.0.152.x, the hub with
real Mixer and a ``denier`` on web, the gateway's node-local client): ``/admin`` is refused by
Mixer with its message, one Check each; ``/public`` is served without a Check; Mixer allowing
gives 200.

CUSTOM on TCP (127.0.153.x, the same hub, db's sidecar with its Mixer client, a Mixer rule
denying db to client): client's connections, matched, are closed with one Check each; api's,
not matched, are echoed with none; matching everything, api is checked and echoed. With the
data path on, every connection has exactly one Check: client's from the CUSTOM filter (Envoy's
``custom_tcp_5432`` counters), api's from the data path's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path

import aiohttp
import pytest

from integration.mixer_datapath_helpers import DENY_WEB, call, datapath_mesh, eventually, workload
from integration.mixer_datapath_helpers import WEB_HOST as DENIED_HOST
from integration.routing_helpers import routing_mesh
from integration.security_helpers import TRUST_DOMAIN, tcp_echo
from integration.test_istio_peer_authentication import MESH_WIDE, MESHED, _agent, _id, serve_pilot
from meshfed.mixer.settings import DataPathSettings
from meshfed.pilot.server import PilotServer
from meshfed.pilot.status import syncz
from meshfed.proxy import EnvoyProcess, ProxySpec, wait_ready
from meshfed.registry.aggregate import AggregateRegistry
from meshfed.registry.model import Endpoint, Port, Protocol, Service
from meshfed.security import mtls
from meshfed.security.ca import CertificateAuthority
from meshfed.security.service import CAServer, SigningService
from meshfed.security.storage import FileStorage
from meshfed.security.tokens import JoinTokenStore

pytestmark = pytest.mark.timeout(240)

A_IP, I_IP, T_IP = "127.0.150.2", "127.0.150.5", "127.0.150.3"
PLAIN_IN, PLAIN_DENIED, PLAIN_OUT = "127.0.150.9", "127.0.150.8", "127.0.150.7"
T_HOST, T_PORT, T_APP = "db.secure.svc.cluster.local", 7379, 17379
DB_LABELS = {**MESHED, "app": "db"}
TCP_POLICIES = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db-clients, namespace: secure}
spec:
  selector: {matchLabels: {app: db}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]
  - from: [{source: {principals: [cluster.local/ns/default/sa/intruder]}}]
    to: [{operation: {methods: [GET]}}]
  - from: [{source: {ipBlocks: [127.0.150.8/31]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-eight, namespace: secure}
spec:
  selector: {matchLabels: {app: db}}
  action: DENY
  rules: [{from: [{source: {ipBlocks: [127.0.150.8]}}]}]
"""
DENY_GET = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-get, namespace: secure}
spec:
  selector: {matchLabels: {app: db}}
  action: DENY
  rules: [{to: [{operation: {methods: [GET]}}]}]
"""
CUSTOM_A = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: secure}
spec:
  selector: {matchLabels: {app: db}}
  action: CUSTOM
  provider: {name: mixer}
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]}]
"""
N = 10


def problems(server: PilotServer, ip: str) -> list[str]:
    """What proxy-status shows for the proxy at ``ip``."""
    entries = [p for p in syncz(server.discovery)["proxies"] if f"~{ip}~" in p["proxy"]]
    return [problem for entry in entries for problem in entry.get("problems", [])]


async def echo(local: str, host: str, port: int, payload: bytes) -> bytes:
    """Send ``payload`` from the address ``local``; what came back before the connection
    closed or 3 s passed (b"" for a refused connection)."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, local_addr=(local, 0)), 5
        )
    except OSError:
        return b""
    got = b""
    try:
        writer.write(payload)
        await writer.drain()
        async with asyncio.timeout(3):
            while len(got) < len(payload):
                chunk = await reader.read(65536)
                if not chunk:
                    break
                got += chunk
    except (OSError, TimeoutError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return got


async def until(local: str, host: str, port: int, echoed: bool, timeout: float = 40.0) -> None:
    payload = f"from {local}".encode()
    deadline = asyncio.get_running_loop().time() + timeout
    last = b""
    while asyncio.get_running_loop().time() < deadline:
        last = await echo(local, host, port, payload)
        if (last == payload) is echoed:
            return
        await asyncio.sleep(0.3)
    raise AssertionError(
        f"{local} -> {host}:{port} never {'echoed' if echoed else 'closed'}: {last!r}"
    )


async def echoes(local: str, host: str, port: int) -> set[bool]:
    payload = f"from {local}".encode()
    return {await echo(local, host, port, payload) == payload for _ in range(N)}


@pytest.fixture
async def tcp_pilot(tmp_path: Path) -> AsyncIterator[tuple[PilotServer, Path]]:
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "mesh.yaml").write_text(MESH_WIDE)
    (folder / "authz.yaml").write_text(TCP_POLICIES)
    aggregate = AggregateRegistry()
    member = aggregate.add_member("test")
    member.replace(
        [Service(T_HOST, namespace="secure", ports=[Port(T_PORT, "tcp", Protocol.TCP)])],
        {T_HOST: [Endpoint(T_IP, {"tcp": T_PORT}, DB_LABELS, identity=_id("secure", "db"))]},
    )
    member.mark_synced()
    async with serve_pilot(aggregate, folder, mtls.Policy()) as server:
        yield server, folder


async def test_tcp_principals_and_addresses_deny_beats_allow_and_http_only_fields(
    tcp_pilot: tuple[PilotServer, Path], tmp_path: Path
) -> None:
    server, folder = tcp_pilot
    ca = CertificateAuthority.load_or_create(FileStorage(tmp_path / "ca"), TRUST_DOMAIN)
    tokens = JoinTokenStore(tmp_path / "ca" / "tokens.json")
    ca_server = CAServer(SigningService(ca, tokens), "127.0.0.1:0", "127.0.0.1:0")
    await ca_server.start()
    with ExitStack() as apps:
        apps.enter_context(tcp_echo(T_IP, T_APP))
        async with AsyncExitStack() as stack:
            stack.push_async_callback(ca_server.stop)
            for ip, ns, sa, ports in (
                (A_IP, "default", "client", ""),
                (I_IP, "default", "intruder", ""),
                (T_IP, "secure", "db", f"{T_PORT}:{T_APP}"),
            ):
                await _agent(stack, tmp_path, ca_server, tokens, server, ip, ns, sa, ports)
            # In force once A (over mutual TLS through its sidecar) is echoed and I is not.
            await until(A_IP, A_IP, T_PORT, echoed=True)
            await until(I_IP, I_IP, T_PORT, echoed=False)
            assert await echoes(A_IP, A_IP, T_PORT) == {True}
            # I's only rule names a method: on TCP it never matches, so I is refused.
            assert await echoes(I_IP, I_IP, T_PORT) == {False}
            # Plain clients straight to the workload's port (PERMISSIVE), by address.
            assert await echoes(PLAIN_IN, T_IP, T_PORT) == {True}
            assert await echoes(PLAIN_DENIED, T_IP, T_PORT) == {False}  # DENY beats ALLOW
            assert await echoes(PLAIN_OUT, T_IP, T_PORT) == {False}
            # A DENY naming only a method refuses every connection (its HTTP part dropped).
            (folder / "authz.yaml").write_text(DENY_GET)
            await until(A_IP, A_IP, T_PORT, echoed=False)
            await until(PLAIN_IN, T_IP, T_PORT, echoed=False)
            assert await echoes(A_IP, A_IP, T_PORT) == {False}
            assert await echoes(PLAIN_OUT, T_IP, T_PORT) == {False}
            # CUSTOM on a sidecar without a node-local Mixer client: what it matches is
            # refused (fail closed), the rest served, and proxy-status says why.
            (folder / "authz.yaml").write_text(CUSTOM_A)
            await until(PLAIN_IN, T_IP, T_PORT, echoed=True)
            assert await echoes(A_IP, A_IP, T_PORT) == {False}
            assert await echoes(PLAIN_OUT, T_IP, T_PORT) == {True}
            found = problems(server, T_IP)
            assert any("secure/ext" in p and "no node-local Mixer client" in p for p in found), (
                found
            )
            # Without policies everyone is echoed again.
            (folder / "authz.yaml").unlink()
            await until(I_IP, I_IP, T_PORT, echoed=True)
            await until(PLAIN_DENIED, T_IP, T_PORT, echoed=True)
            assert await echoes(I_IP, I_IP, T_PORT) == {True}
            assert await echoes(PLAIN_DENIED, T_IP, T_PORT) == {True}


GW_IP, WEB_IP = "127.0.151.2", "127.0.151.11"
ALLOWED, REMOTE_ALLOWED, REFUSED = "127.0.151.40", "127.0.151.41", "127.0.151.42"
GW_PORT = 8080
WEB = "web.default.svc.cluster.local"
GATEWAY = """apiVersion: config.meshfed.io/v1alpha1
kind: Gateway
metadata: {name: front, namespace: default}
spec:
  rules:
  - host: web.example.com
    http:
      paths:
      - {path: /, backend: {serviceName: web, servicePort: 80}}
"""
GATEWAY_POLICIES = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: front-door, namespace: default}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  rules:
  - from: [{source: {ipBlocks: [127.0.151.40]}}, {source: {remoteIpBlocks: [127.0.151.41/32]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: default}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"""


async def _status(local: str, path: str, headers: dict[str, str] | None = None) -> int:
    connector = aiohttp.TCPConnector(local_addr=(local, 0), force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(
            f"http://{GW_IP}:{GW_PORT}{path}",
            headers={"Host": "web.example.com", **(headers or {})},
            timeout=aiohttp.ClientTimeout(total=5),
        ) as r,
    ):
        await r.read()
        return r.status


async def _statuses(local: str, path: str, headers: dict[str, str] | None = None) -> set[int]:
    return {await _status(local, path, headers) for _ in range(N)}


async def _until_status(local: str, path: str, want: int, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    last: object = None
    while asyncio.get_running_loop().time() < deadline:
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            last = await _status(local, path)
            if last == want:
                return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{local} GET {path} never gave {want}; last {last!r}")


async def test_gateway_allows_listed_addresses_and_denies_a_path(tmp_path: Path) -> None:
    async with routing_mesh(tmp_path / "rules") as mesh:
        await mesh.version_backend("web", WEB_IP)
        mesh.member.replace(
            [Service(WEB, ports=(Port(80, "http", Protocol.HTTP),))],
            {WEB: [Endpoint(WEB_IP, ports={"http": 9080})]},
        )
        mesh.write("front", GATEWAY)
        spec = ProxySpec(
            ip=GW_IP,
            workload="ingress",
            pilot=f"127.0.0.1:{mesh.pilot.port}",
            outbound_http_port=GW_PORT,
            role="router",
        )
        envoy = EnvoyProcess(spec)
        mesh.envoys.append(envoy)
        await envoy.start()
        await wait_ready(envoy, mesh.hub_url, timeout=30)
        # Without policies the gateway serves everyone.
        await _until_status(REFUSED, "/", 200)
        await mesh.apply("authz", GATEWAY_POLICIES)
        await _until_status(REFUSED, "/", 403)
        assert await _statuses(ALLOWED, "/") == {200}
        assert await _statuses(REMOTE_ALLOWED, "/") == {200}
        assert await _statuses(REFUSED, "/") == {403}
        # The gateway trusts no forwarding hop: claiming an allowed address changes nothing.
        assert await _statuses(REFUSED, "/", {"X-Forwarded-For": REMOTE_ALLOWED}) == {403}
        # DENY beats ALLOW: an allowed address is refused the admin path.
        assert await _statuses(ALLOWED, "/admin/users") == {403}
        assert await _statuses(ALLOWED, "/public") == {200}
        await mesh.unapply("authz")
        await _until_status(REFUSED, "/admin", 200)


C_GW_IP, C_WEB_IP = "127.0.152.2", "127.0.152.11"
C_GATEWAY = """---
apiVersion: config.meshfed.io/v1alpha1
kind: Gateway
metadata: {name: front, namespace: default}
spec:
  rules:
  - host: web.example.com
    http:
      paths:
      - {path: /, backend: {serviceName: web, servicePort: 9080}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: gw-ext, namespace: default}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: CUSTOM
  provider: {name: mixer}
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
"""


async def test_custom_at_the_gateway_asks_mixer_for_what_it_matches(tmp_path: Path) -> None:
    services = workload("web", DENIED_HOST, C_WEB_IP, 9080)
    async with datapath_mesh(
        tmp_path, services, DENY_WEB, DataPathSettings(enabled=False), cache_entries=0
    ) as mesh:
        (mesh.folder / "registry" / "gateway.yaml").write_text(C_GATEWAY)
        await mesh.backend("web", C_WEB_IP, 9080)
        await mesh.proxy(C_GW_IP, "ingress", gateway_port=8080)
        (client,) = mesh.clients
        front = f"http://{C_GW_IP}:8080"

        async def refused_by_mixer() -> bool:
            status, body = await call(front, "web.example.com", "/admin")
            return status == 403 and "web is closed today" in body

        await eventually(refused_by_mixer, 30, "Mixer's denier to refuse /admin at the gateway")
        before = client.checks
        for _ in range(N):
            status, body = await call(front, "web.example.com", "/admin/users")
            assert status == 403 and "web is closed today" in body, (status, body)
        # Not matched by CUSTOM: served, and never sent to Mixer.
        for _ in range(N):
            assert await call(front, "web.example.com", "/public") == (200, "web")
        assert client.checks == before + N
        mesh.write_policy("")

        async def allowed() -> bool:
            return await call(front, "web.example.com", "/admin") == (200, "web")

        await eventually(allowed, 30, "Mixer allowing /admin at the gateway")


T_CLIENT_IP, T_API_IP, T_DB_IP = "127.0.153.2", "127.0.153.3", "127.0.153.11"
T_DB = "db.default.svc.cluster.local"
T_SERVICES = (
    workload("client", "client.default.svc.cluster.local", T_CLIENT_IP, 9080)
    + workload("api", "api.default.svc.cluster.local", T_API_IP, 9080)
    + workload("db", T_DB, T_DB_IP, 5432, "TCP")
)
DENY_DB_FROM_CLIENT = (
    DENY_WEB
    + f"""---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {{name: deny-db-from-client, namespace: istio-system, labels: {{istio-protocol: tcp}}}}
spec:
  match: >-
    destination.service == "{T_DB}" && source.service == "client.default.svc.cluster.local"
  actions:
  - handler: closed.denier
    instances: [nothing.checknothing]
"""
)
CUSTOM_DB = """---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: db-ext, namespace: default}}
spec:
  selector: {{matchLabels: {{app: db}}}}
  action: CUSTOM
  provider: {{name: mixer}}
  rules: [{rules}]
"""


async def test_custom_on_a_tcp_port_asks_mixer_for_the_connections_it_matches(
    tmp_path: Path,
) -> None:
    async with datapath_mesh(
        tmp_path, T_SERVICES, DENY_DB_FROM_CLIENT, DataPathSettings(enabled=False), cache_entries=0
    ) as mesh:
        policy = mesh.folder / "registry" / "authz.yaml"
        # Only connections from outside api's address are sent to Mixer.
        policy.write_text(
            CUSTOM_DB.format(rules="{from: [{source: {notIpBlocks: [127.0.153.3]}}]}")
        )
        arrived: list[bytes] = []

        async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            data = await reader.read(100)
            arrived.append(data)
            writer.write(data.upper())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(app, T_DB_IP, 15432)
        try:
            await mesh.proxy(T_DB_IP, "db", "5432:15432")
            (db_client,) = mesh.clients
            await mesh.proxy(T_CLIENT_IP, "client", mixer_client=False)
            await mesh.proxy(T_API_IP, "api", mixer_client=False)

            async def exchange(via: str) -> bytes:
                return await echo(via, via, 5432, b"ping")

            async def client_refused() -> bool:
                return await exchange(T_CLIENT_IP) == b""

            await eventually(client_refused, 30, "Mixer to close client's db connection")
            before = db_client.checks
            # Matched by CUSTOM and denied by Mixer's rule for client: closed, one Check each.
            assert {await exchange(T_CLIENT_IP) for _ in range(N)} == {b""}
            assert db_client.checks == before + N
            # Not matched (api's address): served, never sent to Mixer.
            assert {await exchange(T_API_IP) for _ in range(N)} == {b"PING"}
            assert db_client.checks == before + N
            assert b"ping" in arrived and all(d in (b"", b"ping") for d in arrived)
            # Every connection matched: api is checked too, and Mixer lets it through.
            policy.write_text(CUSTOM_DB.format(rules="{}"))

            async def api_checked() -> bool:
                seen = db_client.checks
                return await exchange(T_API_IP) == b"PING" and db_client.checks > seen

            await eventually(api_checked, 30, "api's connections to be checked by Mixer")
            before = db_client.checks
            assert {await exchange(T_API_IP) for _ in range(N)} == {b"PING"}
            assert {await exchange(T_CLIENT_IP) for _ in range(N)} == {b""}
            assert db_client.checks == before + 2 * N
        finally:
            server.close()
            await server.wait_closed()


async def test_with_the_data_path_each_tcp_connection_is_checked_once(tmp_path: Path) -> None:
    async with datapath_mesh(tmp_path, T_SERVICES, DENY_DB_FROM_CLIENT, cache_entries=0) as mesh:
        policy = mesh.folder / "registry" / "authz.yaml"
        policy.write_text(CUSTOM_DB.format(rules="{from: [{source: {ipBlocks: [127.0.153.2]}}]}"))

        async def app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write((await reader.read(100)).upper())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(app, T_DB_IP, 15432)
        try:
            db = await mesh.proxy(T_DB_IP, "db", "5432:15432")
            (db_client,) = mesh.clients
            await mesh.proxy(T_CLIENT_IP, "client", mixer_client=False)
            await mesh.proxy(T_API_IP, "api", mixer_client=False)

            async def custom_checks() -> int:
                """Envoy's count of Checks by the CUSTOM network ext_authz on db's port."""
                status, body = await db.admin("/stats?filter=custom_tcp_5432")
                assert status == 200, body
                total = 0
                for line in body.splitlines():
                    name, _, value = line.partition(": ")
                    if name.endswith(".total") and value.strip().isdigit():
                        total += int(value)
                return total

            async def custom_in_force() -> bool:
                seen = await custom_checks()
                closed = await echo(T_CLIENT_IP, T_CLIENT_IP, 5432, b"ping") == b""
                return closed and await custom_checks() > seen

            await eventually(custom_in_force, 30, "the CUSTOM network ext_authz to check client")
            before, custom = db_client.checks, await custom_checks()
            # client (matched by CUSTOM) is checked by the CUSTOM filter, api by the data path's;
            # one Check per connection either way.
            assert {await echo(T_CLIENT_IP, T_CLIENT_IP, 5432, b"ping") for _ in range(N)} == {b""}
            assert {await echo(T_API_IP, T_API_IP, 5432, b"ping") for _ in range(N)} == {b"PING"}
            assert db_client.checks == before + 2 * N
            assert await custom_checks() == custom + N
        finally:
            server.close()
            await server.wait_closed()
