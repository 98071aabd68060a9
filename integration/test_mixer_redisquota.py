"""Mixer's redisquota handler against a real redis-server: one limit shared by replicas.

Two handler instances with their own connection pools stand for two Mixer replicas; requests
through both, interleaved and concurrent, are granted exactly ``maxAmount`` per window, for the
fixed and the rolling algorithm, with overrides and deduplication, and a Redis outage fails
calls (for the runtime's fail policy) and recovers with Redis.

Then the whole path: two ``meshfed up`` processes with Mixer enabled, each on its own gRPC port,
share one ``redisquota`` limit through concurrent Checks from a client written against the protos.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

import grpc
import prometheus_client
import pytest
import redis.exceptions
from grpc_health.v1 import health_pb2, health_pb2_grpc

from integration.peers.redis import RedisServer
from integration.pilot_helpers import addr
from meshfed.core.resources import FieldReader
from meshfed.mixer.api.service import MixerStub
from meshfed.mixer.api.v1 import check_pb2
from meshfed.mixer.attributes import codec
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


# -- two hubs ------------------------------------------------------------------------------------

HUB_HOST = addr(98, 1)
MAX_AMOUNT, WINDOW = 10, 2.0

# Istio 0.2's rate-limit shape (a quota instance, a rule, the handler) with redisquota, the
# handler the seed promised for the next release, as its users would write it.
SHARED_LIMIT = """\
apiVersion: "config.istio.io/v1alpha2"
kind: redisquota
metadata:
  name: handler
  namespace: istio-system
spec:
  redisServerUrl: {redis}
  connectionPoolSize: 10
  quotas:
  - name: requestcount.quota.istio-system
    maxAmount: {max_amount}
    validDuration: {window}s
    bucketDuration: 500ms
    rateLimitAlgorithm: {algorithm}
---
apiVersion: "config.istio.io/v1alpha2"
kind: quota
metadata:
  name: requestcount
  namespace: istio-system
spec:
  dimensions:
    source: source.labels["app"] | source.service | "unknown"
    destination: destination.labels["app"] | destination.service | "unknown"
---
apiVersion: "config.istio.io/v1alpha2"
kind: rule
metadata:
  name: quota
  namespace: istio-system
spec:
  actions:
  - handler: handler.redisquota
    instances:
    - requestcount.quota
"""


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _hub_config(tmp_path: Path, index: int, policy: Path) -> tuple[Path, int]:
    mixer_port, monitoring = _free_port(HUB_HOST), _free_port(HUB_HOST)
    path = tmp_path / f"mesh-{index}.yaml"
    path.write_text(
        "apiVersion: meshfed.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: m}\nspec:\n"
        f"  listen: {{monitoring: '{HUB_HOST}:{monitoring}', discovery: '{HUB_HOST}:0'}}\n"
        "  mixer:\n"
        "    enabled: true\n"
        f"    listen: '{HUB_HOST}:{mixer_port}'\n"
        f"    configPaths: [{policy}]\n"
        "    kubernetes: false\n"
    )
    return path, mixer_port


@contextlib.asynccontextmanager
async def hub_process(tmp_path: Path, index: int, policy: Path):
    """``meshfed up`` with Mixer enabled; yields a channel once Mixer's health is SERVING."""
    config, port = _hub_config(tmp_path, index, policy)
    log = (tmp_path / f"hub-{index}.log").open("wb")
    env = {**os.environ, "MESHFED_WORKLOAD_STATE": ""}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshfed.cli", "up", "--config", str(config),
        stdout=log, stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    channel = grpc.aio.insecure_channel(f"{HUB_HOST}:{port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 30
        while True:
            assert proc.returncode is None, (tmp_path / f"hub-{index}.log").read_text()
            assert time.monotonic() < deadline, "hub did not serve Mixer within 30 s"
            try:
                reply = await health.Check(
                    health_pb2.HealthCheckRequest(service="istio.mixer.v1.Mixer"), timeout=2
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.2)
        yield channel
    finally:
        await channel.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()
    text = (tmp_path / f"hub-{index}.log").read_text()
    assert proc.returncode == 0 and "Traceback" not in text, text


def ask(dedup: str = "", amount: int = 1) -> check_pb2.CheckRequest:
    request = check_pb2.CheckRequest(
        attributes=codec.encode(
            {"source.service": "productpage", "destination.service": "ratings"}
        ),
        deduplication_id=dedup,
    )
    request.quotas["requestcount"].amount = amount
    return request


@pytest.mark.parametrize("algorithm", ["FIXED_WINDOW", "ROLLING_WINDOW"])
async def test_two_hubs_share_one_limit(redis_server: RedisServer, tmp_path: Path, algorithm):
    """Two ``meshfed up`` processes, each serving Mixer on its own port from the same config,
    count one limit in one Redis: concurrent Checks through both are granted exactly
    ``maxAmount`` per window, and a retry through the other hub is not charged again."""
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "mixer.yaml").write_text(
        SHARED_LIMIT.format(
            redis=f"{redis_server.host}:{redis_server.port}",
            max_amount=MAX_AMOUNT,
            window=WINDOW,
            algorithm=algorithm,
        )
    )
    async with (
        hub_process(tmp_path, 0, policy) as one,
        hub_process(tmp_path, 1, policy) as two,
    ):
        stubs = (MixerStub(one), MixerStub(two))

        async def burst(count: int) -> tuple[int, float]:
            started = time.monotonic()
            replies = await asyncio.gather(*(stubs[i % 2].Check(ask()) for i in range(count)))
            ended = time.monotonic()
            # the limit is per window: a burst longer than one proves nothing
            assert ended - started < WINDOW * 0.8, f"the burst took {ended - started:.2f}s"
            assert all(r.precondition.status.code == 0 for r in replies)
            return sum(r.quotas["requestcount"].granted_amount for r in replies), ended

        granted, ended = await burst(6 * MAX_AMOUNT)
        assert granted == MAX_AMOUNT
        # every grant of the burst has left the window (fixed: its end; rolling: its buckets)
        await asyncio.sleep(max(0.0, ended + WINDOW + 0.6 - time.monotonic()))

        # a retried Check: the first hub grants 3, the second gives the same answer for free
        first = await stubs[0].Check(ask("retry-1", amount=3))
        again = await stubs[1].Check(ask("retry-1", amount=3))
        assert first.quotas["requestcount"].granted_amount == 3
        assert again.quotas["requestcount"].granted_amount == 3
        granted, _ = await burst(6 * MAX_AMOUNT)
        assert granted == MAX_AMOUNT - 3
