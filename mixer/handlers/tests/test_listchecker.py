import asyncio
import datetime as dt

from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from meshfed.mixer.handlers import listchecker as lc
from meshfed.mixer.handlers.tests.helpers import env, field_errors, parse_ok
from meshfed.mixer.templates import ListEntry

NOT_FOUND, PERMISSION_DENIED, INVALID_ARGUMENT, UNAVAILABLE = 5, 7, 3, 14


async def build(spec):
    return await lc.KIND.build(parse_ok(lc.KIND, spec), env())


async def code(handler, value):
    return (await handler.check(ListEntry("appversion.listentry.default", value))).code


async def test_whitelist_strings():
    h = await build({"overrides": ["v1", "v2"], "cachingInterval": "7s", "cachingUseCount": 5})
    assert await code(h, "v1") == 0
    result = await h.check(ListEntry("x", "v3"))
    assert (result.code, result.message) == (NOT_FOUND, "v3 is not whitelisted")
    assert result.valid_duration == dt.timedelta(seconds=7) and result.valid_use_count == 5
    assert await code(h, "V1") == NOT_FOUND
    await h.close()


async def test_blacklist_case_insensitive():
    h = await build(
        {"overrides": ["Bad"], "blacklist": True, "entryType": "CASE_INSENSITIVE_STRINGS"}
    )
    result = await h.check(ListEntry("x", "bAD"))
    assert (result.code, result.message) == (PERMISSION_DENIED, "bAD is blacklisted")
    assert await code(h, "good") == 0


async def test_ip_addresses_and_cidrs():
    h = await build(
        {"overrides": ["10.0.0.0/8", "192.168.1.7", "fd00::/64"], "entryType": "IP_ADDRESSES"}
    )
    assert await code(h, "10.200.3.4") == 0
    assert await code(h, "192.168.1.7") == 0
    assert await code(h, "192.168.1.8") == NOT_FOUND
    assert await code(h, "fd00::1") == 0
    assert await code(h, "fd00:0:0:1::1") == NOT_FOUND
    assert await code(h, "11.0.0.1") == NOT_FOUND
    assert await code(h, "not-an-ip") == INVALID_ARGUMENT


@given(
    st.lists(st.ip_addresses(v=4).map(str), max_size=20),
    st.integers(8, 32),
    st.ip_addresses(v=4),
)
def test_ip_matching_equals_ipaddress_reference(addresses, prefix, probe):
    import ipaddress

    nets = [str(ipaddress.ip_network(f"{a}/{prefix}", strict=False)) for a in addresses]
    matcher = lc.Matcher(lc.EntryType.IP_ADDRESSES, nets)
    expected = any(probe in ipaddress.ip_network(n) for n in nets)
    assert matcher.contains(str(probe)) == expected


async def test_regex_entries_search_like_go():
    h = await build({"overrides": ["^api\\.", "admin$"], "entryType": "REGEX"})
    assert await code(h, "api.example.com") == 0
    assert await code(h, "superadmin") == 0
    assert await code(h, "www.api.com") == NOT_FOUND


def test_bad_params_name_their_fields():
    errors = field_errors(
        lc.KIND,
        {
            "providerUrl": "ftp://lists",
            "refreshInterval": "100ms",
            "entryType": "NUMBERS",
            "overrides": ["ok", 3],
            "cachingUseCount": -1,
        },
    )
    assert set(errors) == {
        "providerUrl",
        "refreshInterval",
        "entryType",
        "overrides[1]",
        "cachingUseCount",
    }
    assert "REGEX" in errors["entryType"]
    ip = field_errors(lc.KIND, {"entryType": "IP_ADDRESSES", "overrides": ["1.2.3.4", "1.2.3"]})
    assert list(ip) == ["overrides[1]"] and "'1.2.3'" in ip["overrides[1]"]
    rx = field_errors(lc.KIND, {"entryType": "REGEX", "overrides": ["(unclosed"]})
    assert list(rx) == ["overrides[0]"]
    # lookarounds are not RE2: refused at config time, not at request time
    assert list(field_errors(lc.KIND, {"entryType": "REGEX", "overrides": ["a(?=b)"]})) == [
        "overrides[0]"
    ]
    ttl = field_errors(
        lc.KIND, {"providerUrl": "http://h/l", "refreshInterval": "10s", "ttl": "5s"}
    )
    assert list(ttl) == ["ttl"]


class Provider:
    """The test's own list provider: an aiohttp server on 127.0.0.1 whose answer we set."""

    def __init__(self):
        self.body = "v1\n"
        self.status = 200
        self.hits = 0
        self.gate: asyncio.Event | None = None  # when set: answer only once it is released

    async def handle(self, request):
        self.hits += 1
        if self.gate is not None:
            await self.gate.wait()
        return web.Response(text=self.body, status=self.status)

    async def __aenter__(self):
        app = web.Application()
        app.router.add_get("/list", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/list"
        return self

    async def __aexit__(self, *exc):
        await self.runner.cleanup()


async def wait_for(predicate, timeout=10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_provider_url_loaded_refreshed_and_dropped_after_ttl():
    async with Provider() as provider:
        provider.body = "# allowed versions\nv1\n\n  v2  \n"
        h = await build(
            {
                "providerUrl": provider.url,
                "refreshInterval": "1s",
                "ttl": "2s",
                "overrides": ["inline"],
            }
        )
        try:
            # loaded before build returned: checks work at once
            assert [await code(h, v) for v in ("v1", "v2", "inline", "v3")] == [0, 0, 0, NOT_FOUND]
            provider.body = "v3\n"

            async def v3_allowed():
                return await code(h, "v3") == 0

            await wait_for(v3_allowed, timeout=5)
            assert await code(h, "v1") == NOT_FOUND
            assert await code(h, "inline") == 0  # overrides stay with every version

            provider.status = 500  # the provider breaks: the last list serves until ttl

            async def dropped():
                return await code(h, "v3") == UNAVAILABLE

            hits = provider.hits
            await asyncio.sleep(0.2)
            assert await code(h, "v3") == 0
            await wait_for(dropped, timeout=6)
            assert provider.hits > hits
            result = await h.check(ListEntry("x", "v3"))
            assert "HTTP 500" in result.message and provider.url in result.message

            provider.status = 200  # back: the list returns on the next refresh
            await wait_for(v3_allowed, timeout=5)
        finally:
            await h.close()


async def test_provider_down_at_build_answers_unavailable_not_crash():
    async with Provider() as provider:
        url = provider.url
    # the server is gone: connection refused
    h = await build({"providerUrl": url, "refreshInterval": "1s"})
    try:
        result = await h.check(ListEntry("x", "v1"))
        assert result.code == UNAVAILABLE
        assert url in result.message
    finally:
        await h.close()


async def test_provider_document_with_a_bad_entry_is_refused_whole():
    async with Provider() as provider:
        provider.body = "1.1.1.1\n300.1.1.1\n"
        h = await build({"providerUrl": provider.url, "entryType": "IP_ADDRESSES"})
        try:
            result = await h.check(ListEntry("x", "1.1.1.1"))
            assert result.code == UNAVAILABLE and "'300.1.1.1'" in result.message
        finally:
            await h.close()


def test_entry_type_by_proto_number():
    assert parse_ok(lc.KIND, {"entryType": 2}).entry_type is lc.EntryType.IP_ADDRESSES
    assert parse_ok(lc.KIND, {"entry_type": 3}).entry_type is lc.EntryType.REGEX
    assert list(field_errors(lc.KIND, {"entryType": 4})) == ["entryType"]


async def test_hanging_provider_does_not_hold_up_build(monkeypatch):
    monkeypatch.setattr(lc, "BUILD_FETCH_TIMEOUT", 0.5)
    release = asyncio.Event()
    async with Provider() as provider:
        provider.gate = release
        started = asyncio.get_running_loop().time()
        h = await build({"providerUrl": provider.url, "refreshInterval": "1s"})
        try:
            assert asyncio.get_running_loop().time() - started < 2
            result = await h.check(ListEntry("x", "v1"))
            assert result.code == UNAVAILABLE and "did not arrive" in result.message
            release.set()  # the provider answers: the refresher loads the list

            async def loaded():
                return await code(h, "v1") == 0

            await wait_for(loaded, timeout=5)
        finally:
            release.set()
            await h.close()
