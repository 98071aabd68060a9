"""Mixer's redisquota handler against a real redis-server: one limit shared by replicas.

Two handler instances with their own connection pools stand for two Mixer replicas; requests
through both, interleaved and concurrent, are granted exactly ``maxAmount`` per window, for the
fixed and the rolling algorithm, with overrides and deduplication, and a Redis outage fails
calls (for the runtime's fail policy) and recovers with Redis.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time

import prometheus_client
import pytest
import redis.exceptions

from integration.peers.redis import RedisServer
from meshfed.core.resources import FieldReader
from meshfed.mixer.handlers import redisquota
from meshfed.mixer.handlers.api import HandlerEnv, QuotaRequest
from meshfed.mixer.templates import Quota

NAME = "requestcount.quota.istio-system"


def env(replica: int) -> HandlerEnv:
    return HandlerEnv(
        f"handler.redisquota.istio-system#{replica}",
        logging.getLogger("test.redisquota"),
        prometheus_client.CollectorRegistry(),
    )


def spec(url: str, algorithm: str, **quota) -> dict:
    return {
        "redisServerUrl": url,
        "connectionPoolSize": 4,
        "quotas": [
            {
                "name": NAME,
                "maxAmount": 10,
                "validDuration": "3s",
                "bucketDuration": "500ms",
                "rateLimitAlgorithm": algorithm,
                "overrides": [{"dimensions": {"destination": "ratings"}, "maxAmount": 3}],
                **quota,
            }
        ],
    }


async def replicas(server: RedisServer, algorithm: str, n: int = 2, **quota):
    reader = FieldReader("handlers.yaml", "redisquota istio-system/handler", {})
    reader.data = spec(f"{server.host}:{server.port}", algorithm, **quota)  # Istio's form
    params = redisquota.KIND.parse_params(reader)
    assert params is not None, [str(e) for e in reader.errors]
    return [await redisquota.KIND.build(params, env(i)) for i in range(n)]


async def close(handlers):
    for h in handlers:
        await h.close()


def q(**dims) -> Quota:
    return Quota(NAME, dims)


@pytest.mark.parametrize("algorithm", ["FIXED_WINDOW", "ROLLING_WINDOW"])
async def test_two_replicas_share_one_limit(redis_server: RedisServer, algorithm: str):
    a, b = await replicas(redis_server, algorithm)
    try:
        calls = [(a if i % 2 else b).quota(q(source="x"), QuotaRequest(1)) for i in range(60)]
        results = await asyncio.gather(*calls)  # concurrent, through both pools
        assert sum(r.granted for r in results) == 10
        granted = [r for r in results if r.granted]
        assert all(dt.timedelta(0) < r.valid_duration <= dt.timedelta(seconds=3) for r in granted)
        # overrides by dimension, and every dimension set counts on its own
        ratings = await asyncio.gather(
            *[(a, b)[i % 2].quota(q(destination="ratings"), QuotaRequest(1)) for i in range(9)]
        )
        assert sum(r.granted for r in ratings) == 3
        other = await a.quota(q(source="y"), QuotaRequest(4))
        assert other.granted == 4
    finally:
        await close([a, b])


@pytest.mark.parametrize("algorithm", ["FIXED_WINDOW", "ROLLING_WINDOW"])
async def test_best_effort_and_all_or_nothing(redis_server: RedisServer, algorithm: str):
    a, b = await replicas(redis_server, algorithm)
    try:
        assert (await a.quota(q(), QuotaRequest(7))).granted == 7
        assert (await b.quota(q(), QuotaRequest(7))).granted == 0
        assert (await b.quota(q(), QuotaRequest(7, best_effort=True))).granted == 3
        assert (await a.quota(q(), QuotaRequest(1, best_effort=True))).granted == 0
    finally:
        await close([a, b])


@pytest.mark.parametrize("algorithm", ["FIXED_WINDOW", "ROLLING_WINDOW"])
async def test_retried_request_is_not_charged_twice(redis_server: RedisServer, algorithm: str):
    a, b = await replicas(redis_server, algorithm)
    try:
        first = await a.quota(q(), QuotaRequest(6, deduplication_id="check-1"))
        # the proxy retries through the other replica: same answer, nothing consumed
        again = await b.quota(q(), QuotaRequest(6, deduplication_id="check-1"))
        assert first.granted == again.granted == 6
        assert (await b.quota(q(), QuotaRequest(4, deduplication_id="check-2"))).granted == 4
        assert (await a.quota(q(), QuotaRequest(1, deduplication_id="check-3"))).granted == 0
    finally:
        await close([a, b])


async def test_fixed_window_reopens_after_valid_duration(redis_server: RedisServer):
    (a,) = await replicas(redis_server, "FIXED_WINDOW", n=1, validDuration="1s")
    try:
        started = time.monotonic()
        assert (await a.quota(q(), QuotaRequest(10))).granted == 10
        refused = await a.quota(q(), QuotaRequest(1))
        assert refused.granted == 0
        while (await a.quota(q(), QuotaRequest(1))).granted == 0:
            assert time.monotonic() - started < 3, "the window never reopened"
            await asyncio.sleep(0.05)
        assert 0.8 < time.monotonic() - started < 2.0
    finally:
        await a.close()


async def test_rolling_window_returns_tokens_bucket_by_bucket(redis_server: RedisServer):
    (a,) = await replicas(
        redis_server, "ROLLING_WINDOW", n=1, validDuration="2s", bucketDuration="500ms"
    )
    try:
        assert (await a.quota(q(), QuotaRequest(6))).granted == 6
        await asyncio.sleep(1.0)
        assert (await a.quota(q(), QuotaRequest(4))).granted == 4
        assert (await a.quota(q(), QuotaRequest(1))).granted == 0
        # ~2 s after the first grant its bucket leaves the window: 6 come back, the later 4 not
        deadline = time.monotonic() + 3
        while (await a.quota(q(), QuotaRequest(6))).granted == 0:
            assert time.monotonic() < deadline, "the first bucket never expired"
            await asyncio.sleep(0.05)
        assert (await a.quota(q(), QuotaRequest(1))).granted == 0
    finally:
        await a.close()


async def test_redis_down_fails_calls_and_recovery_needs_no_rebuild(tmp_path):
    from integration.peers.redis import start_redis

    with start_redis(tmp_path / "r1") as server:
        host, port = server.host, server.port
        (a,) = await replicas(server, "FIXED_WINDOW", n=1)
        assert (await a.quota(q(), QuotaRequest(1))).granted == 1
    try:
        # Redis is gone: the call raises (the runtime applies the rule's fail policy), promptly
        started = time.monotonic()
        with pytest.raises(redis.exceptions.ConnectionError):
            await a.quota(q(), QuotaRequest(1))
        assert time.monotonic() - started < redisquota.SOCKET_TIMEOUT * 3
        # Redis is back at the same address: the same handler serves again (a fresh, empty Redis)
        with start_redis(tmp_path / "r2", host, port):
            assert (await a.quota(q(), QuotaRequest(10))).granted == 10
    finally:
        await a.close()


async def test_quota_without_a_limit_fails_the_call_naming_it(redis_server: RedisServer):
    (a,) = await replicas(redis_server, "FIXED_WINDOW", n=1)
    try:
        with pytest.raises(LookupError, match=r"no limit for quota 'other\.quota\.default'"):
            await a.quota(Quota("other.quota.default", {}), QuotaRequest(1))
    finally:
        await a.close()
