"""Registering a VM's workloads with the hub, without editing files, and only as oneself.

Why: a VM joined with ``meshfed nodeagent`` must appear in the registry (so Pilot routes to it
and knows its SPIFFE ID) and disappear when it leaves. Anyone who can reach the hub must not be
able to register a workload under someone else's identity, so every request is *signed with the
workload's own SVID key*: the hub accepts a workload for namespace N / service account S only
from a caller holding a currently valid certificate for ``spiffe://<td>/ns/N/sa/S`` issued under
the mesh's trust bundle.

This module is the agent's half: :func:`register` / :func:`deregister` (standard-library HTTP,
in a worker thread). The request format, signing and verification are the protocol's
(:mod:`adapters.workloads.protocol`), shared with the hub's side
(:mod:`adapters.workloads.server`).
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

from meshfed.adapters.workloads.protocol import (
    DEFAULT_RENEWAL_INTERVAL,
    MAX_SKEW,
    MEMBER_NAME,
    Registration,
    RegistrationRefused,
    parse_registration,
    registration_body,
    sign_headers,
    verify_request,
)

__all__ = [
    "DEFAULT_RENEWAL_INTERVAL",
    "MAX_SKEW",
    "MEMBER_NAME",
    "Registration",
    "RegistrationRefused",
    "deregister",
    "parse_registration",
    "register",
    "registration_body",
    "sign_headers",
    "verify_request",
]


async def register(
    hub_url: str, body: dict[str, Any], key: Any, chain_pem: bytes, timeout: float = 10.0
) -> None:
    """POST a signed registration to the hub; RegistrationRefused on a 4xx answer."""
    data = json.dumps(body).encode()
    await asyncio.to_thread(_send, "POST", hub_url, "/v1/workloads", data, key, chain_pem, timeout)


async def deregister(
    hub_url: str, namespace: str, name: str, key: Any, chain_pem: bytes, timeout: float = 10.0
) -> None:
    """DELETE this workload's registration (a 404 counts as done)."""
    path = f"/v1/workloads/{namespace}/{name}"
    await asyncio.to_thread(_send, "DELETE", hub_url, path, b"", key, chain_pem, timeout, (404,))


def _send(
    method: str,
    hub_url: str,
    path: str,
    body: bytes,
    key: Any,
    chain_pem: bytes,
    timeout: float,
    ok_statuses: tuple[int, ...] = (),
) -> None:
    # The standard library's client, in a worker thread: the agent stays small (no aiohttp).
    headers = sign_headers(method, path, body, key, chain_pem)
    headers["content-type"] = "application/json"
    request = urllib.request.Request(
        hub_url.rstrip("/") + path, data=body or None, headers=headers, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        if exc.code not in ok_statuses:
            text = exc.read().decode(errors="replace").strip()
            raise RegistrationRefused(f"hub answered {exc.code}: {text}") from None
