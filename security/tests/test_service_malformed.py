"""Hostile Sign requests against a real CA gRPC server (``grpc.aio``, TLS, loopback).

Generated malformed requests (wrong types, not PEM, not a CSR, absurd lifetimes, malformed
identities, oversized fields, deep nesting, bytes that are not JSON) must all be answered
INVALID_ARGUMENT with a short message, must not consume the caller's join token, and must leave
no traceback in the log; generated valid requests must still be signed.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshfed.security import identity
from meshfed.security.ca import CertificateAuthority
from meshfed.security.service import CAServer, SigningService
from meshfed.security.sign_request import MAX_CSR_CHARS, MAX_IDENTITY_CHARS, MAX_TTL_SECONDS
from meshfed.security.storage import FileStorage
from meshfed.security.tokens import JoinTokenStore
from meshfed.security.wire import CA_SERVER_NAME, JOIN_TOKEN_HEADER, SIGN_METHOD

CART = "spiffe://example.org/ns/shop/sa/cart"
MAX_DETAIL = 300  # a refusal's message is a sentence, not a dump


def _csr_pem(key: Any) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    # Ed25519 signs the message itself: no hash.
    csr = builder.sign(key, None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _pem(der: bytes, label: str = "CERTIFICATE REQUEST") -> str:
    body = base64.encodebytes(der).decode()
    return f"-----BEGIN {label}-----\n{body}-----END {label}-----\n"


class LiveCA:
    """A CA gRPC server on its own event loop thread, and a TLS channel to its bootstrap port."""

    def __init__(self, folder: Path) -> None:
        self.ca = CertificateAuthority.load_or_create(FileStorage(folder / "ca"), "example.org")
        self.tokens = JoinTokenStore(folder / "tokens.json")
        self.server = CAServer(SigningService(self.ca, self.tokens), "127.0.0.1:0", "127.0.0.1:0")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._run(self._start())

    def _run(self, coro: Any, timeout: float = 30) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    async def _start(self) -> None:
        await self.server.start()
        creds = grpc.ssl_channel_credentials(self.ca.root_pem)
        self.channel = grpc.aio.secure_channel(
            self.server.bootstrap_target,
            creds,
            options=[
                ("grpc.ssl_target_name_override", CA_SERVER_NAME),
                ("grpc.max_send_message_length", 8 * 1024 * 1024),
            ],
        )
        self.sign = self.channel.unary_unary(
            SIGN_METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )

    async def _call(self, body: bytes, token: str) -> tuple[grpc.StatusCode, str, bytes]:
        try:
            answer = await self.sign(body, metadata=[(JOIN_TOKEN_HEADER, token)], timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or "", b""
        return grpc.StatusCode.OK, "", answer

    def call(self, body: bytes, token: str) -> tuple[grpc.StatusCode, str, bytes]:
        return self._run(self._call(body, token))

    def stop(self) -> None:
        async def close() -> None:
            await self.channel.close()
            await self.server.stop(0)

        self._run(close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class Records(logging.Handler):
    """Every log record of every logger, to look for tracebacks."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def tracebacks(self) -> list[str]:
        return [
            f"{r.name}: {r.getMessage()[:200]}"
            for r in self.records
            if r.exc_info or r.stack_info or "Traceback" in r.getMessage()
        ]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCA]:
    server = LiveCA(tmp_path_factory.mktemp("live-ca"))
    yield server
    server.stop()


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


# -- what a bad request looks like -----------------------------------------------------------
EC_CSR = _csr_pem(ec.generate_private_key(ec.SECP256R1()))
RSA_1024_CSR = _csr_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))
P192_CSR = _csr_pem(ec.generate_private_key(ec.SECP192R1()))
DSA_CSR = _csr_pem(dsa.generate_private_key(2048))


def _tampered(pem: str) -> str:
    der = bytearray(x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte of the signature
    return _pem(bytes(der))


def _root_certificate() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    return (
        identity.self_signed_root(key, "example.org", dt.timedelta(days=1), now)
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)

bad_csrs = st.one_of(
    json_values.filter(lambda v: not isinstance(v, str)),  # wrong type, null included
    st.text(max_size=200),  # not PEM
    st.binary(min_size=1, max_size=300).map(_pem),  # PEM framing around garbage
    st.binary(min_size=1, max_size=300).map(lambda b: _pem(b, "CERTIFICATE")),
    st.just(_root_certificate()),  # a certificate, not a request
    st.just(_tampered(EC_CSR)),  # the signature does not verify
    st.sampled_from([RSA_1024_CSR, P192_CSR, DSA_CSR]),  # keys the CA does not sign for
    st.integers(1, 3).map(lambda n: EC_CSR + "A" * (MAX_CSR_CHARS * n)),  # oversized
    # Truncated: at least the last dash of the END line is gone (a missing newline is fine).
    st.integers(0, len(EC_CSR.rstrip()) - 1).map(lambda i: EC_CSR[:i]),
)

# Characters no SPIFFE ID may hold anywhere: inserting one makes any ID malformed.
forbidden = st.characters(blacklist_categories=("Cs",)).filter(
    lambda c: not (c.isascii() and (c.isalnum() or c in "._-/"))
)
bad_identities = st.one_of(
    json_values.filter(lambda v: v is not None and not isinstance(v, str)),
    st.tuples(st.integers(0, len(CART)), forbidden).map(
        lambda t: CART[: t[0]] + t[1] + CART[t[0] :]
    ),
    st.sampled_from(
        [
            "example.org/ns/shop/sa/cart",  # no scheme
            "spiffe://Example.org/ns/shop/sa/cart",  # upper-case trust domain
            "spiffe://example.org/ns/shop/sa/cart/extra",
            "spiffe://example.org/ns/shop",
            "spiffe://example.org/namespace/shop/sa/cart",
            "spiffe://example.org/ns/../sa/cart",
            "spiffe://example.org/ns/shop/sa/.",
            "spiffe://example.org/ns//sa/cart",
            "spiffe:///ns/shop/sa/cart",
            "spiffe://example.org",
        ]
    ),
    st.integers(1, 3).map(lambda n: CART + "x" * (MAX_IDENTITY_CHARS * n)),  # oversized
)

bad_ttls = st.one_of(
    json_values.filter(lambda v: v is not None and not isinstance(v, int | float)),
    st.booleans(),
    st.integers(max_value=0),
    st.floats(max_value=0, allow_nan=False),
    st.integers(min_value=MAX_TTL_SECONDS + 1),
    st.floats(min_value=MAX_TTL_SECONDS + 1),  # infinity included
    st.just(float("nan")),
    st.integers(300, 4000).map(lambda digits: 10**digits),
)


def _body(**fields: Any) -> bytes:
    base: dict[str, Any] = {"csr": EC_CSR, "identity": CART, "ttl_seconds": 600}
    base.update(fields)
    return json.dumps(base).encode()


malformed_requests = st.one_of(
    bad_csrs.map(lambda v: _body(csr=v)),
    bad_identities.map(lambda v: _body(identity=v)),
    bad_ttls.map(lambda v: _body(ttl_seconds=v)),
    st.just(json.dumps({"identity": CART}).encode()),  # no csr at all
    json_values.filter(lambda v: not isinstance(v, dict)).map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),  # not JSON, or not UTF-8
    st.integers(1_000, 30_000).map(lambda n: b"[" * n + b"]" * n),  # nesting bomb
    st.integers(1_000, 20_000).map(lambda n: b'{"csr": ' + b'{"a": ' * n + b"1" + b"}" * n + b"}"),
    # An integer of more digits than Python converts (json.dumps could not even write it).
    st.integers(4_400, 60_000).map(
        lambda n: _body(ttl_seconds=0).replace(b'"ttl_seconds": 0', b'"ttl_seconds": ' + b"9" * n)
    ),
    st.integers(65 * 1024, 900 * 1024).map(lambda n: _body(pad="x" * n)),  # oversized request
)


def test_malformed_requests_get_invalid_argument_and_no_traceback(
    live: LiveCA, records: Records
) -> None:
    token = live.tokens.create("shop", "cart")
    seen: dict[str, int] = {}

    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(malformed_requests)
    def refused(body: bytes) -> None:
        code, details, _ = live.call(body, token)
        assert code is grpc.StatusCode.INVALID_ARGUMENT, (code, details, body[:200])
        assert details and len(details) <= MAX_DETAIL, details
        seen[details.split(" ", 1)[0]] = seen.get(details.split(" ", 1)[0], 0) + 1

    refused()
    assert not records.tracebacks(), records.tracebacks()[:5]
    assert len(seen) >= 5, seen  # the refusals came from different checks, not one
    # None of them consumed the token: a valid request with it is still signed.
    code, details, answer = live.call(_body(), token)
    assert code is grpc.StatusCode.OK, details
    assert json.loads(answer)["identity"] == CART


def test_a_request_over_the_transport_limit_is_resource_exhausted(
    live: LiveCA, records: Records
) -> None:
    token = live.tokens.create("shop", "cart")
    code, details, _ = live.call(_body(pad="x" * (2 * 1024 * 1024)), token)
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, details
    assert not records.tracebacks()


KEYS = {
    "ec-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ec-p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
    "rsa-2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
}
valid_requests = st.fixed_dictionaries(
    {"csr": st.sampled_from(sorted(KEYS))},
    optional={
        "identity": st.sampled_from([None, "", CART]),
        "ttl_seconds": st.none()
        | st.integers(1, MAX_TTL_SECONDS)
        | st.floats(min_value=0.5, max_value=MAX_TTL_SECONDS),
        "unknown_field": json_values,
    },
)


def test_valid_requests_are_still_signed(live: LiveCA, records: Records) -> None:
    @settings(max_examples=25, deadline=None, database=None)
    @given(valid_requests)
    def signed(request: dict[str, Any]) -> None:
        body = {**request, "csr": _csr_pem(KEYS[request["csr"]]())}
        token = live.tokens.create("shop", "cart")
        code, details, answer = live.call(json.dumps(body).encode(), token)
        assert code is grpc.StatusCode.OK, (details, request)
        issued = json.loads(answer)
        leaf = identity.load_pem_chain(issued["certificate_chain"].encode())[0]
        assert identity.spiffe_id_of(leaf) == CART
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        wanted = request.get("ttl_seconds") or live.ca.default_ttl.total_seconds()
        assert lifetime <= dt.timedelta(seconds=min(wanted, live.ca.max_ttl.total_seconds()) + 61)

    signed()
    assert not records.tracebacks(), records.tracebacks()[:5]
