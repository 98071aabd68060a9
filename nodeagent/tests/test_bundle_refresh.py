"""The node agent's trust-bundle poll, against a real in-process CA and the agent's real SDS.

A root rotation must reach Envoy before the agent's certificate is due: the agent polls the CA's
public ``TrustBundle`` RPC every ``bundle_refresh`` seconds and writes a changed bundle to the
proxy's secret files with the *same* certificate. Here the leaf lives an hour and the poll runs
every 0.2 s; the secrets are read the way Envoy reads them (the SDS documents in the files).

What the agent checks about a bundle: the poll's TLS handshake authenticates the CA with the
roots the agent trusts now, so a server that cannot prove it is the mesh's CA (its serving
certificate does not chain to those roots) is refused and changes nothing. The bundle's
contents themselves are taken from an authenticated CA as they are.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format

from meshfed.nodeagent.agent import AgentConfig, NodeAgent
from meshfed.nodeagent.client import CAClient, CARefused
from meshfed.security.ca import CertificateAuthority, start_root_rotation
from meshfed.security.sds_files import CERT_SECRET as CERT_NAME
from meshfed.security.sds_files import ROOT_SECRET as ROOT_NAME
from meshfed.security.sds_files import secret_path
from meshfed.security.service import CAServer, SigningService
from meshfed.security.storage import FileStorage
from meshfed.security.tokens import JoinTokenStore

TRUST_DOMAIN = "cluster.local"
REFRESH = 0.2
HOUR = dt.timedelta(hours=1)


async def start_ca(folder: Path) -> tuple[CAServer, FileStorage, JoinTokenStore]:
    storage = FileStorage(folder)
    ca = CertificateAuthority.load_or_create(storage, TRUST_DOMAIN)
    tokens = JoinTokenStore(folder / "tokens.json")
    server = CAServer(SigningService(ca, tokens), "127.0.0.1:0", "127.0.0.1:0")
    await server.start()
    return server, storage, tokens


@pytest.fixture
async def ca(tmp_path: Path) -> AsyncIterator[tuple[CAServer, FileStorage, JoinTokenStore]]:
    started = await start_ca(tmp_path / "ca")
    yield started
    await started[0].stop()


async def fetch(directory: Path) -> dict[str, secret_pb2.Secret]:
    """Both secrets as Envoy reads them: one SDS document per file."""
    out = {}
    for name in (CERT_NAME, ROOT_NAME):
        text = Path(secret_path(directory, name)).read_text()
        (resource,) = json_format.Parse(text, discovery_pb2.DiscoveryResponse()).resources
        secret = secret_pb2.Secret()
        resource.Unpack(secret)
        out[secret.name] = secret
    return out


def roots(secrets: dict[str, secret_pb2.Secret]) -> list[x509.Certificate]:
    pem = secrets[ROOT_NAME].validation_context.trusted_ca.inline_bytes
    return x509.load_pem_x509_certificates(pem)


def leaf_serial(secrets: dict[str, secret_pb2.Secret]) -> int:
    chain = secrets[CERT_NAME].tls_certificate.certificate_chain.inline_bytes
    return x509.load_pem_x509_certificates(chain)[0].serial_number


async def until(check, what: str, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def test_rotation_reaches_the_files_between_renewals_and_an_unauthenticated_ca_is_refused(
    tmp_path: Path,
    ca: tuple[CAServer, FileStorage, JoinTokenStore],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, storage, tokens = ca
    authority = server.service.ca
    config = AgentConfig(
        ca_address=server.bootstrap_target,
        ca_renewal_address=server.renewal_target,
        ca_root_pem=authority.root_pem,
        trust_domain=TRUST_DOMAIN,
        namespace="shop",
        service_account="web",
        secrets_dir=tmp_path / "agent",
        join_token=tokens.create("shop", "web"),
        ttl=HOUR,  # renewal is half an hour away: anything new in the bundle came by the poll
        bundle_refresh=REFRESH,
    )
    config.ca_timeout = 5.0
    agent = NodeAgent(config)
    await agent.start()
    try:
        before = await fetch(config.secrets_dir)
        old_root = authority.roots[0]
        assert roots(before) == [old_root]
        serial = leaf_serial(before)
        assert agent.not_after is not None
        assert agent.not_after - dt.datetime.now(dt.UTC) > dt.timedelta(minutes=50)
        # Polls of an unchanged bundle push nothing.
        await asyncio.sleep(REFRESH * 4)
        assert agent.bundle_updates == 0
        version = agent.files.version

        # The operator starts a rotation in the CA's storage; the running CA picks it up.
        record = start_root_rotation(storage, TRUST_DOMAIN, HOUR, HOUR)
        assert authority.reload() is True
        new_root = x509.load_pem_x509_certificate(record.new_cert_pem)
        assert set(authority.roots) == {old_root, new_root}

        async def has_new_root() -> bool:
            return new_root in roots(await fetch(config.secrets_dir))

        # Each poll is a short-lived process (its start-up is most of the bound).
        await until(has_new_root, "the new root in the agent's ROOTCA secret", REFRESH * 5 + 10)
        after = await fetch(config.secrets_dir)
        assert set(roots(after)) == {old_root, new_root}  # the add phase: both trusted
        assert leaf_serial(after) == serial  # no renewal: the same certificate...
        assert agent.serials == [serial]
        assert after[CERT_NAME] == before[CERT_NAME]  # ...and the same key
        assert agent.bundle_updates == 1
        assert agent.files.version == version + 1
        # The agent now authenticates the CA with the new bundle, too.
        assert agent.root_pem == authority.root_pem

        # A server at the CA's address that cannot prove it is this mesh's CA: its own
        # self-signed root, the right server name. Its bundle is refused (TLS fails).
        imposter, _, _ = await start_ca(tmp_path / "imposter")
        try:
            with pytest.raises(CARefused) as refused:
                await CAClient(
                    imposter.bootstrap_target, imposter.renewal_target, agent.root_pem, timeout=2
                ).trust_bundle()
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE
            agent.config.ca_address = imposter.bootstrap_target
            caplog.set_level(logging.WARNING, logger="meshfed.nodeagent")
            caplog.clear()

            async def poll_failed() -> bool:
                return "trust bundle poll failed" in caplog.text

            await until(poll_failed, "a refused poll", REFRESH * 10 + 20)
            await asyncio.sleep(REFRESH * 3)  # more polls, all refused
            held = await fetch(config.secrets_dir)
            assert set(roots(held)) == {old_root, new_root}
            assert imposter.service.ca.roots[0] not in roots(held)
            assert agent.bundle_updates == 1
            assert agent.files.version == version + 1
            assert agent.serials == [serial]
        finally:
            await imposter.stop()
    finally:
        await agent.stop()
