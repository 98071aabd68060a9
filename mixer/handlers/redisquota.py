"""``redisquota``: rate-limit quotas kept in Redis, so every Mixer replica shares one limit.

The quotas and overrides are ``memquota``'s (:mod:`.quotas`); each is counted under a Redis key
by one of two algorithms (``rateLimitAlgorithm``):

- ``FIXED_WINDOW``: a window of ``validDuration`` opens with the first grant and is the key's
  own expiry; what was granted in it counts until it closes. Cheap, but up to twice the limit
  can pass around a window boundary.
- ``ROLLING_WINDOW``: grants are counted per ``bucketDuration``; what the buckets of the last
  ``validDuration`` granted counts. Smooth, one hash field per bucket.

Each decision is one Lua script run by Redis atomically (registered once, called by SHA), so
concurrent requests through any number of replicas never over-grant. The scripts read Redis's own
clock (``TIME``), so replicas whose clocks disagree still agree on windows. A request with a
``deduplication_id`` stores its answer for the window; a retry gets that answer without
consuming again. When Redis cannot be reached the call raises, and the runtime applies the
rule's fail policy.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Sequence
from urllib.parse import urlsplit

import attrs
import redis.asyncio as aioredis

from meshfed.core.resources import FieldReader
from meshfed.mixer.handlers import params as p
from meshfed.mixer.handlers.api import HandlerEnv, QuotaRequest, QuotaResult
from meshfed.mixer.handlers.names import InstanceIndex
from meshfed.mixer.handlers.quotas import (
    Algorithm,
    QuotaSpec,
    UnknownQuota,
    parse_quotas,
    quota_key,
)
from meshfed.mixer.templates import Instance, Quota

KEY_PREFIX = "meshfed:quota:"
SOCKET_TIMEOUT = 2.0

# Shared head of both scripts: the clock, and a stored answer for a retried request.
_PREAMBLE = """
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local max_amount = tonumber(ARGV[1])
local amount = tonumber(ARGV[2])
local best_effort = ARGV[3] == '1'
local window_ms = tonumber(ARGV[4])
if KEYS[2] ~= '' then
  local seen = redis.call('HMGET', KEYS[2], 'granted', 'until_us')
  if seen[1] and seen[2] and tonumber(seen[2]) > now_us then
    return {tonumber(seen[1]), math.floor((tonumber(seen[2]) - now_us) / 1000)}
  end
end
local function decide(used)
  local available = max_amount - used
  if amount <= 0 or available <= 0 then return 0 end
  if amount <= available then return amount end
  if best_effort then return available end
  return 0
end
local function remember(granted, valid_ms)
  if KEYS[2] ~= '' then
    local keep_ms = math.max(valid_ms, 1)
    redis.call('HSET', KEYS[2], 'granted', granted, 'until_us', now_us + keep_ms * 1000)
    redis.call('PEXPIRE', KEYS[2], keep_ms)
  end
end
"""

# KEYS[1]: the window's counter, expiring with the window.
FIXED_WINDOW_LUA = (
    _PREAMBLE
    + """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local left_ms = redis.call('PTTL', KEYS[1])
if left_ms < 0 then
  used = 0
  left_ms = window_ms
end
local granted = decide(used)
if granted > 0 then
  if used == 0 then
    redis.call('SET', KEYS[1], granted, 'PX', left_ms)
  else
    redis.call('INCRBY', KEYS[1], granted)
  end
end
local valid_ms = granted > 0 and left_ms or 0
remember(granted, math.max(left_ms, 1))
return {granted, valid_ms}
"""
)

# KEYS[1]: a hash of bucket number -> amount granted in that bucket.
ROLLING_WINDOW_LUA = (
    _PREAMBLE
    + """
local bucket_us = tonumber(ARGV[5]) * 1000
local buckets = math.ceil(window_ms * 1000 / bucket_us)
local current = math.floor(now_us / bucket_us)
local oldest = current - buckets + 1
local used = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if tonumber(fields[i]) < oldest then
    redis.call('HDEL', KEYS[1], fields[i])
  else
    used = used + tonumber(fields[i + 1])
  end
end
local granted = decide(used)
if granted > 0 then
  redis.call('HINCRBY', KEYS[1], current, granted)
  redis.call('PEXPIRE', KEYS[1], window_ms)
end
remember(granted, window_ms)
return {granted, granted > 0 and window_ms or 0}
"""
)


@attrs.frozen
class RedisQuotaParams:
    url: str = "redis://localhost:6379/0"
    pool_size: int = 10
    quotas: tuple[QuotaSpec, ...] = ()


def _ms(value: dt.timedelta) -> int:
    return max(1, math.ceil(value.total_seconds() * 1000))


class RedisQuota:
    def __init__(
        self, params: RedisQuotaParams, client: aioredis.Redis, name: str = "redisquota"
    ) -> None:
        self._name = name
        self._specs = InstanceIndex((q.name, q) for q in params.quotas)
        self._client = client
        self._fixed = client.register_script(FIXED_WINDOW_LUA)
        self._rolling = client.register_script(ROLLING_WINDOW_LUA)

    async def quota(self, instance: Quota, request: QuotaRequest) -> QuotaResult:
        spec = self._specs.get(instance.name)
        if spec is None:
            raise UnknownQuota(self._name, instance.name, [s.name for s in self._specs.values()])
        max_amount, valid = spec.limit(instance.dimensions)
        rolling = spec.algorithm is Algorithm.ROLLING_WINDOW
        # Hashed: dimension values are the caller's text; a key of bounded size whatever they are
        digest = hashlib.sha256(quota_key(spec.name, instance.dimensions).encode()).hexdigest()
        window = _ms(valid)
        key = f"{KEY_PREFIX}{'rolling' if rolling else 'fixed'}:{window}:{digest}"
        dedup = ""
        if request.deduplication_id:
            dedup_id = hashlib.sha256(request.deduplication_id.encode()).hexdigest()[:32]
            dedup = f"{KEY_PREFIX}dedup:{dedup_id}:{digest}"
        args: list[int | str] = [
            max_amount,
            request.amount,
            "1" if request.best_effort else "0",
            window,
        ]
        if rolling:
            args.append(_ms(spec.bucket_duration))
        script = self._rolling if rolling else self._fixed
        granted, valid_ms = await script(keys=[key, dedup], args=args)
        return QuotaResult(int(granted), dt.timedelta(milliseconds=int(valid_ms)))

    async def report(self, instances: Sequence[Instance]) -> None:
        return None

    async def close(self) -> None:
        await self._client.aclose()


def _url(reader: FieldReader) -> str:
    raw = reader.str("redisServerUrl", required=True).strip()
    if not raw:
        return ""
    url = raw if "://" in raw else f"redis://{raw}"
    parts = urlsplit(url)
    ok = parts.scheme in ("redis", "rediss", "unix") and (parts.hostname or parts.path)
    try:
        if parts.scheme != "unix" and parts.port is None:
            ok = False
    except ValueError:
        ok = False
    if not ok:
        reader.error(
            "redisServerUrl", f"expected host:port or a redis:// or unix:// URL, got {raw!r}"
        )
    return url


class RedisQuotaKind:
    name = "redisquota"
    templates = frozenset({"quota"})

    def parse_params(self, reader: FieldReader) -> RedisQuotaParams | None:
        reader = p.message(reader)
        before = len(reader.errors)
        reader.unknown_fields({"redisServerUrl", "connectionPoolSize", "quotas"})
        url = _url(reader)
        pool = reader.int("connectionPoolSize", default=10, minimum=1, maximum=10_000)
        quotas = parse_quotas(reader, rate_only=True, with_algorithm=True)
        if len(reader.errors) > before:
            return None
        return RedisQuotaParams(url, pool, quotas)

    async def build(self, params: RedisQuotaParams, env: HandlerEnv) -> RedisQuota:
        # No I/O here: the pool connects on first use, so a Redis that is down at config time
        # fails requests (and recovers with it) instead of failing the whole config snapshot.
        # A blocking pool: past connectionPoolSize a request waits for a connection (bounded)
        # instead of failing at once with "too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(
            params.url,
            max_connections=params.pool_size,
            timeout=SOCKET_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
        )
        return RedisQuota(params, aioredis.Redis.from_pool(pool), env.name)


KIND = RedisQuotaKind()
