"""Helpers for the traffic-management tests: a mesh whose Pilot reads rule files, backends that
say which version answered and can be told to misbehave, and a loopback DNS server.

Every "host" is a 127.0.0.0/8 address; each test module uses its own third octet (101..109).
The DNS server exists so that "external" services can have real names (``api.ext.test``)
resolved by Envoy to loopback addresses, without editing ``/etc/hosts`` and without any query
leaving the machine: sidecars are pointed at it through Pilot's ``egressDnsResolvers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import grpc
from aiohttp import web

from integration.pilot_helpers import Mesh
from meshfed.pilot.config.store import ConfigSnapshot, FileConfigStore, parse_config_file
from meshfed.pilot.translate.traffic import TrafficOptions
from meshfed.registry.model import Endpoint, Port, Protocol, Service


def http_service(host: str, port: int = 80, protocol: Protocol = Protocol.HTTP) -> Service:
    return Service(hostname=host, ports=(Port(port, "http", protocol),))


def versioned(address: str, version: str, port: int = 9080, **labels: str) -> Endpoint:
    return Endpoint(address=address, ports={"http": port}, labels={"version": version, **labels})


class VersionBackend:
    """An HTTP server answering with its name; it records requests and can misbehave.

    ``delay``: seconds to wait before answering; ``fail_first``: answer 503 to that many
    requests first; ``hold``: an event every request waits for (concurrency tests).
    """

    def __init__(self, name: str, address: str, port: int = 9080) -> None:
        self.name, self.address, self.port = name, address, port
        self.requests: list[dict[str, Any]] = []
        self.delay = 0.0
        self.fail_first = 0
        self.fail_always = False
        self.unhealthy = False  # GET /healthz answers 503 (active health checks)
        self.hold: asyncio.Event | None = None
        self.in_flight = 0
        self.max_in_flight = 0
        self.health_checks = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        async def handle(request: web.Request) -> web.StreamResponse:
            if request.path == "/healthz":
                self.health_checks += 1
                return web.Response(status=503 if self.unhealthy else 200, text=self.name)
            self.requests.append(
                {"path": request.path_qs, "host": request.host, "headers": dict(request.headers)}
            )
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                if self.hold is not None:
                    await asyncio.wait_for(self.hold.wait(), 10)
                if self.delay:
                    await asyncio.sleep(self.delay)
                if self.fail_always or self.fail_first > 0:
                    self.fail_first -= 1
                    return web.Response(status=503, text=f"{self.name} failing")
                return web.Response(
                    text=self.name, headers={"x-backend": self.name, "x-path": request.path_qs}
                )
            finally:
                self.in_flight -= 1

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.address, self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class RoutingMesh(Mesh):
    """A test mesh whose Pilot reads routing config from files in ``rules_dir``."""

    def __init__(self, rules_dir: Path, options: TrafficOptions | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        rules_dir.mkdir(parents=True, exist_ok=True)
        self.rules_dir = rules_dir
        self.store = FileConfigStore([rules_dir])
        self.pilot.config_stores = [self.store]
        self.pilot.traffic_options = options or TrafficOptions()
        self.version_backends: list[VersionBackend] = []
        self._store_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.store.load()
        self._store_task = asyncio.create_task(self.store.run())
        await super().start()

    async def stop(self) -> None:
        self.store.stop()
        if self._store_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._store_task, 5)
        for b in self.version_backends:
            with contextlib.suppress(Exception):
                await b.stop()
        await super().stop()

    async def version_backend(self, name: str, address: str, port: int = 9080) -> VersionBackend:
        b = VersionBackend(name, address, port)
        await b.start()
        self.version_backends.append(b)
        return b

    def write(self, name: str, text: str) -> None:
        """Write (or replace) a rule file; the store picks it up within a fraction of a second."""
        tmp = self.rules_dir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.rename(self.rules_dir / f"{name}.yaml")

    def remove(self, name: str) -> None:
        (self.rules_dir / f"{name}.yaml").unlink()

    async def apply(self, name: str, text: str, timeout: float = 10.0) -> None:
        """Write a rule file; return once Pilot has it and every proxy has ACKed the push."""
        self.write(name, text)
        await self.converged(timeout)

    async def unapply(self, name: str, timeout: float = 10.0) -> None:
        """Remove a rule file; return once its removal is in force everywhere."""
        self.remove(name)
        await self.converged(timeout)

    def expected(self) -> ConfigSnapshot | None:
        """The snapshot the rule folder's files mean now (None while one does not parse)."""
        objects = []
        for path in sorted(self.rules_dir.glob("*.yaml")):
            parsed, errors = parse_config_file(path)
            if errors or parsed is None:
                return None
            objects.extend(parsed)
        return ConfigSnapshot.of(objects)

    async def converged(self, timeout: float = 10.0) -> None:
        """Wait until Pilot's config is the store's and every proxy ACKed all it was sent."""
        from meshfed.pilot.watch import Status

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            cache, discovery = self.pilot.cache, self.pilot.discovery
            if (
                cache is not None
                and discovery is not None
                and self.store.snapshot == self.expected()
                and cache.traffic.snapshot == self.store.snapshot
                and all(
                    w.status in (Status.SYNCED, Status.NOT_SENT)
                    for conn in discovery.connections.values()
                    for w in conn.watches.values()
                )
            ):
                await asyncio.sleep(0.2)  # Envoy's main thread hands the config to its worker
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"config not converged after {timeout}s: {self.store.errors}")


@contextlib.asynccontextmanager
async def routing_mesh(
    rules_dir: Path, options: TrafficOptions | None = None, **kw: Any
) -> AsyncIterator[RoutingMesh]:
    mesh = RoutingMesh(rules_dir, options, **kw)
    try:
        await mesh.start()
        yield mesh
    finally:
        await mesh.stop()


async def request(
    session: aiohttp.ClientSession,
    url: str,
    host: str,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    method: str = "GET",
) -> tuple[int, str, Mapping[str, str]]:
    async with session.request(
        method,
        url,
        headers={"Host": host, **(headers or {})},
        timeout=aiohttp.ClientTimeout(total=timeout),
        allow_redirects=False,
    ) as response:
        return response.status, await response.text(), response.headers.copy()


async def count(
    session: aiohttp.ClientSession,
    url: str,
    host: str,
    n: int,
    headers: Mapping[str, str] | None = None,
) -> dict[str, int]:
    """``n`` requests; answers counted by body (the backend's name) or ``HTTP <status>``."""
    out: dict[str, int] = {}
    for _ in range(n):
        status, body, _ = await request(session, url, host, headers)
        key = body if status == 200 else f"HTTP {status}"
        out[key] = out.get(key, 0) + 1
    return out


class LoopbackDNS:
    """A DNS server on a loopback address answering A queries from a fixed table.

    Names absent from the table get NXDOMAIN; ``*.domain`` entries answer every subdomain.
    """

    def __init__(self, address: str, port: int, records: Mapping[str, str]) -> None:
        self.address, self.port = address, port
        self.records = {k.lower().rstrip("."): v for k, v in records.items()}
        self.queries: list[str] = []
        self._transport: asyncio.DatagramTransport | None = None

    def lookup(self, name: str) -> str | None:
        name = name.lower().rstrip(".")
        if name in self.records:
            return self.records[name]
        for key, value in self.records.items():
            if key.startswith("*.") and name.endswith(key[1:]):
                return value
        return None

    async def start(self) -> None:
        server = self

        class Protocol_(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                try:
                    query = dns.message.from_wire(data)
                except Exception:
                    return
                response = dns.message.make_response(query)
                response.flags |= dns.flags.AA
                for question in query.question:
                    name = question.name.to_text()
                    server.queries.append(name)
                    found = server.lookup(name)
                    if found is None:
                        response.set_rcode(dns.rcode.NXDOMAIN)
                    elif question.rdtype == dns.rdatatype.A:
                        response.answer.append(
                            dns.rrset.from_text(question.name, 5, "IN", "A", found)
                        )
                self.transport.sendto(response.to_wire(), addr)  # type: ignore[attr-defined]

        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            Protocol_, local_addr=(self.address, self.port)
        )
        self._transport = transport  # type: ignore[assignment]

    def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    @property
    def resolver(self) -> str:
        return f"{self.address}:{self.port}"


def make_tls_pair(folder: Path, hosts: list[str], name: str = "server") -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for ``hosts``, written as PEM files.

    Returns (ca.crt, tls.crt, tls.key); the pair uses Kubernetes TLS-secret file names so the
    folder can serve as a gateway "secret".
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from integration.peers.certs import issue_leaf, new_ca, write_pem

    folder.mkdir(parents=True, exist_ok=True)
    ca = new_ca(f"{name} test CA")
    cert, key = issue_leaf(
        ca, hosts[0], None, ExtendedKeyUsageOID.SERVER_AUTH, [x509.DNSName(h) for h in hosts]
    )
    ca_path, crt_path, key_path = folder / "ca.crt", folder / "tls.crt", folder / "tls.key"
    ca_path.write_bytes(ca[0].public_bytes(serialization.Encoding.PEM))
    write_pem(crt_path, cert, key_path, key)
    return ca_path, crt_path, key_path


class TlsHttpServer:
    """A tiny HTTPS server (its own certificate) answering every request with its name."""

    def __init__(self, name: str, address: str, port: int, cert: Path, key: Path) -> None:
        self.name, self.address, self.port = name, address, port
        self.cert, self.key = cert, key
        self.sni: list[str | None] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        server = self

        def remember_sni(sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            server.sni.append(name)

        context.sni_callback = remember_sni  # type: ignore[assignment]

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                body = self.name.encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                    % (len(body), body)
                )
                await writer.drain()
            writer.close()

        self._server = await asyncio.start_server(handle, self.address, self.port, ssl=context)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


async def https_get(
    address: str, port: int, server_name: str, ca: Path, timeout: float = 5.0
) -> tuple[str, bytes]:
    """GET / over TLS to ``address:port`` with SNI ``server_name``, verifying against ``ca``.

    Returns (the response's last line, the server certificate in DER form).
    """
    import ssl

    context = ssl.create_default_context(cafile=str(ca))
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(address, port, ssl=context, server_hostname=server_name), timeout
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.write(f"GET / HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    return data.decode(errors="replace").splitlines()[-1], der


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_hub(config: Path, log: Path) -> asyncio.subprocess.Process:
    """``meshfed up -c config`` as a real process in its own session (see :func:`kill`)."""
    import sys

    root = Path(__file__).resolve().parents[1]
    with open(log, "ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "meshfed.cli",
            "up",
            "-c",
            str(config),
            cwd=root,
            stdout=out,
            stderr=out,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )


async def kill(proc: asyncio.subprocess.Process) -> None:
    import os
    import signal

    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


async def hub_ready(url: str) -> bool:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session,
        session.get(url + "/healthz/ready") as response,
    ):
        return response.status == 200


class Greeter:
    """A grpcio server with one unary method, ``/test.Greeter/Say``, answering ``hello <request>``
    (raw bytes, no generated stubs): a real HTTP/2 gRPC peer for gateway and egress tests."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.calls: list[bytes] = []
        self.server: grpc.aio.Server | None = None

    async def start(self) -> None:
        async def say(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self.calls.append(request)
            return b"hello " + request

        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "test.Greeter", {"Say": grpc.unary_unary_rpc_method_handler(say)}
                )
            ]
        )
        self.server.add_insecure_port(self.address)
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)


async def say(target: str, authority: str, credentials: grpc.ChannelCredentials | None) -> bytes:
    """Call ``Say(b"mesh")`` on ``target`` with ``authority`` (h2c, or TLS with ``credentials``)."""
    options = [("grpc.default_authority", authority)]
    if credentials is None:
        channel = grpc.aio.insecure_channel(target, options=options)
    else:
        options.append(("grpc.ssl_target_name_override", authority))
        channel = grpc.aio.secure_channel(target, credentials, options=options)
    async with channel:
        call = channel.unary_unary("/test.Greeter/Say")
        return await asyncio.wait_for(call(b"mesh", timeout=5), 10)
