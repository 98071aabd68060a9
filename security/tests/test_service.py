"""The signing service over real gRPC on loopback: who may get which identity."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from meshfed.nodeagent.client import CAClient, CARefused
from meshfed.nodeagent.keys import generate_key, key_pem, make_csr
from meshfed.security import identity
from meshfed.security.ca import CertificateAuthority
from meshfed.security.service import CAServer, SigningService
from meshfed.security.tokens import JoinTokenStore

CART = "spiffe://example.org/ns/shop/sa/cart"
PAYMENTS = "spiffe://example.org/ns/shop/sa/payments"


@pytest.fixture
async def server(ca: CertificateAuthority, tmp_path: Path) -> AsyncIterator[CAServer]:
    service = SigningService(ca, JoinTokenStore(tmp_path / "tokens.json"))
    srv = CAServer(service, "127.0.0.1:0", "127.0.0.1:0")
    await srv.start()
    yield srv
    await srv.stop()


def _client(srv: CAServer, attempts: int = 2) -> CAClient:
    return CAClient(
        srv.bootstrap_target, srv.renewal_target, srv.service.ca.root_pem, attempts=attempts
    )


async def test_join_token_gets_its_identity_and_renewal_keeps_it(server: CAServer) -> None:
    token = server.service.tokens.create("shop", "cart")  # type: ignore[union-attr]
    key = generate_key()
    first = await _client(server).bootstrap(make_csr(key), join_token=token, identity=CART)
    assert first.identity == CART
    chain = identity.load_pem_chain(first.chain_pem)
    assert identity.spiffe_id_of(chain[0]) == CART
    assert chain[0].public_key().public_numbers() == key.public_key().public_numbers()
    assert first.root_pem == server.service.ca.root_pem

    new_key = generate_key()
    renewed = await _client(server).renew(
        make_csr(new_key), key_pem(key), first.chain_pem, ttl=dt.timedelta(seconds=30)
    )
    leaf = identity.load_pem_chain(renewed.chain_pem)[0]
    assert renewed.identity == CART
    assert leaf.serial_number != chain[0].serial_number
    assert leaf.not_valid_after_utc - dt.datetime.now(dt.UTC) <= dt.timedelta(seconds=30)


async def test_token_for_a_cannot_obtain_b_and_the_refusal_is_logged(
    server: CAServer, caplog: pytest.LogCaptureFixture
) -> None:
    token = server.service.tokens.create("shop", "cart")  # type: ignore[union-attr]
    with (
        caplog.at_level(logging.WARNING, "meshfed.security.service"),
        pytest.raises(CARefused) as refused,
    ):
        await _client(server).bootstrap(
            make_csr(generate_key()), join_token=token, identity=PAYMENTS
        )
    assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert "refused signing request" in caplog.text and "payments" in caplog.text


async def test_used_token_cannot_be_replayed(server: CAServer) -> None:
    token = server.service.tokens.create("shop", "cart")  # type: ignore[union-attr]
    await _client(server).bootstrap(make_csr(generate_key()), join_token=token)
    with pytest.raises(CARefused, match="already used") as refused:
        await _client(server).bootstrap(make_csr(generate_key()), join_token=token)
    assert refused.value.code is grpc.StatusCode.UNAUTHENTICATED


async def test_certificate_cannot_renew_into_another_identity(server: CAServer) -> None:
    token = server.service.tokens.create("shop", "cart")  # type: ignore[union-attr]
    key = generate_key()
    first = await _client(server).bootstrap(make_csr(key), join_token=token)
    with pytest.raises(CARefused) as refused:
        await _client(server).renew(
            make_csr(generate_key()), key_pem(key), first.chain_pem, identity=PAYMENTS
        )
    assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED


async def test_expired_certificate_cannot_renew(server: CAServer) -> None:
    ca = server.service.ca
    key = generate_key()
    past = ca.signer_cert.not_valid_before_utc + dt.timedelta(seconds=1)
    expired = ca.sign(identity.load_csr(make_csr(key)), CART, dt.timedelta(seconds=30), now=past)
    issued_before = _issued_total()
    with pytest.raises(CARefused) as refused:
        await _client(server, attempts=1).renew(
            make_csr(generate_key()), key_pem(key), expired.chain_pem
        )
    # The mutual-TLS handshake rejects the expired certificate before any RPC is served.
    assert refused.value.code is grpc.StatusCode.UNAVAILABLE
    assert _issued_total() == issued_before


async def test_no_credential_and_bad_csr_are_refused(server: CAServer) -> None:
    with pytest.raises(CARefused) as refused:
        await _client(server).bootstrap(make_csr(generate_key()))
    assert refused.value.code is grpc.StatusCode.UNAUTHENTICATED
    token = server.service.tokens.create("shop", "cart")  # type: ignore[union-attr]
    with pytest.raises(CARefused) as refused:
        await _client(server).bootstrap(b"garbage", join_token=token)
    assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT
    # A bad request must not burn the token.
    ok = await _client(server).bootstrap(make_csr(generate_key()), join_token=token)
    assert ok.identity == CART
    with pytest.raises(CARefused) as refused:
        await _client(server).bootstrap(
            make_csr(generate_key()), kubernetes_token="eyJhbGciOi.fake.token"
        )
    assert "not configured" in refused.value.details


async def test_a_client_that_does_not_trust_the_root_is_refused(
    server: CAServer, tmp_path: Path
) -> None:
    from meshfed.security.storage import FileStorage

    other = CertificateAuthority.load_or_create(FileStorage(tmp_path / "other"), "example.org")
    client = CAClient(server.bootstrap_target, server.renewal_target, other.root_pem, attempts=1)
    token = server.service.tokens.create("shop", "cart")  # type: ignore[union-attr]
    with pytest.raises(CARefused):
        await client.bootstrap(make_csr(generate_key()), join_token=token)


def _issued_total() -> float:
    from prometheus_client import REGISTRY

    return sum(
        s.value
        for m in REGISTRY.collect()
        if m.name == "meshfed_ca_certificates_issued"
        for s in m.samples
        if s.name.endswith("_total")
    )


async def test_health_check_and_refusal_metrics(server: CAServer) -> None:
    from prometheus_client import REGISTRY

    def refused(reason: str) -> float:
        return REGISTRY.get_sample_value("meshfed_ca_sign_refused_total", {"reason": reason}) or 0

    before = refused("no-credential")
    with pytest.raises(CARefused):
        await _client(server).bootstrap(make_csr(generate_key()))
    assert refused("no-credential") == before + 1

    creds = grpc.ssl_channel_credentials(server.service.ca.root_pem)
    options = [("grpc.ssl_target_name_override", "meshfed-ca")]
    async with grpc.aio.secure_channel(server.bootstrap_target, creds, options=options) as ch:
        check = ch.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        # HealthCheckResponse{status: SERVING}, protobuf field 1 varint 1.
        assert await check(b"", timeout=5) == b"\x08\x01"


async def test_serving_certificate_is_reissued_at_half_life(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    import asyncio
    import socket
    import ssl

    srv = CAServer(
        SigningService(ca, JoinTokenStore(tmp_path / "t.json")),
        "127.0.0.1:0",
        "127.0.0.1:0",
        serving_ttl=dt.timedelta(seconds=2),
    )
    await srv.start()
    try:

        def presented() -> bytes:
            ctx = ssl.create_default_context(cadata=ca.root_pem.decode())
            ctx.check_hostname = False
            ctx.set_alpn_protocols(["h2"])
            host, _, port = srv.bootstrap_target.rpartition(":")
            with (
                socket.create_connection((host, int(port)), timeout=5) as raw,
                ctx.wrap_socket(raw) as tls,
            ):
                der = tls.getpeercert(binary_form=True)
                assert der is not None
                return der

        first = await asyncio.to_thread(presented)
        await asyncio.sleep(1.2)  # past half of the 2 s lifetime
        second = await asyncio.to_thread(presented)
        assert first != second
        assert srv.serving[0].issued >= 2
        # ... and the service still answers (its new certificate verifies against the root).
        token = srv.service.tokens.create("shop", "cart")  # type: ignore[union-attr]
        ok = await _client(srv).bootstrap(make_csr(generate_key()), join_token=token)
        assert ok.identity == CART
    finally:
        await srv.stop()
