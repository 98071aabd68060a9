"""X.509-SVID shape, checked against the SPIFFE X509-SVID specification's requirements."""

from __future__ import annotations

import base64
import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshfed.nodeagent.keys import generate_key, make_csr
from meshfed.security import identity
from meshfed.security.ca import CertificateAuthority

ID = "spiffe://example.org/ns/shop/sa/cart"


def _sign(ca: CertificateAuthority, key_kind: str = "ec-p256", **kw: object) -> x509.Certificate:
    csr = identity.load_csr(make_csr(generate_key(key_kind)))
    return ca.sign(csr, ID, **kw).certificate  # type: ignore[arg-type]


def test_leaf_svid_has_exactly_the_spiffe_shape(ca: CertificateAuthority) -> None:
    cert = _sign(ca, ttl=dt.timedelta(minutes=5))
    assert identity.uri_sans(cert) == [ID]
    assert identity.spiffe_id_of(cert) == ID
    assert identity.svid_problems(cert) == []
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature
    assert not ku.value.key_cert_sign and not ku.value.crl_sign
    assert not ku.value.key_encipherment  # an EC key: no key encipherment
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    # Empty subject, therefore a critical SAN (RFC 5280 4.2.1.6).
    assert len(cert.subject) == 0
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    assert cert.not_valid_after_utc - dt.datetime.now(dt.UTC) <= dt.timedelta(minutes=5)
    cert.verify_directly_issued_by(ca.signer_cert)


def test_rsa_leaf_gets_key_encipherment(ca: CertificateAuthority) -> None:
    cert = _sign(ca, "rsa-2048")
    assert isinstance(cert.public_key(), rsa.RSAPublicKey)
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment


def test_signing_certificate_is_a_ca_with_a_pathless_spiffe_id(ca: CertificateAuthority) -> None:
    root = ca.signer_cert
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    ku = root.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert identity.uri_sans(root) == ["spiffe://example.org"]


def test_lifetime_is_configurable_and_capped(ca: CertificateAuthority) -> None:
    now = dt.datetime.now(dt.UTC)
    short = _sign(ca, ttl=dt.timedelta(seconds=20), now=now)
    assert short.not_valid_after_utc == (now + dt.timedelta(seconds=20)).replace(microsecond=0)
    long = _sign(ca, ttl=dt.timedelta(days=365), now=now)
    assert long.not_valid_after_utc - now <= ca.max_ttl


def test_csr_with_a_bad_signature_or_weak_key_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    good = make_csr(key)
    # Flip a byte in the signature (the DER's tail) and re-armour.
    der = x509.load_pem_x509_csr(good).public_bytes(Encoding.DER)
    tampered = der[:-1] + bytes([der[-1] ^ 0x01])  # the last byte of the ECDSA signature
    pem = b"-----BEGIN CERTIFICATE REQUEST-----\n"
    pem += base64.encodebytes(tampered) + b"-----END CERTIFICATE REQUEST-----\n"
    with pytest.raises(identity.InvalidCSR, match="signature"):
        identity.load_csr(pem)
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(weak, hashes.SHA256())
    )
    with pytest.raises(identity.InvalidCSR, match="2048"):
        identity.load_csr(csr.public_bytes(Encoding.PEM))
    with pytest.raises(identity.InvalidCSR):
        identity.load_csr(b"not a csr")


def test_ids_outside_the_trust_domain_or_not_workload_shaped_are_refused(
    ca: CertificateAuthority,
) -> None:
    csr = identity.load_csr(make_csr(generate_key()))
    with pytest.raises(ValueError, match="trust domain"):
        ca.sign(csr, "spiffe://other.org/ns/a/sa/b")
    with pytest.raises(ValueError):
        ca.sign(csr, "spiffe://example.org/just/a/path/too/long")
