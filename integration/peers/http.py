"""Tiny stdlib HTTP helpers for readiness probes.

Readiness checks use only the standard library so the harness works before any
client library is imported, and so a probe never shares state (pools, retries) with
the client under test.
"""

from __future__ import annotations

import json
import ssl
import urllib.request
from typing import Any


def get(
    url: str,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 2.0,
    context: ssl.SSLContext | None = None,
) -> tuple[int, bytes]:
    """GET ``url``; return (status, body). HTTP error statuses are returned, not raised."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def get_json(url: str, **kwargs: Any) -> Any:
    """GET ``url`` and decode JSON; raise on a non-2xx status."""
    status, body = get(url, headers={"Accept": "application/json"}, **kwargs)
    if not 200 <= status < 300:
        raise RuntimeError(f"GET {url} -> {status}: {body[:200]!r}")
    return json.loads(body)
