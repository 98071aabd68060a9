"""The workload registration protocol: the request format, its signing and its verification.

Why: a VM joined with ``meshfed nodeagent`` must appear in the registry (so Pilot routes to it
and knows its SPIFFE ID) and disappear when it leaves. Anyone who can reach the hub must not be
able to register a workload under someone else's identity, so every request is *signed with the
workload's own SVID key*: the hub accepts a workload for namespace N / service account S only
from a caller holding a currently valid certificate for ``spiffe://<td>/ns/N/sa/S`` issued under
the mesh's trust bundle.

Both ends use this module: the node agent signs (:mod:`nodeagent.registration`, the client),
the hub verifies (:mod:`adapters.workloads.server`, the registry adapter behind
``POST /v1/workloads`` and ``DELETE /v1/workloads/{namespace}/{name}``).

Request signing: headers ``x-meshfed-cert-chain`` (base64 PEM chain, leaf first),
``x-meshfed-timestamp`` (unix seconds) and ``x-meshfed-signature`` (base64 signature with the
leaf's key over ``METHOD\\nPATH\\nTIMESTAMP\\n`` + body). A timestamp more than
:data:`MAX_SKEW` away is refused, which bounds replay to that window; both operations are
idempotent, so a replay inside it changes nothing that the signer did not ask for.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import time
from typing import Any

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import verification

from meshfed.core.svid import load_pem_chain, spiffe_id_of
from meshfed.registry.model import Locality, Port, Protocol, Service, Workload

log = logging.getLogger("meshfed.adapters.workloads")

MAX_SKEW = 60.0
MEMBER_NAME = "workloads"
DEFAULT_RENEWAL_INTERVAL = 30.0  # seconds between an agent's re-registrations


class RegistrationRefused(Exception):
    """The hub refused a registration (the message says why)."""


def _signed_payload(method: str, path: str, timestamp: str, body: bytes) -> bytes:
    return f"{method}\n{path}\n{timestamp}\n".encode() + body


def sign_headers(method: str, path: str, body: bytes, key: Any, chain_pem: bytes) -> dict[str, str]:
    """Headers that prove the request comes from the holder of ``chain_pem``'s key."""
    timestamp = str(int(time.time()))
    payload = _signed_payload(method, path, timestamp, body)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(payload, ec.ECDSA(hashes.SHA256()))
    elif isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(payload, padding.PKCS1v15(), hashes.SHA256())
    else:
        raise TypeError(f"unsupported key type {type(key).__name__}")
    return {
        "x-meshfed-cert-chain": base64.b64encode(chain_pem).decode(),
        "x-meshfed-timestamp": timestamp,
        "x-meshfed-signature": base64.b64encode(signature).decode(),
    }


def verify_request(
    method: str,
    path: str,
    headers: Any,
    body: bytes,
    roots: list[x509.Certificate],
    now: float | None = None,
) -> str:
    """The SPIFFE ID that signed the request; RegistrationRefused when it does not verify."""
    try:
        chain = load_pem_chain(base64.b64decode(headers["x-meshfed-cert-chain"]))
        timestamp = headers["x-meshfed-timestamp"]
        signature = base64.b64decode(headers["x-meshfed-signature"])
    except (KeyError, ValueError) as exc:
        raise RegistrationRefused(f"missing or malformed signature headers: {exc}") from None
    now = time.time() if now is None else now
    if not timestamp.isdigit() or abs(now - int(timestamp)) > MAX_SKEW:
        raise RegistrationRefused(f"timestamp {timestamp!r} is not within {MAX_SKEW:.0f}s of now")
    if not chain:
        raise RegistrationRefused("empty certificate chain")
    leaf = chain[0]
    store = verification.Store(roots)
    verifier = (
        verification.PolicyBuilder()
        .store(store)
        .time(dt.datetime.fromtimestamp(now, dt.UTC))
        .build_client_verifier()
    )
    try:
        verifier.verify(leaf, chain[1:])
    except verification.VerificationError as exc:
        raise RegistrationRefused(
            f"certificate does not verify against the trust bundle: {exc}"
        ) from None
    payload = _signed_payload(method, path, timestamp, body)
    public = leaf.public_key()
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise RegistrationRefused(f"unsupported key type {type(public).__name__}")
    except InvalidSignature:
        raise RegistrationRefused("the request signature does not verify") from None
    try:
        return spiffe_id_of(leaf)
    except ValueError as exc:
        raise RegistrationRefused(str(exc)) from None


@attrs.frozen(slots=True)
class Registration:
    """One workload and the services it backs, as the agent sent it."""

    workload: Workload
    services: tuple[str, ...]
    definitions: tuple[Service, ...] = ()
    # How often the agent re-registers; the hub's lease is a multiple of it.
    renewal_interval: float = DEFAULT_RENEWAL_INTERVAL


def registration_body(
    workload: Workload,
    services: list[str],
    definitions: list[dict[str, Any]] | None = None,
    renewal_interval: float = DEFAULT_RENEWAL_INTERVAL,
) -> dict[str, Any]:
    """The JSON body of ``POST /v1/workloads``."""
    return {
        "renewalIntervalSeconds": renewal_interval,
        "workload": {
            "name": workload.name,
            "namespace": workload.namespace,
            "address": workload.address,
            "ports": dict(workload.ports),
            "labels": dict(workload.labels),
            "service_account": workload.service_account,
            "locality": str(workload.locality) if str(workload.locality) != "-" else "",
        },
        "services": services,
        "definitions": definitions or [],
    }


def parse_registration(body: dict[str, Any]) -> Registration:
    """Validate a registration body; ValueError naming the field on bad input."""
    if not isinstance(body, dict) or not isinstance(body.get("workload"), dict):
        raise ValueError("expected an object with a 'workload' object")
    w = body["workload"]
    for field in ("name", "namespace", "address", "service_account"):
        if not isinstance(w.get(field), str) or not w[field]:
            raise ValueError(f"workload.{field}: expected a non-empty string")
    ports = w.get("ports") or {}
    if not isinstance(ports, dict) or not all(
        isinstance(v, int) and 0 < v < 65536 for v in ports.values()
    ):
        raise ValueError("workload.ports: expected a map of port name to port number")
    services = body.get("services") or []
    if not isinstance(services, list) or not all(isinstance(s, str) and s for s in services):
        raise ValueError("services: expected a list of hostnames")
    region, zone, subzone = ([*(w.get("locality") or "").split("/"), "", "", ""])[:3]
    workload = Workload(
        name=w["name"],
        namespace=w["namespace"],
        address=w["address"],
        ports=ports,
        labels=w.get("labels") or {},
        service_account=w["service_account"],
        locality=Locality(region, zone, subzone),
        registry=MEMBER_NAME,
    )
    definitions = []
    for i, d in enumerate(body.get("definitions") or []):
        try:
            definitions.append(
                Service(
                    hostname=d["hostname"],
                    namespace=workload.namespace,
                    ports=[
                        Port(int(p["number"]), p["name"], Protocol.parse(p.get("protocol", "TCP")))
                        for p in d.get("ports", [])
                    ],
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"definitions[{i}]: expected hostname and ports ({exc!r})") from None
    interval = body.get("renewalIntervalSeconds", DEFAULT_RENEWAL_INTERVAL)
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
        raise ValueError("renewalIntervalSeconds: expected a positive number of seconds")
    return Registration(workload, tuple(services), tuple(definitions), float(interval))
