"""The agent's side of :mod:`nodeagent.issue`: one short-lived process per credential operation.

Why: the long-lived agent stays on the standard library (its memory is paid on every node); the
process that needs ``cryptography`` and ``grpcio`` lives for one operation. This module only
starts it, writes the request, reads the answer and turns it into a value or an exception.

Promises:
- :class:`Issued` carries what the agent keeps (key and chain PEM, trust bundle, notAfter,
  serial); :class:`IssueRefused` means the CA or hub said no (retrying will not help; the
  message is theirs), :class:`IssueFailed` anything worth retrying (unreachable, a timeout, a
  crashed child, whose stderr tail is in the message).
- Every call is bounded by ``timeout``; a child that overruns it is killed.
- Request and answer pass through pipes only; no secret is in argv or the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import sys
from typing import Any, NamedTuple

CHILD = [sys.executable, "-m", "meshfed.nodeagent.issue"]


class IssueFailed(Exception):
    """The operation did not complete; worth retrying."""


class IssueRefused(IssueFailed):
    """The CA or the hub refused (``code``: the CA's gRPC status name, when it was the CA)."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}" if code else details)
        self.code = code
        self.details = details


class Issued(NamedTuple):
    key_pem: bytes
    chain_pem: bytes
    root_pem: bytes
    identity: str
    not_after: dt.datetime
    serial: int


class ChildIssuer:
    """Runs :mod:`nodeagent.issue` once per call."""

    def __init__(self, timeout: float = 120.0, command: list[str] | None = None) -> None:
        self.timeout = timeout
        self.command = command or CHILD
        self.calls = 0
        self.last_child_pid = 0  # read by the memory benchmark

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """One operation; its answer (``ok`` true) or IssueRefused / IssueFailed."""
        self.calls += 1
        proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self.last_child_pid = proc.pid
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(json.dumps(request).encode()), self.timeout
            )
        except TimeoutError:
            raise IssueFailed(f"{request.get('op')}: no answer within {self.timeout:g}s") from None
        finally:
            if proc.returncode is None:  # timed out, or the caller was cancelled
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        try:
            answer = json.loads(out)
        except ValueError:
            tail = err.decode(errors="replace").strip().splitlines()[-3:]
            raise IssueFailed(
                f"{request.get('op')}: the issuing process exited with {proc.returncode}: "
                + (" | ".join(tail) or "no output")
            ) from None
        if answer.get("ok"):
            return dict(answer)
        if answer.get("refused"):
            raise IssueRefused(str(answer.get("code") or ""), str(answer.get("error")))
        raise IssueFailed(f"{request.get('op')}: {answer.get('error')}")

    async def issue(self, request: dict[str, Any]) -> Issued:
        """``bootstrap`` or ``renew``: a new key and its certificate."""
        a = await self.call(request)
        not_after = dt.datetime.fromisoformat(a["not_after"])
        if not_after.tzinfo is None:
            not_after = not_after.replace(tzinfo=dt.UTC)
        return Issued(
            a["key_pem"].encode(),
            a["chain_pem"].encode(),
            a["root_pem"].encode(),
            a["identity"],
            not_after,
            int(a["serial"]),
        )
