"""The CA's Sign request, parsed and checked before anything else looks at it.

Why: the request arrives from callers the CA has not authenticated yet, as JSON of any shape.
Every way it can be wrong must end as one clean refusal (gRPC ``INVALID_ARGUMENT`` with a short
message), never as an exception escaping into gRPC (``UNKNOWN`` with internal text, and a
traceback in the log). This module is the one place that turns raw bytes into a
:class:`SignRequest`, so the signing service only ever sees well-typed, bounded values.

Promises:
- :func:`parse_sign_request` returns a :class:`SignRequest` or raises :class:`BadRequest`;
  nothing else, whatever the bytes (not UTF-8, not JSON, nested ten thousand deep, wrong types).
- ``csr`` is a string of at most :data:`MAX_CSR_CHARS` holding a PEM CSR whose signature
  verifies (:func:`security.identity.load_csr`).
- ``identity``, when present and not null, is a string of at most :data:`MAX_IDENTITY_CHARS`
  in the workload form ``spiffe://<trust-domain>/ns/<namespace>/sa/<account>`` with the
  characters the SPIFFE ID specification allows (anything else could never be issued).
- ``ttl_seconds``, when present and not null, is a finite JSON number in
  ``(0, MAX_TTL_SECONDS]``; a lifetime above the CA's own maximum is still clamped by the CA.
- ``ip_addresses``, when present and not null, is an array of at most :data:`MAX_IP_ADDRESSES`
  IP address strings (whether the caller may have them is the signing service's decision).
- Messages never repeat more than about a hundred characters of what the caller sent.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import math
import re
from typing import Any

import attrs

from meshfed.registry.model import SPIFFE_PREFIX
from meshfed.security import identity

MAX_REQUEST_BYTES = 64 * 1024
MAX_CSR_CHARS = 32 * 1024  # an RSA-8192 CSR is about 3 kB; room for SANs the CA ignores anyway
MAX_IDENTITY_CHARS = 2048  # the SPIFFE ID specification's limit for a URI SAN
MAX_TTL_SECONDS = 10 * 365 * 86400  # no leaf outlives a root; beyond this is nonsense
MAX_IP_ADDRESSES = 8  # a serving certificate names a pod's few addresses, never a range
_SHOWN = 100  # characters of a caller's value a message may repeat (room for a SPIFFE ID)

# SPIFFE ID specification, sections 2.1 and 2.2: a lower-case trust domain, path segments of
# letters, digits, dot, dash and underscore, never "." or "..".
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


class BadRequest(ValueError):
    """The request is malformed; ``reason`` is the metric label, the message goes to the caller."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@attrs.frozen(slots=True)
class SignRequest:
    """A checked Sign request: a verified CSR, an optional identity and lifetime."""

    csr: Any  # x509.CertificateSigningRequest (its signature verified)
    identity: str | None
    ttl: dt.timedelta | None
    ip_addresses: tuple[str, ...] = ()


def shown(value: object) -> str:
    """``value`` for a message: its repr, cut to a few dozen characters."""
    text = repr(value)
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}... ({len(text)} characters)"


def _type_name(value: object) -> str:
    return {
        type(None): "null",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def parse_sign_request(raw: bytes) -> SignRequest:
    """Parse and check a Sign request's bytes; :class:`BadRequest` says what is wrong."""
    if len(raw) > MAX_REQUEST_BYTES:
        raise BadRequest(
            "bad-request", f"request of {len(raw)} bytes; expected at most {MAX_REQUEST_BYTES}"
        )
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("bad-request", "request is not UTF-8 text") from None
    except RecursionError:
        raise BadRequest("bad-request", "request nests too deeply") from None
    except json.JSONDecodeError as exc:
        raise BadRequest("bad-request", f"request is not JSON ({exc.msg})") from None
    except ValueError:  # an integer of more digits than Python converts
        raise BadRequest("bad-request", "request holds a number too long to read") from None
    if not isinstance(body, dict):
        raise BadRequest("bad-request", f"request is {_type_name(body)}; expected a JSON object")
    return SignRequest(
        csr=_csr(body.get("csr")),
        identity=_identity(body.get("identity")),
        ttl=_ttl(body.get("ttl_seconds")),
        ip_addresses=_ip_addresses(body.get("ip_addresses")),
    )


def _csr(value: object) -> Any:
    if not isinstance(value, str):
        what = "missing" if value is None else _type_name(value)
        raise BadRequest("bad-csr", f"csr is {what}; expected a PEM certificate signing request")
    if len(value) > MAX_CSR_CHARS:
        raise BadRequest(
            "bad-csr", f"csr of {len(value)} characters; expected at most {MAX_CSR_CHARS}"
        )
    try:
        return identity.load_csr(value)
    except ValueError as exc:
        raise BadRequest("bad-csr", f"csr: {exc}") from None


def check_identity(value: str) -> str:
    """``value`` if it is a workload SPIFFE ID the CA could issue; BadRequest otherwise."""
    expected = "expected spiffe://<trust-domain>/ns/<namespace>/sa/<account>"
    if len(value) > MAX_IDENTITY_CHARS:
        raise BadRequest(
            "bad-identity",
            f"identity of {len(value)} characters; expected at most {MAX_IDENTITY_CHARS}",
        )
    if not value.startswith(SPIFFE_PREFIX):
        raise BadRequest("bad-identity", f"identity {shown(value)}: {expected}")
    domain, _, path = value[len(SPIFFE_PREFIX) :].partition("/")
    parts = path.split("/")
    if len(parts) != 4 or parts[0] != "ns" or parts[2] != "sa":
        raise BadRequest("bad-identity", f"identity {shown(value)}: {expected}")
    if not _TRUST_DOMAIN.fullmatch(domain):
        raise BadRequest(
            "bad-identity",
            f"identity {shown(value)}: the trust domain must be lower-case letters, digits, "
            "'.', '-' or '_'",
        )
    for segment in (parts[1], parts[3]):
        if not valid_segment(segment):
            raise BadRequest(
                "bad-identity",
                f"identity {shown(value)}: namespace and account must be letters, digits, "
                "'.', '-' or '_' (not '.' or '..')",
            )
    return value


def valid_segment(value: str) -> bool:
    """Whether ``value`` may be a namespace or service account in a SPIFFE ID."""
    return bool(_SEGMENT.fullmatch(value)) and value not in (".", "..")


def _identity(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(
            "bad-identity", f"identity is {_type_name(value)}; expected a SPIFFE ID string"
        )
    return check_identity(value) if value else None


def _ttl(value: object) -> dt.timedelta | None:
    if value is None:
        return None
    # bool is an int to Python, but JSON's true is not a number of seconds.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(
            "bad-ttl", f"ttl_seconds is {_type_name(value)}; expected a number of seconds"
        )
    # Compared before any float conversion: JSON integers can have thousands of digits.
    if (isinstance(value, float) and not math.isfinite(value)) or not 0 < value <= MAX_TTL_SECONDS:
        raise BadRequest(
            "bad-ttl",
            f"ttl_seconds {shown(value)}: expected more than 0 and at most {MAX_TTL_SECONDS}",
        )
    return dt.timedelta(seconds=value)


def _ip_addresses(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_IP_ADDRESSES:
        what = _type_name(value) if not isinstance(value, list) else f"{len(value)} entries"
        raise BadRequest(
            "bad-ip-addresses",
            f"ip_addresses is {what}; expected an array of at most {MAX_IP_ADDRESSES} IP addresses",
        )
    found: list[str] = []
    for item in value:
        try:
            if not isinstance(item, str):
                raise ValueError
            ip = str(ipaddress.ip_address(item))
        except ValueError:
            raise BadRequest(
                "bad-ip-addresses", f"ip_addresses entry {shown(item)}: expected an IP address"
            ) from None
        if ip not in found:
            found.append(ip)
    return tuple(found)
