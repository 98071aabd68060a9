"""The hub side of workload registration: the registry adapter of the ``workloads`` member.

Why a module of its own: it needs aiohttp's server (the hub's monitoring port), which the node
agent never loads; the agent only needs :mod:`nodeagent.registration` (signing and a stdlib
client). It is both a registry adapter (:class:`~adapters.contract.RegistryAdapter`: its
``run()`` expires leases) and a hub component (:class:`~core.component.HubComponent`: it adds
its member at start, serves its routes on the monitoring port and runs ``run()`` under the
hub's supervisor), because a push registry is fed by requests, not by a platform to follow.
The composition root adds it with ``WorkloadRegistration()``.

Promises: registrations are accepted only when signed by a currently valid SVID from the trust
bundle (``$MESHFED_TRUST_BUNDLE``, else ``~/.meshfed/ca/root-cert.pem``, the file
``meshfed ca serve`` publishes; re-read on each request) whose namespace and service account are
the workload's own; the member is synced from the start (a push registry has no backlog).

Leases, as Eureka does it: a registration lives :data:`LEASE_RENEWALS` renewal intervals (the
agent states its interval; 3 x 30 s by default) unless renewed. A VM that dies without
deregistering (power loss, a crashed agent) leaves the mesh when its lease runs out instead of
staying an endpoint forever. With a state file (``$MESHFED_WORKLOAD_STATE``, or the
constructor's ``state_file``) the registrations and their expiry times survive a hub restart:
a restarted hub serves its VMs at once instead of dropping them until every agent has
re-registered. The file is written atomically (0600) after every change; one that cannot be
read is logged and ignored (the agents re-register within an interval anyway).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509

from meshfed.adapters.workloads.protocol import (
    MEMBER_NAME,
    Registration,
    RegistrationRefused,
    parse_registration,
    registration_body,
    verify_request,
)
from meshfed.core.component import HubContext
from meshfed.core.files import FileRefused, read_config_file, read_config_text
from meshfed.core.supervisor import Supervisor
from meshfed.core.svid import load_pem_chain
from meshfed.registry.aggregate import Member
from meshfed.registry.model import parse_spiffe_id

log = logging.getLogger("meshfed.adapters.workloads")

TRUST_BUNDLE_ENV = "MESHFED_TRUST_BUNDLE"
DEFAULT_TRUST_BUNDLE = Path("~/.meshfed/ca/root-cert.pem")
STATE_FILE_ENV = "MESHFED_WORKLOAD_STATE"
LEASE_RENEWALS = 3  # renewal intervals a registration outlives its last renewal by
MIN_LEASE = 5.0  # seconds, whatever interval an agent claims
SWEEP_INTERVAL = 1.0  # seconds between expiry checks
TASK = "registry workloads"  # its supervised task


class WorkloadRegistration:
    """Hub component: signed workload registration into the ``workloads`` registry member."""

    def __init__(
        self, trust_bundle: Path | str | None = None, state_file: Path | str | None = None
    ) -> None:
        configured = trust_bundle or os.environ.get(TRUST_BUNDLE_ENV) or DEFAULT_TRUST_BUNDLE
        self.trust_bundle = Path(configured).expanduser()
        state = state_file or os.environ.get(STATE_FILE_ENV)
        self.state_file = Path(state).expanduser() if state else None
        self.registrations: dict[tuple[str, str], Registration] = {}
        self.expires: dict[tuple[str, str], float] = {}  # wall-clock seconds
        self._bodies: dict[tuple[str, str], dict[str, Any]] = {}  # as received, for the file
        self.expired = 0
        self._member: Member | None = None
        self._trust_domain = ""
        self._stopped = asyncio.Event()
        self._supervisor: Supervisor | None = None

    # -- the hub component -------------------------------------------------------------------
    async def start(self, hub: HubContext) -> None:
        self._trust_domain = hub.mesh.trust_domain
        self._member = hub.aggregate.add_member(MEMBER_NAME, "nodeagent")
        self._restore(await asyncio.to_thread(self._read_state))
        self.member.mark_synced()  # a push registry: what it holds now is complete
        self._stopped.clear()
        self._supervisor = hub.supervisor
        hub.supervisor.spawn(TASK, self.run)

    async def stop(self) -> None:
        self._stopped.set()
        if self._supervisor is not None:
            await self._supervisor.retire(TASK)

    # -- the registry adapter ----------------------------------------------------------------
    @property
    def member(self) -> Member:
        if self._member is None:
            raise RuntimeError("the workload registration has not started")
        return self._member

    @property
    def synced(self) -> bool:
        return self._member is not None and self.member.synced

    async def run(self) -> None:
        """Expire leases every :data:`SWEEP_INTERVAL` until :meth:`stop`."""
        while not self._stopped.is_set():
            try:
                await asyncio.wait_for(self._stopped.wait(), SWEEP_INTERVAL)
            except TimeoutError:
                self.expire(time.time())

    def describe(self) -> dict[str, Any]:
        return {
            "trust_bundle": str(self.trust_bundle),
            "state_file": str(self.state_file) if self.state_file else None,
            "registrations": len(self.registrations),
            "expired": self.expired,
        }

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
            return load_pem_chain(read_config_file(self.trust_bundle))
        except FileRefused as exc:
            raise RegistrationRefused(f"no trust bundle: {exc}") from None
        except ValueError as exc:
            raise RegistrationRefused(f"no trust bundle at {self.trust_bundle}: {exc}") from None

    async def _authenticate(self, request: web.Request, body: bytes) -> tuple[str, str, str]:
        try:
            roots = await asyncio.to_thread(self._roots)  # a file read: off the event loop
            signer = verify_request(request.method, request.path, request.headers, body, roots)
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
        renewed = key in self.registrations
        self._put(key, reg, json.loads(body), time.time() + self._lease(reg))
        self._save_state()
        if not renewed:
            log.info("registered workload %s/%s at %s for %s", *key, w.address, list(reg.services))
        return web.json_response({"registered": f"{w.namespace}/{w.name}"})

    def _put(
        self, key: tuple[str, str], reg: Registration, body: dict[str, Any], expires: float
    ) -> None:
        previous = self.registrations.get(key)
        self.registrations[key] = reg
        self.expires[key] = expires
        self._bodies[key] = body
        for service in reg.definitions:
            self.member.put_service(service)
        self._refresh({*reg.services, *(previous.services if previous else ())})

    def _remove(self, key: tuple[str, str]) -> None:
        reg = self.registrations.pop(key)
        self.expires.pop(key, None)
        self._bodies.pop(key, None)
        self._refresh(set(reg.services))
        for service in reg.definitions:
            if not any(service in r.definitions for r in self.registrations.values()):
                self.member.delete_service(service.hostname)

    @staticmethod
    def _lease(reg: Registration) -> float:
        return max(MIN_LEASE, LEASE_RENEWALS * reg.renewal_interval)

    def expire(self, now: float) -> list[tuple[str, str]]:
        """Drop registrations whose lease ran out before ``now``; the keys dropped."""
        gone = sorted(k for k, t in self.expires.items() if t <= now)
        for key in gone:
            self._remove(key)
            self.expired += 1
            log.warning(
                "workload %s/%s: lease expired (no renewal from its node agent); removed", *key
            )
        if gone:
            self._save_state()
        return gone

    def _save_state(self) -> None:
        if self.state_file is None:
            return
        entries = [
            {"expires": self.expires[k], "registration": self._bodies[k]}
            for k in sorted(self.registrations)
        ]
        try:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state_file.with_name(self.state_file.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump({"workloads": entries}, out)
            os.replace(tmp, self.state_file)
        except OSError as exc:
            log.error("cannot write workload state %s: %s", self.state_file, exc)

    def _read_state(self) -> list[tuple[Registration, dict[str, Any], float]]:
        """The unexpired registrations in the state file (a file read: run in a worker thread)."""
        if self.state_file is None or not self.state_file.exists():
            return []
        now = time.time()
        try:
            entries = json.loads(read_config_text(self.state_file))["workloads"]
            loaded = []
            for entry in entries:
                reg = parse_registration(entry["registration"])
                expires = float(entry["expires"])
                if expires > now:
                    loaded.append((reg, entry["registration"], expires))
        except (FileRefused, ValueError, KeyError, TypeError) as exc:
            log.error(
                "workload state %s unreadable (%s): starting empty; agents re-register",
                self.state_file,
                exc,
            )
            return []
        return loaded

    def _restore(self, loaded: list[tuple[Registration, dict[str, Any], float]]) -> None:
        for reg, body, expires in loaded:
            key = (reg.workload.namespace, reg.workload.name)
            self._put(key, reg, body, expires)
        if loaded:
            log.info("restored %d workload registration(s) from %s", len(loaded), self.state_file)

    async def _delete(self, request: web.Request) -> web.Response:
        body = await request.read()
        domain, ns, sa = await self._authenticate(request, body)
        key = (request.match_info["namespace"], request.match_info["name"])
        reg = self.registrations.get(key)
        if reg is None:
            raise web.HTTPNotFound(text=f"no workload {key[0]}/{key[1]}\n")
        if (ns, sa) != (reg.workload.namespace, reg.workload.service_account):
            raise web.HTTPForbidden(text=f"spiffe://{domain}/ns/{ns}/sa/{sa} does not own {key}\n")
        self._remove(key)
        self._save_state()
        log.info("deregistered workload %s/%s", *key)
        return web.json_response({"deregistered": f"{key[0]}/{key[1]}"})

    async def _list(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {
                    **registration_body(r.workload, list(r.services), None, r.renewal_interval),
                    "identity": self._id(r),
                    "expiresInSeconds": round(self.expires[k] - time.time(), 1),
                }
                for k, r in self.registrations.items()
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
            self.member.set_endpoints(host, endpoints)
