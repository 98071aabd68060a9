"""Client of the CA's signing service (see :mod:`security.service` for the wire format).

Why: a caller's only ways to get an identity are "first time, with a token" and "renew, with
the certificate I have"; this module is those two calls and nothing else. It sits in the
security layer so both the node agent and the hub's injection webhook (which takes its serving
certificate from the running CA with the hub's service-account token) can use it.

Promises:
- ``trust_bundle()`` fetches the CA's current roots (no credential), so an agent learns a root
  rotation before its own certificate is due.
- Only a CSR is ever sent; the private key stays in the caller's memory.
- The CA is authenticated by the trust bundle the agent was given (``--ca-root``) on the first
  call, and by the mesh's current roots afterwards; the server name checked is the CA's DNS SAN
  (:data:`security.wire.CA_SERVER_NAME`), so the CA may listen on any loopback/IP address.
- Transient failures (the CA restarting, UNAVAILABLE, deadline) are retried with jittered
  exponential backoff by ``tenacity``; refusals (PERMISSION_DENIED, UNAUTHENTICATED,
  INVALID_ARGUMENT) are raised at once as :class:`CARefused`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

import attrs
import grpc
import tenacity

from meshfed.security.wire import BUNDLE_METHOD, CA_SERVER_NAME, JOIN_TOKEN_HEADER, SIGN_METHOD

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


class CARefused(Exception):
    """The CA answered with a non-retryable error."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@attrs.frozen(slots=True)
class SignResponse:
    chain_pem: bytes
    root_pem: bytes
    identity: str
    not_after: dt.datetime


class CAClient:
    """Calls the CA's bootstrap port (tokens) and renewal port (mutual TLS)."""

    def __init__(
        self,
        bootstrap_target: str,
        renewal_target: str,
        root_pem: bytes,
        server_name: str = CA_SERVER_NAME,
        timeout: float = 10.0,
        attempts: int = 6,
    ) -> None:
        self.bootstrap_target = bootstrap_target
        self.renewal_target = renewal_target
        self.root_pem = root_pem
        self.server_name = server_name
        self.timeout = timeout
        self.attempts = attempts

    async def bootstrap(
        self,
        csr_pem: bytes,
        *,
        join_token: str | None = None,
        kubernetes_token: str | None = None,
        identity: str | None = None,
        ttl: dt.timedelta | None = None,
        ip_addresses: Sequence[str] = (),
    ) -> SignResponse:
        """First certificate, authenticated by a join token or a Kubernetes token."""
        metadata: list[tuple[str, str]] = []
        if join_token:
            metadata.append((JOIN_TOKEN_HEADER, join_token))
        if kubernetes_token:
            metadata.append(("authorization", f"Bearer {kubernetes_token}"))
        creds = grpc.ssl_channel_credentials(root_certificates=self.root_pem)
        # A join token is single use. UNAVAILABLE almost always means the call never reached
        # the CA, so it is retried; if an answer was lost after the CA used the token, the retry
        # is refused as a replay ("already used") and the operator issues a new token.
        return await self._call(
            self.bootstrap_target, creds, csr_pem, identity, ttl, metadata, ip_addresses
        )

    async def renew(
        self,
        csr_pem: bytes,
        key_pem: bytes,
        chain_pem: bytes,
        *,
        identity: str | None = None,
        ttl: dt.timedelta | None = None,
        ip_addresses: Sequence[str] = (),
    ) -> SignResponse:
        """A new certificate, authenticated by the current one over mutual TLS."""
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.root_pem, private_key=key_pem, certificate_chain=chain_pem
        )
        return await self._call(
            self.renewal_target, creds, csr_pem, identity, ttl, [], ip_addresses
        )

    async def trust_bundle(self) -> bytes:
        """The CA's current trust bundle (public; the CA is authenticated by our bundle)."""
        creds = grpc.ssl_channel_credentials(root_certificates=self.root_pem)
        options = [("grpc.ssl_target_name_override", self.server_name)]
        try:
            async with grpc.aio.secure_channel(
                self.bootstrap_target, creds, options=options
            ) as channel:
                call = channel.unary_unary(
                    BUNDLE_METHOD,
                    request_serializer=lambda b: b,
                    response_deserializer=lambda b: b,
                )
                raw = await call(b"{}", timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise CARefused(exc.code(), exc.details() or "") from None
        return json.loads(raw)["root_certificates"].encode()

    async def _call(
        self,
        target: str,
        creds: grpc.ChannelCredentials,
        csr_pem: bytes,
        identity: str | None,
        ttl: dt.timedelta | None,
        metadata: list[tuple[str, str]],
        ip_addresses: Sequence[str] = (),
    ) -> SignResponse:
        body: dict[str, Any] = {"csr": csr_pem.decode()}
        if ip_addresses:
            body["ip_addresses"] = list(ip_addresses)
        if identity:
            body["identity"] = identity
        if ttl is not None:
            body["ttl_seconds"] = ttl.total_seconds()
        request = json.dumps(body).encode()
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=tenacity.wait_random_exponential(multiplier=0.2, max=5),
            retry=tenacity.retry_if_exception(
                lambda e: isinstance(e, grpc.aio.AioRpcError) and e.code() in RETRYABLE
            ),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    raw = await self._once(target, creds, request, metadata)
        except grpc.aio.AioRpcError as exc:
            raise CARefused(exc.code(), exc.details() or "") from None
        answer = json.loads(raw)
        return SignResponse(
            chain_pem=answer["certificate_chain"].encode(),
            root_pem=answer["root_certificates"].encode(),
            identity=answer["identity"],
            not_after=dt.datetime.fromisoformat(answer["not_after"]),
        )

    async def _once(
        self,
        target: str,
        creds: grpc.ChannelCredentials,
        request: bytes,
        metadata: list[tuple[str, str]],
    ) -> bytes:
        options = [("grpc.ssl_target_name_override", self.server_name)]
        async with grpc.aio.secure_channel(target, creds, options=options) as channel:
            call = channel.unary_unary(
                SIGN_METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b
            )
            return await call(request, timeout=self.timeout, metadata=metadata or None)
