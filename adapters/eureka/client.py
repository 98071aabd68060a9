"""HTTP to a list of Eureka peers: the full and delta fetch, with failover, auth and TLS.

Why not ``py_eureka_client.EurekaClient``: it polls on its own timer thread, keeps one global
HTTP client, and folds errors into log lines, while the adapter must decide itself when to fetch,
which kind of fetch, and what an error means for the mesh. The wire format lives in
:mod:`adapters.eureka.wire`; this module only moves bytes, on one ``aiohttp`` session per
adapter.

Failover follows Eureka's own client (``RetryableEurekaHttpClient``): stick to the server that
answered last; when it fails (connection refused, timeout, 5xx, a malformed answer, or a
refusal to serve such as the 403 a freshly started server gives until it has synced from its
peers) try the next one in the list, wrapping around; when every server failed, raise
:class:`EurekaUnavailable` carrying each server's error. Deltas from a server that disables them
(403 on ``apps/delta`` only) are reported as ``None`` so the caller does a full fetch instead.

Credentials are never part of what :meth:`EurekaHttp.describe` or an error message shows.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from typing import Any

import aiohttp
import attrs

from meshfed.adapters.eureka.config import EurekaSettings
from meshfed.adapters.eureka.wire import Applications, WireError, parse
from meshfed.core.files import read_config_file, read_config_text

ACCEPT = {"json": "application/json", "xml": "application/xml"}


class EurekaUnavailable(Exception):
    """No server in the list gave a usable answer."""

    def __init__(self, what: str, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        detail = "; ".join(f"{server}: {error}" for server, error in errors)
        super().__init__(f"{what} failed on every Eureka server ({detail})")


class _ServerError(Exception):
    pass


@attrs.frozen(slots=True)
class Answer:
    """A parsed answer and where it came from."""

    applications: Applications
    server: str
    kind: str  # "full" or "delta"
    size: int
    http_seconds: float  # request sent to last byte read
    parse_seconds: float


def basic_auth(username: str, password: str) -> str:
    """The ``Authorization`` value for HTTP basic auth (RFC 7617, UTF-8)."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def ssl_context(settings: EurekaSettings) -> ssl.SSLContext | None:
    """The client TLS context (custom CA and/or client certificate), or None for the default.

    It reads files: callers on an event loop run it in a worker thread. Every file goes through
    meshfed's config reader first, so a FIFO or device named here is refused, never opened.
    """
    tls = settings.tls
    if tls is None:
        return None
    ca = read_config_text(tls.ca_file) if tls.ca_file else None
    context = ssl.create_default_context(cadata=ca)
    if tls.cert_file:
        for path in filter(None, (tls.cert_file, tls.key_file)):
            read_config_file(path)
        context.load_cert_chain(tls.cert_file, tls.key_file or None)
    return context


class EurekaHttp:
    """Fetches ``apps/`` and ``apps/delta`` from the first Eureka server that answers."""

    def __init__(self, settings: EurekaSettings) -> None:
        self.settings = settings
        self.servers = list(settings.servers)
        self._index = 0
        self.failovers = 0
        self._session: aiohttp.ClientSession | None = None

    @property
    def current_server(self) -> str:
        return self.servers[self._index]

    async def _open(self) -> aiohttp.ClientSession:
        if self._session is not None and not self._session.closed:
            return self._session
        context = await asyncio.to_thread(ssl_context, self.settings)
        if self._session is not None and not self._session.closed:  # another caller opened one
            return self._session
        headers = {"Accept": ACCEPT[self.settings.format]}
        if self.settings.username:
            headers["Authorization"] = basic_auth(self.settings.username, self.settings.password)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
            headers=headers,
            connector=aiohttp.TCPConnector(ssl=context or True, limit=4),
        )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _get(self, server: str, path: str) -> tuple[int, bytes, str]:
        session = await self._open()
        # No redirects: credentials must never follow a redirect to another host.
        async with session.get(server + path, allow_redirects=False) as response:
            body = await response.read()
            return response.status, body, response.headers.get("Content-Type", "")

    async def _fetch(self, path: str, kind: str) -> Answer | None:
        errors: list[tuple[str, str]] = []
        count = len(self.servers)
        for step in range(count):
            index = (self._index + step) % count
            server = self.servers[index]
            started = time.perf_counter()
            try:
                status, body, content_type = await self._get(server, path)
                fetched = time.perf_counter()
                if kind == "delta" and status == 403:
                    # The server has deltas disabled (disableDelta): a full fetch will do.
                    self._switch_to(index)
                    return None
                if status != 200:
                    raise _ServerError(f"HTTP {status}")
                applications = parse(body, content_type)
            except (TimeoutError, aiohttp.ClientError, OSError, _ServerError) as exc:
                errors.append((server, _error_text(exc)))
                continue
            except WireError as exc:
                errors.append((server, f"malformed answer: {exc}"))
                continue
            self._switch_to(index)
            parsed = time.perf_counter()
            return Answer(
                applications, server, kind, len(body), fetched - started, parsed - fetched
            )
        raise EurekaUnavailable(f"GET {path}", errors)

    def _switch_to(self, index: int) -> None:
        if index != self._index:
            self.failovers += 1
            self._index = index

    async def fetch_full(self, regions: str = "") -> Answer:
        """The whole registry (``GET apps/``, ``apps/?regions=...`` with ``regions``)."""
        answer = await self._fetch("apps/" + _query(regions), "full")
        assert answer is not None  # only deltas may be refused
        return answer

    async def fetch_delta(self, regions: str = "") -> Answer | None:
        """Recent changes (``GET apps/delta``), or None when the server serves no deltas."""
        return await self._fetch("apps/delta" + _query(regions), "delta")

    def describe(self) -> dict[str, Any]:
        return {
            "servers": list(self.servers),
            "currentServer": self.current_server,
            "format": self.settings.format,
            "auth": bool(self.settings.username),
            "tls": self.settings.tls is not None,
            "failovers": self.failovers,
        }


def _query(regions: str) -> str:
    # Region names are checked by config (letters, digits, '.', '_', '-'): nothing to escape.
    return f"?regions={regions}" if regions else ""


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, _ServerError) else text
