"""The hub side of workload registration: a ``HubComponent`` owning the ``workloads`` member.

Why a module of its own: it needs aiohttp's server (the hub's monitoring port), which the node
agent never loads; the agent only needs :mod:`nodeagent.registration` (signing and a stdlib
client). Add it to the hub with ``WorkloadRegistration()`` in ``meshfed.hub.default_components``.

Promises: registrations are accepted only when signed by a currently valid SVID from the trust
bundle (``$MESHFED_TRUST_BUNDLE``, else ``~/.meshfed/ca/root-cert.pem``, the file
``meshfed ca serve`` publishes; re-read on each request) whose namespace and service account are
the workload's own; the member is synced from the start (a push registry has no backlog).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509

from nodeagent.registration import (
    MEMBER_NAME,
    Registration,
    RegistrationRefused,
    parse_registration,
    registration_body,
    verify_request,
)
from registry.model import parse_spiffe_id
from security.identity import load_pem_chain

log = logging.getLogger("meshfed.nodeagent.registration")

TRUST_BUNDLE_ENV = "MESHFED_TRUST_BUNDLE"
DEFAULT_TRUST_BUNDLE = Path("~/.meshfed/ca/root-cert.pem")


class WorkloadRegistration:
    """Hub component: signed workload registration into the ``workloads`` registry member."""

    def __init__(self, trust_bundle: Path | str | None = None) -> None:
        configured = trust_bundle or os.environ.get(TRUST_BUNDLE_ENV) or DEFAULT_TRUST_BUNDLE
        self.trust_bundle = Path(configured).expanduser()
        self.registrations: dict[tuple[str, str], Registration] = {}
        self._member: Any = None
        self._trust_domain = ""

    async def start(self, hub: Any) -> None:
        self._trust_domain = hub.mesh.trust_domain
        self._member = hub.aggregate.add_member(MEMBER_NAME, "nodeagent")
        self._member.mark_synced()  # a push registry: empty is its complete initial state

    async def stop(self) -> None:
        return None

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/workloads", self._post),
            web.delete("/v1/workloads/{namespace}/{name}", self._delete),
            web.get("/v1/workloads", self._list),
        ]

    def not_ready(self) -> list[str]:
        return []

    def _roots(self) -> list[x509.Certificate]:
        # Read on every request: the CA may start after the hub, and the bundle may be rotated.
        try:
            return load_pem_chain(self.trust_bundle.read_bytes())
        except (OSError, ValueError) as exc:
            raise RegistrationRefused(f"no trust bundle at {self.trust_bundle}: {exc}") from None

    async def _authenticate(self, request: web.Request, body: bytes) -> tuple[str, str, str]:
        try:
            signer = verify_request(
                request.method, request.path, request.headers, body, self._roots()
            )
            return parse_spiffe_id(signer)
        except (RegistrationRefused, ValueError) as exc:
            log.warning("refused workload registration from %s: %s", request.remote, exc)
            raise web.HTTPForbidden(text=f"{exc}\n") from None

    async def _post(self, request: web.Request) -> web.Response:
        body = await request.read()
        domain, ns, sa = await self._authenticate(request, body)
        try:
            reg = parse_registration(json.loads(body))
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from None
        w = reg.workload
        if (domain, ns, sa) != (self._trust_domain, w.namespace, w.service_account):
            message = (
                f"caller spiffe://{domain}/ns/{ns}/sa/{sa} may not register workload "
                f"{w.namespace}/{w.name} as service account {w.service_account}"
            )
            log.warning("refused workload registration from %s: %s", request.remote, message)
            raise web.HTTPForbidden(text=message + "\n")
        key = (w.namespace, w.name)
        previous = self.registrations.get(key)
        self.registrations[key] = reg
        for service in reg.definitions:
            self._member.put_service(service)
        self._refresh({*reg.services, *(previous.services if previous else ())})
        log.info("registered workload %s/%s at %s for %s", *key, w.address, list(reg.services))
        return web.json_response({"registered": f"{w.namespace}/{w.name}"})

    async def _delete(self, request: web.Request) -> web.Response:
        body = await request.read()
        domain, ns, sa = await self._authenticate(request, body)
        key = (request.match_info["namespace"], request.match_info["name"])
        reg = self.registrations.get(key)
        if reg is None:
            raise web.HTTPNotFound(text=f"no workload {key[0]}/{key[1]}\n")
        if (ns, sa) != (reg.workload.namespace, reg.workload.service_account):
            raise web.HTTPForbidden(text=f"spiffe://{domain}/ns/{ns}/sa/{sa} does not own {key}\n")
        del self.registrations[key]
        self._refresh(set(reg.services))
        for service in reg.definitions:
            if not any(service in r.definitions for r in self.registrations.values()):
                self._member.delete_service(service.hostname)
        log.info("deregistered workload %s/%s", *key)
        return web.json_response({"deregistered": f"{key[0]}/{key[1]}"})

    async def _list(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {**registration_body(r.workload, list(r.services)), "identity": self._id(r)}
                for r in self.registrations.values()
            ]
        )

    def _id(self, reg: Registration) -> str:
        return reg.workload.identity(self._trust_domain)

    def _refresh(self, hostnames: set[str]) -> None:
        for host in sorted(hostnames):
            endpoints = [
                r.workload.as_endpoint(self._trust_domain)
                for r in self.registrations.values()
                if host in r.services
            ]
            self._member.set_endpoints(host, endpoints)
