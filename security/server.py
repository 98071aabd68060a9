"""The CA process as a component: load the root, serve signing, follow rotations, say if ready.

Why a component (not code inside the CLI): ``meshfed ca serve`` is a process of parts like the
hub -- the CA material, the gRPC signing servers, a background task that follows root rotations,
the monitoring port -- and it gets the same lifecycle (:mod:`core.lifecycle`), supervisor and
monitoring server (:mod:`core.monitoring`). The CLI only turns flags into :class:`CASettings`.

Readiness is real: ``/healthz/ready`` answers 503 until the CA material is loaded, the trust
bundle is published and both gRPC ports are bound, and again whenever the current signing
certificate is outside its validity (a clock or storage problem: every signature would be
refused by peers). A failing storage re-read is reported under ``degraded`` (the CA keeps
signing with the material it has) and the follower task is supervised.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
from aiohttp import web

from meshfed.core.supervisor import Supervisor
from meshfed.security.ca import CertificateAuthority
from meshfed.security.rootmap import RootConfigMap
from meshfed.security.service import CAServer, KubernetesTokenReviewer, SigningService
from meshfed.security.storage import private_dir, write_private
from meshfed.security.tokens import JoinTokenStore

log = logging.getLogger("meshfed.security.server")

FOLLOWER = "ca rotation follower"


@attrs.frozen
class CASettings:
    state_dir: Path
    listen: str = "127.0.0.1:15012"
    renew_listen: str = "127.0.0.1:15013"
    system_namespace: str = "meshfed-system"
    reload_interval: dt.timedelta = dt.timedelta(seconds=10)
    # identity -> DNS names its certificates carry (the hub's webhook Service names)
    serving_names: dict[str, tuple[str, ...]] = attrs.field(factory=dict)


def publish_root(state_dir: Path, root_pem: bytes) -> Path:
    """Write the trust bundle (public) where node agents and the hub look for it (blocking)."""
    path = state_dir / "root-cert.pem"
    if not path.exists() or path.read_bytes() != root_pem:
        private_dir(state_dir)
        write_private(path, root_pem, 0o644)
    return path


class CAComponent:
    """The certificate authority's serving side; a :class:`~core.lifecycle.Component`."""

    def __init__(
        self,
        load_ca: Callable[[], CertificateAuthority],
        settings: CASettings,
        supervisor: Supervisor,
        reviewer: KubernetesTokenReviewer | None = None,
        root_map: RootConfigMap | None = None,
    ) -> None:
        self._load_ca = load_ca  # blocking (storage, files): runs in a worker thread
        self.root_map = root_map
        self.settings = settings
        self.supervisor = supervisor
        self.reviewer = reviewer
        self.ca: CertificateAuthority | None = None
        self.server: CAServer | None = None
        self.root_path: Path | None = None
        self.reload_error: str | None = None

    async def start(self) -> None:
        self.ca = ca = await asyncio.to_thread(self._load_ca)
        state_dir = self.settings.state_dir
        self.root_path = await asyncio.to_thread(publish_root, state_dir, ca.root_pem)
        if self.root_map is not None:
            await asyncio.to_thread(self.root_map.publish, ca.root_pem)
        tokens = JoinTokenStore(state_dir / "tokens.json")
        service = SigningService(ca, tokens, self.reviewer, self.settings.serving_names)
        server = CAServer(
            service,
            self.settings.listen,
            self.settings.renew_listen,
            self.settings.system_namespace,
        )
        self.server = server
        await server.start()
        if ca.storage is not None:
            self.supervisor.spawn(FOLLOWER, self._follow_rotation)

    async def stop(self) -> None:
        await self.supervisor.retire(FOLLOWER, grace=0.0)
        if self.server is not None:
            await self.server.stop()
            self.server = None

    async def _follow_rotation(self) -> None:
        """Re-read the storage (a rotation the operator started) and republish the bundle.

        Phases change by the clock, so the signer switches on time at every signing; this loop
        only has to notice a *new* rotation and keep ``root-cert.pem`` equal to the bundle.
        """
        assert self.ca is not None
        ca = self.ca
        while True:
            await asyncio.sleep(self.settings.reload_interval.total_seconds())
            try:
                await asyncio.to_thread(ca.reload)
                await asyncio.to_thread(publish_root, self.settings.state_dir, ca.root_pem)
                if self.root_map is not None:
                    await asyncio.to_thread(self.root_map.publish, ca.root_pem)
            except Exception as exc:  # a full disk must not stop the CA; try again later
                if self.reload_error is None:
                    log.warning("could not refresh the CA material or bundle: %s", exc)
                self.reload_error = f"{type(exc).__name__}: {exc}"
            else:
                if self.reload_error is not None:
                    log.info("CA material and bundle refreshed again")
                self.reload_error = None

    # -- readiness and debug ----------------------------------------------------------------
    def not_ready(self, now: dt.datetime | None = None) -> list[str]:
        if self.ca is None:
            return ["ca: the CA material is not loaded"]
        if self.server is None or self.server.server is None:
            return ["ca: the signing servers are not serving"]
        reasons = []
        now = now or dt.datetime.now(dt.UTC)
        signer = self.ca.signer_cert
        if not signer.not_valid_before_utc <= now < signer.not_valid_after_utc:
            reasons.append(
                f"ca: the signing certificate is not valid now (valid "
                f"{signer.not_valid_before_utc.isoformat()} to "
                f"{signer.not_valid_after_utc.isoformat()})"
            )
        if self.root_path is None:
            reasons.append("ca: the trust bundle is not published")
        return reasons

    def degraded(self) -> list[str]:
        if self.reload_error is None:
            return []
        return [
            f"ca: re-reading the CA storage failed (serving the last good material): "
            f"{self.reload_error}"
        ]

    def describe(self) -> dict[str, Any]:
        if self.ca is None or self.server is None:
            return {"started": False}
        ca = self.ca
        return {
            "trust_domain": ca.trust_domain,
            "root_sha256": hashlib.sha256(ca.root_pem).hexdigest(),
            "signer_not_after": ca.signer_cert.not_valid_after_utc.isoformat(),
            "bootstrap": self.server.bootstrap_target,
            "renewal": self.server.renewal_target,
            "root_file": str(self.root_path),
            "reload_error": self.reload_error,
            **ca.status(),
        }

    def routes(self) -> list[web.RouteDef]:
        async def debug(request: web.Request) -> web.Response:
            return web.json_response(self.describe())

        return [web.get("/debug/ca", debug)]
