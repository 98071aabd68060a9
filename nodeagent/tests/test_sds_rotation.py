"""SDS over a real Unix socket (gRPC client = Envoy's protocol) and the renewal schedule."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import stat
from pathlib import Path

import grpc
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from meshfed.nodeagent.rotation import Rotator, renewal_delay
from meshfed.nodeagent.sds import CERT_NAME, ROOT_NAME, SECRET_TYPE, SDSServer


def _secrets(response: discovery_pb2.DiscoveryResponse) -> dict[str, secret_pb2.Secret]:
    out = {}
    for res in response.resources:
        secret = secret_pb2.Secret()
        res.Unpack(secret)
        out[secret.name] = secret
    return out


async def test_sds_serves_requested_secrets_and_pushes_updates(tmp_path: Path) -> None:
    sock = tmp_path / "agent" / "sds.sock"
    sds = SDSServer(sock)
    sds.update(b"CHAIN1", b"KEY1", b"ROOT1")
    await sds.start()
    try:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        async with grpc.aio.insecure_channel(f"unix:{sock}") as channel:
            stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
            requests: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()

            async def gen():  # type: ignore[no-untyped-def]
                while True:
                    yield await requests.get()

            stream = stub.StreamSecrets(gen())
            await requests.put(
                discovery_pb2.DiscoveryRequest(resource_names=[CERT_NAME], type_url=SECRET_TYPE)
            )
            first = await asyncio.wait_for(stream.read(), 5)
            got = _secrets(first)
            assert list(got) == [CERT_NAME]  # only what was asked for
            assert got[CERT_NAME].tls_certificate.private_key.inline_bytes == b"KEY1"
            # ACK it, then rotate: the new version is pushed without another request.
            await requests.put(
                discovery_pb2.DiscoveryRequest(
                    resource_names=[CERT_NAME],
                    version_info=first.version_info,
                    response_nonce=first.nonce,
                    type_url=SECRET_TYPE,
                )
            )
            for _ in range(50):
                if sds.acked_versions() == {first.version_info}:
                    break
                await asyncio.sleep(0.02)
            assert sds.all_acked(int(first.version_info))
            version = sds.update(b"CHAIN2", b"KEY2", b"ROOT2")
            second = await asyncio.wait_for(stream.read(), 5)
            assert second.version_info == str(version)
            assert _secrets(second)[CERT_NAME].tls_certificate.certificate_chain.inline_bytes == (
                b"CHAIN2"
            )
            fetched = await stub.FetchSecrets(
                discovery_pb2.DiscoveryRequest(resource_names=[ROOT_NAME])
            )
            assert _secrets(fetched)[ROOT_NAME].validation_context.trusted_ca.inline_bytes == (
                b"ROOT2"
            )
            stream.cancel()
    finally:
        await sds.stop()
    assert not sock.exists()


def test_renewal_is_at_half_life_with_bounded_jitter() -> None:
    received = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    not_after = received + dt.timedelta(seconds=100)
    rng = random.Random(7)
    delays = [renewal_delay(received, not_after, 0.5, 0.1, rng) for _ in range(500)]
    assert all(40.0 <= d <= 60.0 for d in delays)
    assert len({round(d, 3) for d in delays}) > 100  # really jittered, not one value
    assert renewal_delay(received, not_after, 0.5, 0.0) == 50.0
    assert renewal_delay(not_after, received) == 0.0  # already expired: renew at once


async def test_rotator_retries_a_failed_renewal_and_keeps_going() -> None:
    calls: list[float] = []
    now = [dt.datetime.now(dt.UTC)]

    async def renew() -> dt.datetime:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) == 1:
            raise ConnectionError("CA restarting")
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.2)

    rotator = Rotator(renew, jitter=0.0, min_retry=0.01, max_retry=0.05)
    task = asyncio.create_task(rotator.run(now[0] + dt.timedelta(seconds=0.1)))
    try:
        for _ in range(200):
            if rotator.rotations >= 3:
                break
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
    assert rotator.rotations >= 3
    assert len(calls) >= 4  # one failure, then successes
