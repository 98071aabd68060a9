"""``listchecker``: is a value in a list? A whitelist or a blacklist for ``listentry`` checks.

Istio 0.2's list adapter. The list is the union of ``overrides`` (written inline) and, when
``providerUrl`` is set, the lines of a document fetched from that URL: one entry per line, blank
lines and ``#`` comments ignored. The document is fetched once when the handler is built and
then every ``refreshInterval`` by a background task, never on a request; a list that could not be
refreshed for ``ttl`` is dropped, so a dead provider fails checks rather than enforcing a list
that may be long out of date. Until a list is loaded checks answer UNAVAILABLE.

How entries match (``entryType``): ``STRINGS`` exactly, ``CASE_INSENSITIVE_STRINGS`` ignoring
case, ``IP_ADDRESSES`` an address inside any entry (an address or a CIDR), ``REGEX`` any entry
(RE2 syntax, searched anywhere in the value as Go's ``MatchString`` does). A whitelist answers
NOT_FOUND for a value it lacks; a blacklist answers PERMISSION_DENIED for a value it has. Every
verdict may be cached by the client for ``cachingInterval`` or ``cachingUseCount`` uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import hashlib
import ipaddress
import time
from collections.abc import Callable, Iterable, Sequence
from urllib.parse import urlsplit

import aiohttp
import attrs
import re2

from meshfed.core.resources import FieldReader
from meshfed.mixer.handlers import params as p
from meshfed.mixer.handlers.api import (
    INVALID_ARGUMENT,
    PERMISSION_DENIED,
    UNAVAILABLE,
    CheckResult,
    HandlerEnv,
)
from meshfed.mixer.templates import Instance, ListEntry

NOT_FOUND = 5
MAX_LIST_BYTES = 64 * 1024 * 1024  # a provider answering more is refused, not read into memory
FETCH_TIMEOUT = 30.0
BUILD_FETCH_TIMEOUT = 5.0  # the first fetch, while a config snapshot waits for the handler
# A failure is not cached as long as a verdict: the provider may be back any moment.
UNAVAILABLE_VALIDITY = dt.timedelta(seconds=1)

FIELDS = {
    "providerUrl",
    "refreshInterval",
    "ttl",
    "cachingInterval",
    "cachingUseCount",
    "overrides",
    "entryType",
    "blacklist",
}


class EntryType(enum.Enum):
    STRINGS = "STRINGS"
    CASE_INSENSITIVE_STRINGS = "CASE_INSENSITIVE_STRINGS"
    IP_ADDRESSES = "IP_ADDRESSES"
    REGEX = "REGEX"


@attrs.frozen
class ListParams:
    provider_url: str = ""
    refresh_interval: dt.timedelta = dt.timedelta(seconds=60)
    ttl: dt.timedelta = dt.timedelta(seconds=300)
    caching_interval: dt.timedelta = dt.timedelta(seconds=300)
    caching_use_count: int = 10_000
    overrides: tuple[str, ...] = ()
    entry_type: EntryType = EntryType.STRINGS
    blacklist: bool = False


class EntryError(ValueError):
    """An entry (or a looked-up value) that the list's entry type cannot read."""


class Matcher:
    """A compiled list: ``contains`` answers membership, raising EntryError for bad values."""

    def __init__(self, entry_type: EntryType, entries: Iterable[str]) -> None:
        self.entry_type = entry_type
        self.size = 0
        self._strings: frozenset[str] = frozenset()
        # prefix length -> network numbers of that length, per address family
        self._nets: dict[tuple[int, int], frozenset[int]] = {}
        self._regex: re2._Regexp | None = None
        items = list(entries)
        self.size = len(items)
        if entry_type is EntryType.STRINGS:
            self._strings = frozenset(items)
        elif entry_type is EntryType.CASE_INSENSITIVE_STRINGS:
            self._strings = frozenset(e.casefold() for e in items)
        elif entry_type is EntryType.IP_ADDRESSES:
            nets: dict[tuple[int, int], set[int]] = {}
            for entry in items:
                net = parse_network(entry)
                nets.setdefault((net.version, net.prefixlen), set()).add(int(net.network_address))
            self._nets = {key: frozenset(v) for key, v in nets.items()}
        else:
            for entry in items:
                check_regex(entry)
            if items:
                # one alternation: RE2 matches it in one linear pass, however many entries
                self._regex = re2.compile("|".join(f"(?:{e})" for e in items))

    def contains(self, value: str) -> bool:
        if self.entry_type is EntryType.STRINGS:
            return value in self._strings
        if self.entry_type is EntryType.CASE_INSENSITIVE_STRINGS:
            return value.casefold() in self._strings
        if self.entry_type is EntryType.IP_ADDRESSES:
            try:
                addr = ipaddress.ip_address(value.strip())
            except ValueError:
                raise EntryError(f"{value!r} is not an IP address") from None
            number, bits = int(addr), addr.max_prefixlen
            for (version, prefix), networks in self._nets.items():
                if version == addr.version and (number >> (bits - prefix) << (bits - prefix)) in (
                    networks
                ):
                    return True
            return False
        return self._regex is not None and self._regex.search(value) is not None


def parse_network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address (a /32 or /128) or a CIDR; host bits set are an error, as a typo usually."""
    try:
        return ipaddress.ip_network(entry.strip(), strict=True)
    except ValueError as exc:
        raise EntryError(f"{entry!r} is not an IP address or CIDR: {exc}") from None


def check_regex(entry: str) -> None:
    try:
        re2.compile(entry)
    except re2.error as exc:
        raise EntryError(f"{entry!r} is not an RE2 regular expression: {exc}") from None


def parse_lines(text: str) -> list[str]:
    """A provider's document: one entry per line; blank lines and ``#`` comments skipped."""
    out = []
    for line in text.splitlines():
        entry = line.strip()
        if entry and not entry.startswith("#"):
            out.append(entry)
    return out


class ListChecker:
    def __init__(
        self,
        params: ListParams,
        env: HandlerEnv,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._params = params
        self._env = env
        self._clock = clock
        self._matcher: Matcher | None = None
        self._problem = "the list has not been loaded yet"
        self._digest = b""
        self._last_success = clock()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load the list once (so checks work at once), then refresh the provider's forever.

        Compiling runs in a thread: 10,000 regexes or CIDRs take 0.2-1.5 s, too long for the
        event loop.
        """
        if not self._params.provider_url:
            self._matcher = await asyncio.to_thread(
                Matcher, self._params.entry_type, self._params.overrides
            )
            self._problem = ""
            return
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT), trust_env=False
        )
        try:
            # bounded: a hanging provider must not hold up the activation of a whole config
            await asyncio.wait_for(self.refresh(), BUILD_FETCH_TIMEOUT)
        except TimeoutError:
            self._problem = (
                f"the list from {self._params.provider_url} did not arrive within "
                f"{BUILD_FETCH_TIMEOUT:g}s; retrying every {self._params.refresh_interval}"
            )
            self._env.logger.warning("listchecker %s: %s", self._env.name, self._problem)
        self._task = asyncio.create_task(self._refresher(), name=f"listchecker {self._env.name}")

    async def refresh(self) -> None:
        """One fetch; on failure keep the current list until ``ttl`` has passed since success."""
        url = self._params.provider_url
        try:
            body = await self._fetch(url)
            digest = hashlib.sha256(body).digest()
            if digest != self._digest or self._matcher is None:
                matcher = await asyncio.to_thread(self._compile, body)
                self._matcher, self._digest = matcher, digest
                self._env.logger.info(
                    "listchecker %s: loaded %d entries from %s", self._env.name, matcher.size, url
                )
            self._last_success = self._clock()
            self._problem = ""
        except (aiohttp.ClientError, TimeoutError, EntryError, UnicodeDecodeError, OSError) as exc:
            self._problem = f"could not load the list from {url}: {_describe(exc)}"
            self._env.logger.warning("listchecker %s: %s", self._env.name, self._problem)
        if self._matcher is not None and self._clock() - self._last_success > _secs(
            self._params.ttl
        ):
            self._env.logger.warning(
                "listchecker %s: dropping the list, not refreshed for %s (ttl)",
                self._env.name,
                self._params.ttl,
            )
            self._matcher = None

    async def _fetch(self, url: str) -> bytes:
        assert self._session is not None
        async with self._session.get(url) as resp:
            if resp.status != 200:
                raise aiohttp.ClientResponseError(
                    resp.request_info, (), status=resp.status, message=resp.reason or ""
                )
            if (resp.content_length or 0) > MAX_LIST_BYTES:
                raise aiohttp.ClientPayloadError(f"list larger than {MAX_LIST_BYTES} bytes")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(65536):
                body += chunk
                if len(body) > MAX_LIST_BYTES:
                    raise aiohttp.ClientPayloadError(f"list larger than {MAX_LIST_BYTES} bytes")
            return bytes(body)

    def _compile(self, body: bytes) -> Matcher:
        entries = parse_lines(body.decode("utf-8"))
        return Matcher(self._params.entry_type, [*entries, *self._params.overrides])

    async def _refresher(self) -> None:
        interval = _secs(self._params.refresh_interval)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except Exception:  # never let the refresher die: the list would silently freeze
                self._env.logger.exception("listchecker %s: refresh failed", self._env.name)

    async def check(self, instance: Instance) -> CheckResult:
        value = instance.value if isinstance(instance, ListEntry) else ""
        params = self._params
        matcher = self._matcher
        if matcher is None:
            return CheckResult(UNAVAILABLE, self._problem, UNAVAILABLE_VALIDITY, 1)
        try:
            found = matcher.contains(value)
        except EntryError as exc:
            return CheckResult(
                INVALID_ARGUMENT, str(exc), params.caching_interval, params.caching_use_count
            )
        code, message = 0, ""
        if params.blacklist and found:
            code, message = PERMISSION_DENIED, f"{value} is blacklisted"
        elif not params.blacklist and not found:
            code, message = NOT_FOUND, f"{value} is not whitelisted"
        return CheckResult(code, message, params.caching_interval, params.caching_use_count)

    async def report(self, instances: Sequence[Instance]) -> None:
        return None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()


class ListCheckerKind:
    name = "listchecker"
    templates = frozenset({"listentry"})

    def parse_params(self, reader: FieldReader) -> ListParams | None:
        reader = p.message(reader)
        before = len(reader.errors)
        reader.unknown_fields(FIELDS)
        d = ListParams()
        url = reader.str("providerUrl").strip()
        if url:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                reader.error("providerUrl", f"expected an http:// or https:// URL, got {url!r}")
        refresh = p.duration(
            reader, "refreshInterval", d.refresh_interval, minimum=dt.timedelta(seconds=1)
        )
        ttl = p.duration(reader, "ttl", d.ttl)
        if url and "ttl" in reader.data and ttl < refresh:
            reader.error("ttl", f"expected at least refreshInterval ({refresh}), got {ttl}")
        caching = p.duration(reader, "cachingInterval", d.caching_interval)
        use_count = reader.int("cachingUseCount", default=d.caching_use_count, minimum=0)
        entry_type = p.proto_enum(reader, "entryType", EntryType, d.entry_type, list(EntryType))
        overrides = reader.str_list("overrides")
        for i, entry in enumerate(overrides):
            try:
                Matcher(entry_type, [entry])
            except EntryError as exc:
                reader.error(f"overrides[{i}]", str(exc))
        blacklist = reader.bool("blacklist")
        if len(reader.errors) > before:
            return None
        return ListParams(
            url,
            refresh,
            max(ttl, refresh),
            caching,
            use_count,
            tuple(overrides),
            entry_type,
            blacklist,
        )

    async def build(self, params: ListParams, env: HandlerEnv) -> ListChecker:
        handler = ListChecker(params, env)
        await handler.start()
        return handler


def _secs(value: dt.timedelta) -> float:
    return value.total_seconds()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status} {exc.message}".strip()
    return str(exc) or type(exc).__name__


KIND = ListCheckerKind()
