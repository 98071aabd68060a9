"""The node agent: joins a VM to the mesh and keeps its identity fresh.

Why: a VM has no kubelet and no injector. One process (``meshfed nodeagent``) does all of it:
obtain an identity from the CA with a join token (or a Kubernetes token), hand it to the local
Envoy as file-based SDS (:mod:`nodeagent.sdsfiles`), register the VM's workload with the hub so
the mesh routes to it, run the sidecar, renew the certificate before it expires, and undo all
of that on stop.

Promises:
- The private key is generated on this machine, a fresh one for every renewal, in a
  short-lived child (:mod:`nodeagent.issuer`; so are the CA calls and the signed hub
  requests), and handed to the local Envoy in a 0600 file in a 0700 directory this user owns
  (tmpfs by default); see :mod:`nodeagent.sdsfiles` for why, and docs/security.md for what
  that protects and what it does not.
- Renewal happens at half the lifetime with jitter (:mod:`nodeagent.rotation`); the new
  certificate and key replace the old ones in one atomic rename, Envoy watches the directory
  and applies them to new connections, so it never restarts.
- The hub registration is signed with the workload's own SVID (:mod:`nodeagent.registration`)
  and repeated every ``register_interval`` seconds, so a restarted hub learns the VM again.
- The trust bundle is polled every ``bundle_refresh`` seconds and pushed to Envoy when it
  changes (a root rotation), besides arriving with every renewal.
- A sidecar that exits on its own is restarted (jittered backoff); the files still hold its
  secrets.
- ``stop()`` deregisters first (so traffic stops arriving), then stops the sidecar and removes
  the secret files.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import random
import signal
import tempfile
from pathlib import Path
from typing import Any

import attrs
import tenacity

from meshfed.core.supervisor import Supervisor
from meshfed.nodeagent.issuer import ChildIssuer, Issued
from meshfed.nodeagent.rotation import Rotator
from meshfed.nodeagent.sdsfiles import SecretFiles
from meshfed.registry.model import Workload, spiffe_id
from meshfed.security import sds_files

# Mirror security.mtls.TLS_MODE_LABEL / TLS_MODE_MTLS / SDS_CLUSTER without loading Envoy's
# protos here (a test keeps them equal).
TLS_MODE_LABEL = "security.meshfed.io/tlsMode"
TLS_MODE_MTLS = "mtls"
SDS_PLACEHOLDER_CLUSTER = "sds-grpc"

log = logging.getLogger("meshfed.nodeagent")


@attrs.define
class AgentConfig:
    """Everything ``meshfed nodeagent`` needs (the CLI fills it from flags and files)."""

    ca_address: str
    ca_renewal_address: str
    ca_root_pem: bytes = attrs.field(repr=False)
    trust_domain: str
    namespace: str
    service_account: str
    secrets_dir: Path  # this proxy's secret files (nodeagent.sdsfiles)
    join_token: str | None = attrs.field(default=None, repr=False)
    kubernetes_token: str | None = attrs.field(default=None, repr=False)
    ttl: dt.timedelta | None = None
    key_type: str = "ec-p256"
    hub_url: str | None = None
    workload: Workload | None = None
    services: tuple[str, ...] = ()
    definitions: list[dict[str, Any]] = attrs.field(factory=list)
    register_interval: float = 30.0
    sidecar_bootstrap: dict[str, Any] | None = None
    workdir: Path | None = None
    renew_fraction: float = 0.5
    renew_jitter: float = 0.1
    bundle_refresh: float = 60.0  # seconds between trust-bundle polls; 0 = only at renewal
    ca_timeout: float = 10.0  # seconds per CA call attempt

    @property
    def identity(self) -> str:
        return spiffe_id(self.trust_domain, self.namespace, self.service_account)


def with_secret_files(bootstrap: dict[str, Any], directory: Path | str) -> dict[str, Any]:
    """``bootstrap`` with the node metadata that tells Pilot where this proxy's secrets are
    (``SDS=true``, ``SDS_PATH=<directory>``: without them a gateway gets plain clusters, see
    ``pilot.translate.gateway``), and every mesh secret its static resources name (by the
    agent's SDS placeholder, as :mod:`security.mtls` builds them) pointed at those files."""
    boot = _to_files(json.loads(json.dumps(bootstrap)), str(directory))
    meta = boot.setdefault("node", {}).setdefault("metadata", {})
    meta["SDS"] = "true"
    meta["SDS_PATH"] = str(directory)
    return boot


def _to_files(value: Any, directory: str) -> Any:
    # A walk over the JSON form, not Envoy's protobufs: an operator's bootstrap may name any
    # extension, and the agent loads no descriptors (nor their memory) to edit two fields.
    if isinstance(value, list):
        return [_to_files(v, directory) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: _to_files(v, directory) for k, v in value.items()}
    name = out.get("name")
    for key in ("sds_config", "sdsConfig"):
        source = out.get(key)
        if name in (sds_files.CERT_SECRET, sds_files.ROOT_SECRET) and _is_placeholder(source):
            out[key] = {
                "path_config_source": {
                    "path": sds_files.secret_path(directory, name),
                    "watched_directory": {"path": directory},
                },
                "resource_api_version": "V3",
            }
    return out


def _is_placeholder(source: Any) -> bool:
    if not isinstance(source, dict):
        return False
    api = source.get("api_config_source") or source.get("apiConfigSource") or {}
    services = api.get("grpc_services") or api.get("grpcServices") or []
    for service in services:
        grpc = service.get("envoy_grpc") or service.get("envoyGrpc") or {}
        if (grpc.get("cluster_name") or grpc.get("clusterName")) == SDS_PLACEHOLDER_CLUSTER:
            return True
    return False


class SidecarProcess:
    """The local Envoy, in its own process group, started from a bootstrap dict."""

    def __init__(self, bootstrap: dict[str, Any], workdir: Path) -> None:
        self.bootstrap = bootstrap
        self.workdir = workdir
        self.proc: asyncio.subprocess.Process | None = None
        self.log_path = workdir / "envoy.log"

    async def start(self) -> None:
        from meshfed.core.envoy import envoy_binary

        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "envoy-bootstrap.json"
        config.write_text(json.dumps(self.bootstrap, indent=1))  # no secrets: files have them
        with open(self.log_path, "ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                str(envoy_binary()),
                "-c",
                str(config),
                "--base-id",
                str(random.randint(1, 2**31)),
                "--concurrency",
                "1",
                "--log-level",
                "info",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        log.info("sidecar started (pid %d, log %s)", self.proc.pid, self.log_path)

    async def stop(self, timeout: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), timeout)
        # Sweep the group even after a clean exit: children may outlive their parent.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


class NodeAgent:
    """Key, certificate, secret files, registration, sidecar and rotation for one identity."""

    def __init__(self, config: AgentConfig, issuer: ChildIssuer | None = None) -> None:
        self.config = config
        # Keys, CSRs, CA calls and signed hub requests run in a short-lived child each.
        self.issuer = issuer or ChildIssuer()
        self.files = SecretFiles(config.secrets_dir)
        self.rotator = Rotator(self.renew, config.renew_fraction, config.renew_jitter)
        self.key_pem = b""
        self.chain_pem = b""
        self.root_pem = config.ca_root_pem
        self.not_after: dt.datetime | None = None
        self.serials: list[int] = []  # every certificate this agent has served, in order
        self.sidecar: SidecarProcess | None = None
        self.supervisor = Supervisor(export_metrics=False)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.registered = False
        self.sidecar_restarts = 0
        self.bundle_updates = 0  # bundle changes pushed between renewals

    async def start(self) -> None:
        cfg = self.config
        await asyncio.to_thread(self.files.prepare)  # a bad directory fails before the CA call
        response = await self.issuer.issue(
            self._ca_request(
                "bootstrap", join_token=cfg.join_token, kubernetes_token=cfg.kubernetes_token
            )
        )
        await self._install(response)
        log.info(
            "obtained %s (valid until %s)",
            response.identity,
            response.not_after,
            extra={"identity": response.identity},
        )
        try:
            if cfg.hub_url and cfg.workload is not None:
                await self.register()
                self.supervisor.spawn("nodeagent registration", self._keep_registered)
            if cfg.sidecar_bootstrap is not None:
                workdir = cfg.workdir
                if workdir is None:
                    self._tmp = tempfile.TemporaryDirectory(prefix="meshfed-nodeagent-")
                    workdir = Path(self._tmp.name)
                boot = with_secret_files(cfg.sidecar_bootstrap, cfg.secrets_dir)
                self.sidecar = SidecarProcess(boot, workdir)
                await self.sidecar.start()
                self.supervisor.spawn(
                    "nodeagent sidecar", self._supervise_sidecar, restart_on_exit=False
                )
            self.supervisor.spawn("nodeagent rotation", self._rotate)
            if cfg.bundle_refresh > 0:
                self.supervisor.spawn("nodeagent trust bundle", self._follow_bundle)
        except BaseException:
            await self.stop()
            raise

    async def _rotate(self) -> None:
        # From the certificate in force now: a restarted rotation loop renews on time.
        assert self.not_after is not None
        await self.rotator.run(self.not_after)

    def describe(self) -> dict[str, Any]:
        """What ``/debug/nodeagent`` shows."""
        proc = self.sidecar.proc if self.sidecar else None
        return {
            "identity": self.config.identity,
            "not_after": self.not_after.isoformat() if self.not_after else None,
            "serials": [f"{s:x}" for s in self.serials],
            "rotations": self.rotator.rotations,
            "registered": self.registered,
            "secrets": self.files.describe(),
            "sidecar_pid": proc.pid if proc else None,
            "tasks": self.supervisor.describe(),
        }

    def not_ready(self) -> list[str]:
        if self.not_after is None:
            return ["nodeagent: no certificate yet"]
        not_after = self.not_after
        if not_after.tzinfo is None:
            not_after = not_after.replace(tzinfo=dt.UTC)
        if not_after <= dt.datetime.now(dt.UTC):
            return [f"nodeagent: the certificate expired at {self.not_after.isoformat()}"]
        return []

    def degraded(self) -> list[str]:
        found = [
            f"{t} failing (restarting): {why}" for t, why in self.supervisor.failures().items()
        ]
        if self.files.last_error:
            found.append(f"nodeagent: {self.files.last_error} (Envoy keeps the last good secrets)")
        return found

    def _ca_request(self, op: str, **extra: Any) -> dict[str, Any]:
        cfg = self.config
        return {
            "op": op,
            "ca_address": cfg.ca_address,
            "ca_renewal_address": cfg.ca_renewal_address,
            # Trust what the CA last said the roots are (a root rotation reaches the agent).
            "root_pem": self.root_pem.decode(),
            "identity": cfg.identity,
            "key_type": cfg.key_type,
            "ttl_seconds": cfg.ttl.total_seconds() if cfg.ttl else None,
            "timeout": cfg.ca_timeout,
            **extra,
        }

    async def _install(self, response: Issued) -> None:
        # Written first: if the files cannot be written, the agent keeps serving (and renewing
        # with) the certificate Envoy still has.
        await asyncio.to_thread(
            self.files.write, response.chain_pem, response.key_pem, response.root_pem
        )
        self.key_pem = response.key_pem
        self.chain_pem = response.chain_pem
        self.root_pem = response.root_pem
        self.not_after = response.not_after
        self.serials.append(response.serial)

    async def renew(self) -> dt.datetime:
        """Renew now with the current certificate; returns the new certificate's notAfter."""
        assert self.key_pem
        response = await self.issuer.issue(
            self._ca_request(
                "renew", key_pem=self.key_pem.decode(), chain_pem=self.chain_pem.decode()
            )
        )
        await self._install(response)
        log.info(
            "renewed %s (valid until %s)",
            response.identity,
            response.not_after,
            extra={"identity": response.identity},
        )
        return response.not_after

    async def update_bundle(self, root_pem: bytes) -> bool:
        """Hand Envoy a changed trust bundle (a root rotation) without a new certificate."""
        if root_pem == self.root_pem or not self.key_pem:
            return False
        await asyncio.to_thread(self.files.write, self.chain_pem, self.key_pem, root_pem)
        self.root_pem = root_pem
        self.bundle_updates += 1
        log.info("trust bundle changed: %d root(s) pushed to Envoy", root_pem.count(b"BEGIN"))
        return True

    async def _follow_bundle(self) -> None:
        """Poll the CA's trust bundle, so a root rotation reaches Envoy before renewal is due."""
        interval = self.config.bundle_refresh
        while True:
            await asyncio.sleep(interval * random.uniform(0.9, 1.1))
            try:
                answer = await self.issuer.call(self._ca_request("bundle"))
                await self.update_bundle(answer["root_pem"].encode())
            except Exception as exc:  # the CA may be restarting: renewal still carries it
                log.warning("trust bundle poll failed: %s", exc)

    async def register(self) -> None:
        cfg = self.config
        assert cfg.hub_url and cfg.workload is not None and self.key_pem
        workload = cfg.workload
        if cfg.sidecar_bootstrap is not None:
            # This VM's sidecar terminates mesh mutual TLS: say so, so clients originate it.
            workload = attrs.evolve(
                workload, labels=workload.labels.merged({TLS_MODE_LABEL: TLS_MODE_MTLS})
            )
        await self.issuer.call(
            {
                "op": "register",
                "hub_url": cfg.hub_url,
                "workload": {
                    "name": workload.name,
                    "namespace": workload.namespace,
                    "address": workload.address,
                    "ports": dict(workload.ports),
                    "labels": dict(workload.labels),
                    "service_account": workload.service_account,
                },
                "services": list(cfg.services),
                "definitions": cfg.definitions,
                "interval": cfg.register_interval,
                "key_pem": self.key_pem.decode(),
                "chain_pem": self.chain_pem.decode(),
            }
        )
        if not self.registered:
            log.info(
                "registered %s/%s with %s",
                cfg.namespace,
                cfg.workload.name,
                cfg.hub_url,
                extra={"workload": f"{cfg.namespace}/{cfg.workload.name}", "hub": cfg.hub_url},
            )
        self.registered = True

    async def _supervise_sidecar(self) -> None:
        """Restart the sidecar when it exits on its own (a crash), with jittered backoff.

        The files still hold the current secrets, so a restarted Envoy reads them at once.
        """
        sidecar = self.sidecar
        assert sidecar is not None
        retrying = tenacity.AsyncRetrying(
            wait=tenacity.wait_random_exponential(multiplier=0.5, max=30),
            retry=tenacity.retry_if_exception_type(Exception),
        )
        while True:
            proc = sidecar.proc
            if proc is None:
                return
            code = await proc.wait()
            if sidecar.proc is not proc:  # stop() took it: not a crash
                return
            self.sidecar_restarts += 1
            log.error("sidecar exited with %s; restarting (%d)", code, self.sidecar_restarts)
            async for attempt in retrying:
                with attempt:
                    await asyncio.sleep(0.2 * min(self.sidecar_restarts, 25))
                    await sidecar.start()

    async def _keep_registered(self) -> None:
        while True:
            await asyncio.sleep(self.config.register_interval)
            try:
                await self.register()
            except Exception as exc:  # the hub may be restarting; try again next interval
                log.warning("re-registration with %s failed: %s", self.config.hub_url, exc)

    async def stop(self) -> None:
        await self.supervisor.stop()
        self.supervisor = Supervisor(export_metrics=False)
        cfg = self.config
        if self.registered and cfg.hub_url and cfg.workload is not None and self.key_pem:
            try:
                await self.issuer.call(
                    {
                        "op": "deregister",
                        "hub_url": cfg.hub_url,
                        "namespace": cfg.workload.namespace,
                        "name": cfg.workload.name,
                        "key_pem": self.key_pem.decode(),
                        "chain_pem": self.chain_pem.decode(),
                    }
                )
                log.info(
                    "deregistered %s/%s",
                    cfg.workload.namespace,
                    cfg.workload.name,
                    extra={"workload": f"{cfg.workload.namespace}/{cfg.workload.name}"},
                )
            except Exception as exc:
                log.error("deregistration failed: %s", exc)
            self.registered = False
        if self.sidecar is not None:
            await self.sidecar.stop()
            self.sidecar = None
        await asyncio.to_thread(self.files.remove)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
