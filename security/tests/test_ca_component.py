"""The CA process as a component: real readiness, supervised rotation follower, clean stop."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from meshfed.core.lifecycle import Lifecycle, StartFailed
from meshfed.core.supervisor import Supervisor
from meshfed.security.ca import CertificateAuthority
from meshfed.security.server import FOLLOWER, CAComponent, CASettings
from meshfed.security.storage import FileStorage

TD = "example.org"


def _component(tmp_path: Path, listen: str = "127.0.0.1:0") -> tuple[CAComponent, Supervisor]:
    supervisor = Supervisor()
    settings = CASettings(
        state_dir=tmp_path / "state",
        listen=listen,
        renew_listen="127.0.0.1:0",
        reload_interval=dt.timedelta(seconds=0.05),
    )

    def load() -> CertificateAuthority:
        return CertificateAuthority.load_or_create(FileStorage(tmp_path / "state"), TD)

    return CAComponent(load, settings, supervisor), supervisor


async def test_ready_only_once_serving_and_while_the_signer_is_valid(tmp_path: Path) -> None:
    ca, supervisor = _component(tmp_path)
    assert ca.not_ready() == ["ca: the CA material is not loaded"]
    await ca.start()
    try:
        assert ca.not_ready() == []
        assert ca.root_path is not None and ca.root_path.read_bytes() == ca.ca.root_pem  # type: ignore[union-attr]
        assert ca.server is not None and ca.server.bootstrap_port > 0
        # Both ports accept connections (the signing service answers TLS there).
        for target in (ca.server.bootstrap_target, ca.server.renewal_target):
            host, _, port = target.rpartition(":")
            with socket.create_connection((host, int(port)), timeout=2):
                pass
        signer = ca.ca.signer_cert  # type: ignore[union-attr]
        later = signer.not_valid_after_utc + dt.timedelta(seconds=1)
        (reason,) = ca.not_ready(now=later)
        assert "signing certificate is not valid now" in reason
        assert supervisor.describe()[FOLLOWER]["running"] is True
        assert ca.describe()["trust_domain"] == TD
    finally:
        await ca.stop()
        await supervisor.stop()
    assert ca.not_ready() == ["ca: the signing servers are not serving"]
    assert supervisor.describe()[FOLLOWER]["running"] is False


async def test_a_failing_bundle_refresh_is_degraded_not_unready(tmp_path: Path) -> None:
    ca, supervisor = _component(tmp_path)
    await ca.start()
    bundle = tmp_path / "state" / "root-cert.pem"
    try:
        bundle.unlink()
        bundle.mkdir()  # the bundle cannot be republished (as with a full or broken disk)
        await _until(lambda: bool(ca.degraded()))
        assert "re-reading the CA storage failed" in ca.degraded()[0]
        assert ca.not_ready() == []  # it keeps signing with the material it has
        bundle.rmdir()
        await _until(lambda: not ca.degraded())
        assert bundle.read_bytes() == ca.ca.root_pem  # type: ignore[union-attr]
    finally:
        await ca.stop()
        await supervisor.stop()


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_a_taken_port_fails_the_start_and_the_lifecycle_unwinds(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ca, supervisor = _component(tmp_path, listen=f"127.0.0.1:{taken.getsockname()[1]}")
    life = Lifecycle()
    life.add("ca", ca)
    try:
        with pytest.raises(StartFailed, match="ca could not start"):
            await life.start()
    finally:
        taken.close()
        await supervisor.stop()
    assert ca.server is None
