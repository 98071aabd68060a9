"""Serving SANs from the CA: DNS names and IPs only for the identity the CA names (the hub)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from meshfed.nodeagent.keys import generate_key, make_csr
from meshfed.security import identity
from meshfed.security.ca import CertificateAuthority
from meshfed.security.caclient import CAClient, CARefused
from meshfed.security.service import CAServer, SigningService
from meshfed.security.tokens import JoinTokenStore

HUB = "spiffe://example.org/ns/meshfed-system/sa/meshfed-hub"
HUB_NAMES = ("meshfed-hub.meshfed-system.svc", "meshfed-hub.meshfed-system.svc.cluster.local")


@pytest.fixture
async def server(ca: CertificateAuthority, tmp_path: Path) -> AsyncIterator[CAServer]:
    service = SigningService(
        ca, JoinTokenStore(tmp_path / "tokens.json"), serving_names={HUB: HUB_NAMES}
    )
    srv = CAServer(service, "127.0.0.1:0", "127.0.0.1:0")
    await srv.start()
    yield srv
    await srv.stop()


def _client(srv: CAServer) -> CAClient:
    return CAClient(srv.bootstrap_target, srv.renewal_target, srv.service.ca.root_pem, attempts=2)


def _sans(chain_pem: bytes) -> tuple[list[str], list[str]]:
    leaf = identity.load_pem_chain(chain_pem)[0]
    ext = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ext.get_values_for_type(x509.DNSName), [
        str(ip) for ip in ext.get_values_for_type(x509.IPAddress)
    ]


async def test_the_hub_gets_its_service_names_and_the_ip_it_asks_for(server: CAServer) -> None:
    token = server.service.tokens.create("meshfed-system", "meshfed-hub")  # type: ignore[union-attr]
    issued = await _client(server).bootstrap(
        make_csr(generate_key()), join_token=token, ip_addresses=["127.0.0.9"]
    )
    assert issued.identity == HUB
    names, ips = _sans(issued.chain_pem)
    assert names == list(HUB_NAMES)
    assert ips == ["127.0.0.9"]


async def test_another_identity_gets_no_dns_names_and_may_not_ask_for_ips(
    server: CAServer,
) -> None:
    tokens = server.service.tokens
    assert tokens is not None
    plain = await _client(server).bootstrap(
        make_csr(generate_key()), join_token=tokens.create("shop", "cart")
    )
    assert _sans(plain.chain_pem) == ([], [])
    with pytest.raises(CARefused) as refused:
        await _client(server).bootstrap(
            make_csr(generate_key()),
            join_token=tokens.create("shop", "cart"),
            ip_addresses=["127.0.0.9"],
        )
    assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert "IP address SANs" in refused.value.details
