"""``ip_addresses`` of a Sign request: IPs normalised, anything else one clean refusal."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from meshfed.security.sign_request import MAX_IP_ADDRESSES, BadRequest, parse_sign_request

CSR = (
    x509.CertificateSigningRequestBuilder()
    .subject_name(x509.Name([]))
    .sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    .public_bytes(serialization.Encoding.PEM)
    .decode()
)


def _parse(ips: Any) -> tuple[str, ...]:
    return parse_sign_request(json.dumps({"csr": CSR, "ip_addresses": ips}).encode()).ip_addresses


def test_ips_are_normalised_and_deduplicated() -> None:
    assert _parse(["127.0.0.9", "0:0::1", "127.0.0.9"]) == ("127.0.0.9", "::1")
    assert _parse(None) == () and _parse([]) == ()


@pytest.mark.parametrize(
    "value", ["127.0.0.9", {"ip": "1.2.3.4"}, ["x.y"], [1], ["10.0.0.0/8"], ["1.1.1.1"] * 9]
)
def test_anything_but_a_short_list_of_ips_is_refused(value: Any) -> None:
    with pytest.raises(BadRequest) as refused:
        _parse(value)
    assert refused.value.reason == "bad-ip-addresses"
    assert "ip_addresses" in str(refused.value) and len(str(refused.value)) < 300


@given(st.lists(st.one_of(st.text(max_size=40), st.integers(), st.none()), max_size=12))
def test_hostile_entries_are_refused_or_valid_ips(value: list[Any]) -> None:
    try:
        got = _parse(value)
    except BadRequest as exc:
        assert exc.reason == "bad-ip-addresses"
    else:
        assert len(got) <= MAX_IP_ADDRESSES
