"""Signed workload registration with a real hub (aiohttp on loopback): only as oneself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from meshfed.config import MeshConfig
from meshfed.hub import Hub
from nodeagent import registration
from nodeagent.keys import generate_key, make_csr
from nodeagent.registration_server import WorkloadRegistration
from registry.model import Workload
from security import identity
from security.ca import CertificateAuthority
from security.storage import FileStorage

TD = "example.org"


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(FileStorage(tmp_path / "ca"), TD)


@pytest.fixture
async def hub(ca: CertificateAuthority, tmp_path: Path) -> AsyncIterator[Hub]:
    bundle = tmp_path / "root.pem"
    bundle.write_bytes(ca.root_pem)
    hub = Hub(
        MeshConfig(trust_domain=TD, monitoring_address="127.0.0.1:0"),
        [WorkloadRegistration(bundle)],
    )
    await hub.start()
    yield hub
    await hub.stop()


def _svid(ca: CertificateAuthority, ns: str, sa: str):  # type: ignore[no-untyped-def]
    key = generate_key()
    issued = ca.sign(identity.load_csr(make_csr(key)), f"spiffe://{TD}/ns/{ns}/sa/{sa}")
    return key, issued.chain_pem


def _vm(sa: str = "cart") -> Workload:
    return Workload("vm-1", "shop", "127.0.0.9", {"http": 8080}, {"app": "cart"}, sa)


async def test_register_and_deregister_a_vm(hub: Hub, ca: CertificateAuthority) -> None:
    url = f"http://127.0.0.1:{hub.monitoring_port}"
    key, chain = _svid(ca, "shop", "cart")
    host = "cart.shop.svc.cluster.local"
    body = registration.registration_body(
        _vm(), [host], [{"hostname": host, "ports": [{"name": "http", "number": 80}]}]
    )
    await registration.register(url, body, key, chain)
    (endpoint,) = hub.aggregate.endpoints(host)
    assert endpoint.address == "127.0.0.9"
    assert endpoint.identity == f"spiffe://{TD}/ns/shop/sa/cart"
    assert endpoint.registry == "workloads"
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/debug/registryz", params={"host": host}) as resp,
    ):
        view = await resp.json()
    assert view["services"][0]["endpoints"][0]["address"] == "127.0.0.9"

    await registration.deregister(url, "shop", "vm-1", key, chain)
    assert hub.aggregate.endpoints(host) == ()
    assert hub.aggregate.service(host) is None


async def test_cannot_register_as_another_service_account(
    hub: Hub, ca: CertificateAuthority
) -> None:
    url = f"http://127.0.0.1:{hub.monitoring_port}"
    key, chain = _svid(ca, "shop", "cart")
    body = registration.registration_body(_vm("payments"), ["payments.shop"])
    with pytest.raises(registration.RegistrationRefused, match="403"):
        await registration.register(url, body, key, chain)
    assert hub.aggregate.endpoints("payments.shop") == ()


async def test_foreign_certificate_and_bad_signature_are_refused(hub: Hub, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{hub.monitoring_port}"
    foreign = CertificateAuthority.load_or_create(FileStorage(tmp_path / "foreign"), TD)
    key, chain = _svid(foreign, "shop", "cart")
    body = registration.registration_body(_vm(), ["cart.shop"])
    with pytest.raises(registration.RegistrationRefused, match="trust bundle"):
        await registration.register(url, body, key, chain)


def test_verify_request_checks_signature_and_time(ca: CertificateAuthority) -> None:
    key, chain = _svid(ca, "shop", "cart")
    roots = identity.load_pem_chain(ca.root_pem)
    headers = registration.sign_headers("POST", "/v1/workloads", b"{}", key, chain)
    assert (
        registration.verify_request("POST", "/v1/workloads", headers, b"{}", roots)
        == f"spiffe://{TD}/ns/shop/sa/cart"
    )
    with pytest.raises(registration.RegistrationRefused, match="signature"):
        registration.verify_request("POST", "/v1/workloads", headers, b'{"x":1}', roots)
    with pytest.raises(registration.RegistrationRefused, match="timestamp"):
        registration.verify_request(
            "POST",
            "/v1/workloads",
            headers,
            b"{}",
            roots,
            now=float(headers["x-meshfed-timestamp"]) + 600,
        )
