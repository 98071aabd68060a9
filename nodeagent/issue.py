"""One credential operation of the node agent, in a short-lived process of its own.

Why a process: generating a key, building a CSR, calling the CA over gRPC with mutual TLS and
signing a hub registration need ``cryptography`` and ``grpcio``, about 20 MB that would stay
resident in the agent for good once imported, although the agent needs them a few times an
hour. So the agent (:mod:`nodeagent.issuer`) runs ``python -m meshfed.nodeagent.issue`` for each
operation, hands it one JSON request on stdin and reads one JSON answer on stdout; the memory
is returned to the system when the process exits.

Operations (``"op"``): ``bootstrap`` (a new key and a certificate for a join or Kubernetes
token), ``renew`` (a new key and a certificate, authenticated by the current ones), ``bundle``
(the CA's trust bundle), ``register`` / ``deregister`` (the workload with the hub, signed with
the current key).

Promises:
- The private key is made here and leaves only through the stdout pipe to the agent that
  started this process; nothing is written to a disk, argv or the environment.
- Always one JSON object on stdout and exit status 0 when the request was handled:
  ``{"ok": true, ...}`` or ``{"ok": false, "refused": bool, "code": ..., "error": ...}``
  (``refused``: the CA or hub said no, retrying will not help). A bad request is an error
  answer naming the field, never a traceback.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from typing import Any


def _csr_and_key(request: dict[str, Any]) -> tuple[bytes, Any]:
    from meshfed.nodeagent import keys

    key = keys.generate_key(str(request.get("key_type") or "ec-p256"))
    return keys.make_csr(key, request["identity"]), key


def _client(request: dict[str, Any]) -> Any:
    from meshfed.security.caclient import CAClient

    return CAClient(
        request["ca_address"],
        request["ca_renewal_address"],
        request["root_pem"].encode(),
        timeout=float(request.get("timeout") or 10.0),
    )


def _issued(key: Any, response: Any) -> dict[str, Any]:
    from cryptography import x509

    from meshfed.nodeagent import keys

    leaf = x509.load_pem_x509_certificate(response.chain_pem)
    return {
        "ok": True,
        "key_pem": keys.key_pem(key).decode(),
        "chain_pem": response.chain_pem.decode(),
        "root_pem": response.root_pem.decode(),
        "identity": response.identity,
        "not_after": response.not_after.isoformat(),
        "serial": leaf.serial_number,
    }


def _ttl(request: dict[str, Any]) -> dt.timedelta | None:
    seconds = request.get("ttl_seconds")
    return dt.timedelta(seconds=float(seconds)) if seconds else None


def _key(pem: str) -> Any:
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(pem.encode(), password=None)


async def handle(request: dict[str, Any]) -> dict[str, Any]:
    """Run one operation; the answer as the agent reads it."""
    op = request.get("op")
    if op == "bootstrap":
        csr, key = _csr_and_key(request)
        response = await _client(request).bootstrap(
            csr,
            join_token=request.get("join_token"),
            kubernetes_token=request.get("kubernetes_token"),
            identity=request["identity"],
            ttl=_ttl(request),
        )
        return _issued(key, response)
    if op == "renew":
        csr, key = _csr_and_key(request)
        response = await _client(request).renew(
            csr,
            request["key_pem"].encode(),
            request["chain_pem"].encode(),
            identity=request["identity"],
            ttl=_ttl(request),
        )
        return _issued(key, response)
    if op == "bundle":
        return {"ok": True, "root_pem": (await _client(request).trust_bundle()).decode()}
    if op == "register":
        from meshfed.nodeagent import registration
        from meshfed.registry.model import Workload

        w = request["workload"]
        workload = Workload(
            name=w["name"],
            namespace=w["namespace"],
            address=w["address"],
            ports={str(k): int(v) for k, v in w["ports"].items()},
            labels=dict(w["labels"]),
            service_account=w["service_account"],
        )
        body = registration.registration_body(
            workload, list(request["services"]), request["definitions"], request["interval"]
        )
        key, chain = _key(request["key_pem"]), request["chain_pem"].encode()
        await registration.register(request["hub_url"], body, key, chain)
        return {"ok": True}
    if op == "deregister":
        from meshfed.nodeagent import registration

        key, chain = _key(request["key_pem"]), request["chain_pem"].encode()
        await registration.deregister(
            request["hub_url"], request["namespace"], request["name"], key, chain
        )
        return {"ok": True}
    return {"ok": False, "refused": True, "code": "", "error": f"op {op!r}: unknown operation"}


async def answer(request: dict[str, Any]) -> dict[str, Any]:
    """:func:`handle`, with every failure turned into an error answer."""
    from meshfed.nodeagent.registration import RegistrationRefused
    from meshfed.security.caclient import CARefused

    try:
        return await handle(request)
    except CARefused as exc:
        return {"ok": False, "refused": True, "code": exc.code.name, "error": exc.details}
    except RegistrationRefused as exc:
        return {"ok": False, "refused": True, "code": "", "error": str(exc)}
    except KeyError as exc:
        return {"ok": False, "refused": True, "code": "", "error": f"request: missing {exc}"}
    except Exception as exc:  # the CA or hub unreachable, a timeout: worth retrying
        return {"ok": False, "refused": False, "code": "", "error": f"{type(exc).__name__}: {exc}"}


def main() -> int:
    try:
        request = json.loads(sys.stdin.read())
        if not isinstance(request, dict):
            raise ValueError("expected a JSON object")
    except ValueError as exc:
        result: dict[str, Any] = {
            "ok": False,
            "refused": True,
            "code": "",
            "error": f"request: {exc}",
        }
    else:
        result = asyncio.run(answer(request))
    sys.stdout.write(json.dumps(result))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
