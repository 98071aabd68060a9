"""Join tokens: how a VM that has no identity yet proves it may get one.

Why: a VM outside Kubernetes has no service-account token. An operator creates a join token with
``meshfed ca token create --namespace N --service-account S`` and hands it to the VM (out of
band); the node agent presents it once, gets its first certificate, and renews with that
certificate from then on.

Promises:
- A token is bound to one identity (namespace + service account): it can never obtain another.
- Single use: the first successful redemption consumes it; a replay is refused.
- Short-lived: it expires (default 1 h) whether used or not.
- Only a hash is stored: the token file holds ``sha256(secret)``, never the secret, so reading
  the file does not let anyone join. The file is 0600 in the CA's 0700 state folder.
- Shared between processes: the CLI writes tokens into the same file the running CA reads, under
  an exclusive ``flock``, so create and redeem never lose each other's updates.

A token is ``mfjt.<id>.<secret>``: ``id`` locates the record, ``secret`` (32 random bytes) is
what is hashed and compared in constant time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from meshfed.security.sign_request import shown, valid_segment
from meshfed.security.storage import private_dir, write_private

TOKEN_PREFIX = "mfjt"
_TOKEN_ID = re.compile(r"[0-9a-f]{12}")  # secrets.token_hex(6)
DEFAULT_TOKEN_TTL = dt.timedelta(hours=1)


class TokenError(Exception):
    """A join token was refused; the message says why (never echoing the secret)."""


@attrs.frozen(slots=True)
class TokenGrant:
    """What a redeemed token allows: one namespace + service account."""

    token_id: str
    namespace: str
    service_account: str


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class JoinTokenStore:
    """Join tokens kept (hashed) in a JSON file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        private_dir(self.path.parent)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data: dict[str, Any] = (
                json.loads(self.path.read_text()) if self.path.exists() else {"tokens": {}}
            )
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                write_private(self.path, json.dumps(data, indent=1, sort_keys=True).encode())
        finally:
            os.close(fd)  # closing releases the flock

    def create(
        self,
        namespace: str,
        service_account: str,
        ttl: dt.timedelta = DEFAULT_TOKEN_TTL,
        now: dt.datetime | None = None,
    ) -> str:
        """Create a token for ``namespace``/``service_account``; returns it (shown only once)."""
        # The CA will issue spiffe://<td>/ns/<namespace>/sa/<account>: refuse what it cannot.
        for what, value in (("namespace", namespace), ("service account", service_account)):
            if not valid_segment(value):
                raise ValueError(
                    f"{what} {shown(value)}: expected letters, digits, '.', '-' or '_' "
                    "(not '.' or '..')"
                )
        now = now or _now()
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        with self._locked() as data:
            tokens = data["tokens"]
            # Forget expired records so the file does not grow without bound.
            for key in [k for k, v in tokens.items() if _expired(v, now)]:
                del tokens[key]
            tokens[token_id] = {
                "sha256": _hash(secret),
                "namespace": namespace,
                "service_account": service_account,
                "created": now.isoformat(),
                "expires": (now + ttl).isoformat(),
                "used": None,
            }
        return f"{TOKEN_PREFIX}.{token_id}.{secret}"

    def redeem(
        self,
        token: str,
        now: dt.datetime | None = None,
        want: tuple[str, str] | None = None,
    ) -> TokenGrant:
        """Consume ``token`` and return what it grants; TokenError when it is refused.

        ``want`` is the (namespace, service account) the caller asks for; a token bound to
        another identity is refused *without* being consumed, so a mistaken request does not
        burn the operator's token (the caller holds that token anyway).
        """
        now = now or _now()
        prefix, _, rest = token.partition(".")
        token_id, _, secret = rest.partition(".")
        # The id is echoed in refusals, so only the shape create() makes is looked up.
        if prefix != TOKEN_PREFIX or not _TOKEN_ID.fullmatch(token_id) or not secret:
            raise TokenError("malformed join token")
        with self._locked() as data:
            record = data["tokens"].get(token_id)
            if record is None:
                raise TokenError(f"unknown join token {token_id}")
            if not hmac.compare_digest(record["sha256"], _hash(secret)):
                raise TokenError(f"wrong secret for join token {token_id}")
            if record["used"]:
                raise TokenError(f"join token {token_id} was already used at {record['used']}")
            if _expired(record, now):
                raise TokenError(f"join token {token_id} expired at {record['expires']}")
            bound = (record["namespace"], record["service_account"])
            if want is not None and tuple(want) != bound:
                raise TokenError(
                    f"join token {token_id} is bound to ns/{bound[0]}/sa/{bound[1]}, "
                    f"not ns/{want[0]}/sa/{want[1]}"
                )
            record["used"] = now.isoformat()
        return TokenGrant(token_id, record["namespace"], record["service_account"])

    def list(self) -> list[dict[str, Any]]:
        """Every stored token record (hashes only), for ``meshfed ca token list``."""
        with self._locked() as data:
            return [
                {"id": k, **{f: v for f, v in rec.items() if f != "sha256"}}
                for k, rec in sorted(data["tokens"].items())
            ]


def _expired(record: dict[str, Any], now: dt.datetime) -> bool:
    return dt.datetime.fromisoformat(record["expires"]) <= now
