"""Signed workload registration with a real hub (aiohttp on loopback): only as oneself."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from meshfed.adapters.workloads.server import WorkloadRegistration
from meshfed.config import MeshConfig
from meshfed.hub import Hub
from meshfed.nodeagent import registration
from meshfed.nodeagent.keys import generate_key, make_csr
from meshfed.registry.model import Workload
from meshfed.security import identity
from meshfed.security.ca import CertificateAuthority
from meshfed.security.storage import FileStorage

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
    assert endpoint.workload == "vm-1"
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


CART = [{"hostname": "cart.shop", "ports": [{"name": "http", "number": 80}]}]


async def _hub_with(
    ca: CertificateAuthority, tmp_path: Path, state: Path | None
) -> tuple[Hub, WorkloadRegistration]:
    bundle = tmp_path / "root.pem"
    bundle.write_bytes(ca.root_pem)
    component = WorkloadRegistration(bundle, state_file=state)
    hub = Hub(MeshConfig(trust_domain=TD, monitoring_address="127.0.0.1:0"), [component])
    await hub.start()
    return hub, component


async def test_a_registration_not_renewed_expires_like_a_eureka_lease(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    """A VM that vanishes without deregistering leaves after its lease (3 intervals)."""
    hub, component = await _hub_with(ca, tmp_path, None)
    try:
        url = f"http://127.0.0.1:{hub.monitoring_port}"
        key, chain = _svid(ca, "shop", "cart")
        body = registration.registration_body(_vm(), ["cart.shop"], CART, renewal_interval=10)
        before = time.time()
        await registration.register(url, body, key, chain)
        assert len(hub.aggregate.endpoints("cart.shop")) == 1
        lease_end = component.expires[("shop", "vm-1")]
        assert 30 <= lease_end - before <= 31  # 3 x 10 s
        assert component.expire(lease_end - 1) == []  # still leased
        await registration.register(url, body, key, chain)  # a renewal moves the lease on
        assert component.expires[("shop", "vm-1")] > lease_end - 1
        assert component.expire(component.expires[("shop", "vm-1")]) == [("shop", "vm-1")]
        assert hub.aggregate.endpoints("cart.shop") == () and component.expired == 1
    finally:
        await hub.stop()


async def test_registrations_survive_a_hub_restart_with_a_state_file(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    state = tmp_path / "hub" / "workloads.json"
    hub, _ = await _hub_with(ca, tmp_path, state)
    url = f"http://127.0.0.1:{hub.monitoring_port}"
    key, chain = _svid(ca, "shop", "cart")
    await registration.register(
        url, registration.registration_body(_vm(), ["cart.shop"], CART), key, chain
    )
    await hub.stop()
    assert oct(state.stat().st_mode & 0o777) == "0o600"
    # The restarted hub serves the VM before its agent renews.
    hub, component = await _hub_with(ca, tmp_path, state)
    try:
        (endpoint,) = hub.aggregate.endpoints("cart.shop")
        assert endpoint.address == "127.0.0.9" and endpoint.identity.endswith("/sa/cart")
        # A lease that ran out while the hub was down is not restored.
        component.expires[("shop", "vm-1")] = time.time() - 1
        component._save_state()
    finally:
        await hub.stop()
    hub, _ = await _hub_with(ca, tmp_path, state)
    try:
        assert hub.aggregate.endpoints("cart.shop") == ()
    finally:
        await hub.stop()
    # An unreadable file is reported and ignored: the hub starts, empty.
    state.write_text("{not json")
    hub, component = await _hub_with(ca, tmp_path, state)
    try:
        assert component.registrations == {}
    finally:
        await hub.stop()


def test_the_agent_states_its_renewal_interval() -> None:
    body = registration.registration_body(_vm(), ["cart.shop"], renewal_interval=12.5)
    assert registration.parse_registration(body).renewal_interval == 12.5
    del body["renewalIntervalSeconds"]  # an older agent: the default interval
    assert registration.parse_registration(body).renewal_interval == 30.0
    with pytest.raises(ValueError, match="renewalIntervalSeconds"):
        registration.parse_registration({**body, "renewalIntervalSeconds": -1})
