"""The CSR signing service (``grpc.aio``): authenticate the caller, authorise the identity, sign.

Why: a node agent must get a certificate for exactly the identity its credential proves, and
never send its private key anywhere. This service receives only a CSR.

Wire format, said plainly: there is no protoc in the build, so the service is registered with
gRPC *generic handlers* and its messages are JSON documents carried as the raw gRPC message
bytes (UTF-8). That is a real gRPC service (HTTP/2, deadlines, status codes, TLS) with a JSON
payload instead of protobuf; :mod:`security.caclient` is its client.

- ``/meshfed.security.v1.CertificateService/Sign``
  request ``{"csr": PEM, "identity": "spiffe://..." (optional), "ttl_seconds": int (optional),
  "ip_addresses": [IP, ...] (optional)}``. DNS and IP SANs are issued only to the identities
  the CA is configured to serve TLS names for (``serving_names``: the hub, whose injection
  webhook the API server dials by its Service name); anyone else asking for IPs is refused.
  response ``{"certificate_chain": PEM (leaf first), "root_certificates": PEM, "identity": ...,
  "not_after": RFC 3339}``
- ``/meshfed.security.v1.CertificateService/TrustBundle``: request ``{}``, response
  ``{"root_certificates": PEM}``, no credential (the bundle is public; the caller authenticates
  the CA). Agents poll it, so a root rotation reaches Envoy before their leaf is due.
- ``/grpc.health.v1.Health/Check`` (the standard health protocol; its one-field protobuf
  response is written by hand: ``status=SERVING`` is the two bytes ``08 01``).

Credentials, one per request:
- a join token in metadata ``x-meshfed-join-token`` (single use, bound to one identity);
- a Kubernetes service-account token in ``authorization: Bearer ...``, checked with the API
  server's TokenReview (the identity is the token's namespace and service account);
- a client certificate this CA issued, presented over mutual TLS (renewal). gRPC Python can
  either require a verified client certificate or not ask for one, nothing in between, so the CA
  listens on two ports: the *bootstrap* port (server TLS; tokens) and the *renewal* port (mutual
  TLS required; an expired or foreign certificate fails the handshake, and is checked again
  here so the refusal is logged with its reason).

Asking for an identity other than the credential allows is refused (PERMISSION_DENIED) and
logged with the caller's address, the credential and both identities. A malformed request is
refused (INVALID_ARGUMENT, a short reason from :mod:`security.sign_request`) before any
credential is looked at, so it never consumes a join token; no request makes the service
answer UNKNOWN or log a traceback (a fault inside the CA answers INTERNAL, without its text).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshfed.registry.model import parse_spiffe_id, spiffe_id
from meshfed.security import identity, metrics
from meshfed.security.ca import CertificateAuthority, SigningState
from meshfed.security.sign_request import BadRequest, parse_sign_request, shown
from meshfed.security.tokens import JoinTokenStore, TokenError
from meshfed.security.wire import CA_SERVER_NAME, JOIN_TOKEN_HEADER, SERVICE_NAME, SIGN_METHOD

log = logging.getLogger("meshfed.security.service")

__all__ = [
    "CA_SERVER_NAME",
    "JOIN_TOKEN_HEADER",
    "SERVICE_NAME",
    "SIGN_METHOD",
    "CAServer",
    "KubernetesTokenReviewer",
    "SigningService",
]

CA_SERVICE_ACCOUNT = "meshfed-ca"
SERVING_TTL = dt.timedelta(hours=24)
_HEALTH_SERVING = b"\x08\x01"
MAX_MESSAGE_BYTES = 1024 * 1024


class Refused(Exception):
    """A request the service will not sign; ``code`` and ``reason`` go to the caller/metrics."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


@attrs.frozen(slots=True)
class Credential:
    """Who the caller proved to be, and the one identity that allows."""

    kind: str  # join-token | kubernetes | certificate
    allowed: str  # SPIFFE ID
    detail: str  # token id, Kubernetes username, or certificate serial (for logs)


class KubernetesTokenReviewer:
    """Checks service-account tokens with the real API server's TokenReview API.

    ``api_client`` is a ``kubernetes.client.ApiClient`` whose user may create TokenReviews.
    The client is blocking, so each review runs in a worker thread.
    """

    def __init__(self, api_client: Any, audiences: list[str] | None = None) -> None:
        self.api_client = api_client
        self.audiences = audiences

    async def review(self, token: str) -> tuple[str, str]:
        """The (namespace, service account) the token belongs to; Refused otherwise."""
        try:
            result = await asyncio.to_thread(self._review, token)
        except Exception as exc:  # the API server is down or refuses the CA's own credential
            log.warning("TokenReview with the Kubernetes API server failed: %s", shown(exc))
            raise Refused(
                grpc.StatusCode.UNAVAILABLE,
                "kubernetes-token",
                "token review with the Kubernetes API server failed",
            ) from None
        status = result.status
        if not status or not status.authenticated:
            error = (status.error if status else None) or "not authenticated"
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, "kubernetes-token", error)
        username = status.user.username or ""
        parts = username.split(":")
        if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
            raise Refused(
                grpc.StatusCode.PERMISSION_DENIED,
                "kubernetes-token",
                f"{username!r} is not a service account",
            )
        return parts[2], parts[3]

    def _review(self, token: str) -> Any:
        from kubernetes import client

        body = client.V1TokenReview(
            spec=client.V1TokenReviewSpec(token=token, audiences=self.audiences)
        )
        return client.AuthenticationV1Api(self.api_client).create_token_review(body)


class SigningService:
    """Authenticates, authorises and signs; transport-independent apart from the gRPC context."""

    def __init__(
        self,
        ca: CertificateAuthority,
        tokens: JoinTokenStore | None = None,
        kubernetes: KubernetesTokenReviewer | None = None,
        serving_names: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.ca = ca
        self.tokens = tokens
        self.kubernetes = kubernetes
        # identity -> the DNS names its certificates carry. Only these identities serve TLS to
        # callers that check a host name (the API server dialling the injection webhook); the
        # names are the CA's configuration, never the caller's wish.
        self.serving_names = {k: tuple(v) for k, v in (serving_names or {}).items()}
        metrics.ROOT_EXPIRY.set(ca.signer_cert.not_valid_after_utc.timestamp())

    async def sign(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        started = time.perf_counter()
        peer = context.peer()
        try:
            response = await self._sign(request, context)
        except Refused as exc:
            metrics.REFUSED.labels(exc.reason).inc()
            log.warning("refused signing request from %s: %s", peer, exc)
            await context.abort(exc.code, str(exc))
        except Exception:
            # A fault of the CA itself, not of the request: the caller learns only that, the
            # log keeps the traceback for the operator.
            metrics.REFUSED.labels("internal").inc()
            log.exception("signing request from %s failed inside the CA", peer)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error in the CA")
        metrics.SIGN_SECONDS.observe(time.perf_counter() - started)
        return response

    async def _sign(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            parsed = parse_sign_request(request)
        except BadRequest as exc:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, exc.reason, str(exc)) from None
        csr, wanted, ttl = parsed.csr, parsed.identity, parsed.ttl
        if wanted is not None:
            domain, _, _ = parse_spiffe_id(wanted)
            if domain != self.ca.trust_domain:
                raise Refused(
                    grpc.StatusCode.PERMISSION_DENIED,
                    "wrong-trust-domain",
                    f"{shown(wanted)} is outside trust domain {self.ca.trust_domain!r}",
                )
        credential = await self.authenticate(context, wanted)
        if wanted is not None and wanted != credential.allowed:
            raise Refused(
                grpc.StatusCode.PERMISSION_DENIED,
                "identity-not-allowed",
                f"{credential.kind} credential ({credential.detail}) allows "
                f"{credential.allowed}, not {shown(wanted)}",
            )
        dns_names = self.serving_names.get(credential.allowed)
        if parsed.ip_addresses and dns_names is None:
            raise Refused(
                grpc.StatusCode.PERMISSION_DENIED,
                "sans-not-allowed",
                f"{credential.allowed} may not have IP address SANs "
                "(only the identities the CA serves TLS names for may)",
            )
        issued = self.ca.sign(
            csr,
            credential.allowed,
            ttl,
            dns_names=dns_names or (),
            ip_addresses=parsed.ip_addresses,
        )
        metrics.ISSUED.labels(credential.kind).inc()
        metrics.ROOT_EXPIRY.set(self.ca.signer_cert.not_valid_after_utc.timestamp())
        log.info(
            "issued %s to %s via %s (%s), serial %x, until %s",
            credential.allowed,
            context.peer(),
            credential.kind,
            credential.detail,
            issued.certificate.serial_number,
            issued.certificate.not_valid_after_utc.isoformat(),
        )
        return json.dumps(
            {
                "certificate_chain": issued.chain_pem.decode(),
                "root_certificates": issued.root_pem.decode(),
                "identity": credential.allowed,
                "not_after": issued.certificate.not_valid_after_utc.isoformat(),
            }
        ).encode()

    async def authenticate(
        self, context: grpc.aio.ServicerContext, wanted: str | None
    ) -> Credential:
        """The caller's credential: client certificate, join token or Kubernetes token."""
        auth = context.auth_context() or {}
        peer_pem = auth.get("x509_pem_cert")
        metadata = {k.lower(): v for k, v in (context.invocation_metadata() or ())}
        td = self.ca.trust_domain
        if peer_pem:
            chain = identity.load_pem_chain(b"".join(peer_pem))
            try:
                allowed = self.ca.verify_issued(chain)
            except ValueError as exc:
                raise Refused(grpc.StatusCode.UNAUTHENTICATED, "certificate", str(exc)) from None
            return Credential("certificate", allowed, f"serial {chain[0].serial_number:x}")
        token = metadata.get(JOIN_TOKEN_HEADER)
        if token:
            if self.tokens is None:
                raise Refused(
                    grpc.StatusCode.UNAUTHENTICATED, "join-token", "join tokens are not enabled"
                )
            want = None
            if wanted is not None:
                _, ns, sa = parse_spiffe_id(wanted)
                want = (ns, sa)
            try:
                # The token file is shared with the CLI under a file lock: a worker thread.
                grant = await asyncio.to_thread(self.tokens.redeem, token, None, want)
            except TokenError as exc:
                reason = "identity-not-allowed" if "is bound to" in str(exc) else "join-token"
                code = (
                    grpc.StatusCode.PERMISSION_DENIED
                    if reason == "identity-not-allowed"
                    else grpc.StatusCode.UNAUTHENTICATED
                )
                raise Refused(code, reason, str(exc)) from None
            allowed = spiffe_id(td, grant.namespace, grant.service_account)
            return Credential("join-token", allowed, f"token {grant.token_id}")
        bearer = metadata.get("authorization", "")
        if bearer.lower().startswith("bearer "):
            if self.kubernetes is None:
                raise Refused(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "kubernetes-token",
                    "Kubernetes token review is not configured",
                )
            ns, sa = await self.kubernetes.review(bearer[7:].strip())
            return Credential(
                "kubernetes", spiffe_id(td, ns, sa), f"system:serviceaccount:{ns}:{sa}"
            )
        raise Refused(
            grpc.StatusCode.UNAUTHENTICATED,
            "no-credential",
            "no credential: expected a join token, a Kubernetes token or a client certificate",
        )

    async def trust_bundle(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return json.dumps({"root_certificates": self.ca.root_pem.decode()}).encode()

    async def health(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return _HEALTH_SERVING

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        identity_bytes = lambda b: b  # noqa: E731 - messages are raw bytes both ways
        sign = grpc.unary_unary_rpc_method_handler(
            self.sign, request_deserializer=identity_bytes, response_serializer=identity_bytes
        )
        health = grpc.unary_unary_rpc_method_handler(
            self.health, request_deserializer=identity_bytes, response_serializer=identity_bytes
        )
        bundle = grpc.unary_unary_rpc_method_handler(
            self.trust_bundle,
            request_deserializer=identity_bytes,
            response_serializer=identity_bytes,
        )
        return [
            grpc.method_handlers_generic_handler(
                SERVICE_NAME, {"Sign": sign, "TrustBundle": bundle}
            ),
            grpc.method_handlers_generic_handler("grpc.health.v1.Health", {"Check": health}),
        ]


def serving_credentials(
    ca: CertificateAuthority,
    system_namespace: str,
    hosts: list[str],
    ttl: dt.timedelta = SERVING_TTL,
    state: SigningState | None = None,
) -> tuple[bytes, bytes]:
    """A key and certificate chain for the CA's own gRPC ports, issued by the CA itself.

    The certificate carries the CA's SPIFFE ID plus the DNS name :data:`CA_SERVER_NAME` (what
    clients check) and the listening IP addresses.
    """
    import ipaddress

    state = state or ca.state()
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    ips, names = [], [CA_SERVER_NAME, "localhost"]
    for host in hosts:
        try:
            ips.append(str(ipaddress.ip_address(host)))
        except ValueError:
            names.append(host)
    cert = identity.issue_svid(
        csr,
        spiffe_id(ca.trust_domain, system_namespace, CA_SERVICE_ACCOUNT),
        state.signer_cert,
        state.signer_key,
        ttl,
        dt.datetime.now(dt.UTC),
        dns_names=names,
        ip_addresses=ips,
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM) + state.chain_pem


class ServingCertificates:
    """The CA's own serving certificate, re-issued at half its lifetime and on a root change.

    gRPC asks :meth:`fetch` before each new handshake (``dynamic_ssl_server_credentials``); it
    answers None (keep the current one) until the certificate is half-way through its life,
    then a new configuration, so a CA that runs for months never serves an expired certificate.
    When a root rotation changes the signer or the trust bundle it answers a new one at once.
    """

    def __init__(
        self,
        ca: CertificateAuthority,
        system_namespace: str,
        hosts: list[str],
        require_client_auth: bool,
        ttl: dt.timedelta = SERVING_TTL,
    ) -> None:
        self.ca = ca
        self.system_namespace = system_namespace
        self.hosts = hosts
        self.require_client_auth = require_client_auth
        self.ttl = ttl
        self.issued = 0
        self._refresh_at = 0.0
        self._issued_for: tuple[int, bytes] | None = None
        self.current = self._issue()

    def _issue(self) -> Any:
        state = self.ca.state()
        key_pem, chain = serving_credentials(
            self.ca, self.system_namespace, self.hosts, self.ttl, state
        )
        self.issued += 1
        self._refresh_at = time.monotonic() + self.ttl.total_seconds() / 2
        self._issued_for = state.fingerprint
        roots = state.root_pem if self.require_client_auth else None
        return grpc.ssl_server_certificate_configuration([(key_pem, chain)], roots)

    def fetch(self) -> Any:
        # A root rotation changes the signer or the bundle: re-issue at once, so the CA's own
        # certificate chains to the root that signs and the renewal port trusts the new bundle.
        rotated = self.ca.state().fingerprint != self._issued_for
        if time.monotonic() < self._refresh_at and not rotated:
            return None
        self.current = self._issue()
        log.info(
            "re-issued the CA's serving certificate (%d so far%s)",
            self.issued,
            ", root rotation" if rotated else "",
        )
        return self.current

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self.current, self.fetch, require_client_authentication=self.require_client_auth
        )


class CAServer:
    """The CA's gRPC server: a bootstrap port (TLS) and a renewal port (mutual TLS)."""

    def __init__(
        self,
        service: SigningService,
        bootstrap_address: str,
        renewal_address: str,
        system_namespace: str = "meshfed-system",
        serving_ttl: dt.timedelta = SERVING_TTL,
    ) -> None:
        self.service = service
        self.serving_ttl = serving_ttl
        self.serving: list[ServingCertificates] = []
        self.bootstrap_address = bootstrap_address
        self.renewal_address = renewal_address
        self.system_namespace = system_namespace
        self.server: grpc.aio.Server | None = None
        self.bootstrap_port = 0
        self.renewal_port = 0

    async def start(self) -> None:
        ca = self.service.ca
        hosts = [
            a.rpartition(":")[0].strip("[]") for a in (self.bootstrap_address, self.renewal_address)
        ]
        self.serving = [
            ServingCertificates(ca, self.system_namespace, hosts, False, self.serving_ttl),
            ServingCertificates(ca, self.system_namespace, hosts, True, self.serving_ttl),
        ]
        # Every message here is small; a caller's oversized one ends at the transport
        # (RESOURCE_EXHAUSTED) before it costs memory, instead of gRPC's default 4 MB.
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
        server.add_generic_rpc_handlers(self.service.handlers())
        tls, mtls = (s.credentials() for s in self.serving)
        self.bootstrap_port = server.add_secure_port(self.bootstrap_address, tls)
        self.renewal_port = server.add_secure_port(self.renewal_address, mtls)
        await server.start()
        self.server = server
        log.info(
            "CA serving on %s (bootstrap, TLS) and %s (renewal, mutual TLS)",
            self.bootstrap_target,
            self.renewal_target,
        )

    @property
    def bootstrap_target(self) -> str:
        return f"{self.bootstrap_address.rpartition(':')[0]}:{self.bootstrap_port}"

    @property
    def renewal_target(self) -> str:
        return f"{self.renewal_address.rpartition(':')[0]}:{self.renewal_port}"

    async def stop(self, grace: float = 1.0) -> None:
        if self.server is not None:
            await self.server.stop(grace)
            self.server = None
