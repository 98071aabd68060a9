"""SPIFFE X.509-SVIDs: what a workload certificate and a signing certificate look like.

Why this module exists: every certificate meshfed issues must be an X.509-SVID as the SPIFFE
X509-SVID specification defines it, because Envoy's SAN matchers (and any other SPIFFE-aware
peer) rely on exactly that shape. Keeping the shape in one pure module (no I/O, no clock of its
own: callers pass ``now``) makes it easy to test against the specification.

Promises:
- A leaf SVID has exactly one URI SAN, the workload's SPIFFE ID; ``cA=false``; key usage is
  critical and holds ``digitalSignature`` (plus ``keyEncipherment`` only for an RSA key, never
  ``keyCertSign``/``cRLSign``); extended key usage is serverAuth + clientAuth; the subject is
  empty, so the SAN extension is marked critical (RFC 5280 4.2.1.6).
- A signing certificate has ``cA=true``, key usage critical ``keyCertSign`` + ``cRLSign``, and
  a SPIFFE ID with no path (``spiffe://<trust-domain>``).
- The leaf's public key is taken from a CSR whose signature was verified; the CSR's own subject
  and extensions are ignored (the CA, not the requester, decides what goes into a certificate).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshfed.core.svid import load_pem_chain, spiffe_id_of, uri_sans
from meshfed.registry.model import SPIFFE_PREFIX, parse_spiffe_id

# Accept small clock differences between the CA and its peers: a certificate is valid a little
# before it was issued. The lifetime (notAfter) is still counted from the moment of issuance.
CLOCK_SKEW = dt.timedelta(seconds=60)
DEFAULT_LEAF_TTL = dt.timedelta(hours=1)
MAX_LEAF_TTL = dt.timedelta(days=7)

SigningKey = (
    ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)


_ACCEPTED_KEYS = (
    rsa.RSAPublicKey,
    ec.EllipticCurvePublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
)


class InvalidCSR(ValueError):
    """The CSR cannot be parsed, its signature does not verify, or its key is unacceptable."""


def trust_domain_id(trust_domain: str) -> str:
    """The SPIFFE ID of a trust domain itself (no path), carried by signing certificates."""
    return f"{SPIFFE_PREFIX}{trust_domain}"


def _hash_for(key: SigningKey) -> hashes.HashAlgorithm | None:
    # Ed25519/Ed448 sign the message itself; cryptography wants no hash for them.
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


def load_csr(pem: bytes | str) -> x509.CertificateSigningRequest:
    """Parse a PEM CSR and verify its self-signature (proof the requester holds the key).

    Raises :class:`InvalidCSR` with a short reason for anything else, including CSRs with key
    or signature algorithms the CA does not sign for (the parser's own text is not repeated:
    it describes ASN.1 internals, not what the caller should change).
    """
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError:
        raise InvalidCSR("not a PEM certificate signing request") from None
    try:
        key = csr.public_key()
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidCSR("the CSR's key or signature algorithm is not supported") from None
    if not isinstance(key, _ACCEPTED_KEYS):
        raise InvalidCSR("the CSR's key is not RSA, EC, Ed25519 or Ed448")
    if not valid:
        raise InvalidCSR("the CSR's signature does not verify")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise InvalidCSR(f"RSA key of {key.key_size} bits; expected at least 2048")
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size < 256:
        raise InvalidCSR(f"EC curve {key.curve.name}; expected P-256 or stronger")
    return csr


def issue_svid(
    csr: x509.CertificateSigningRequest,
    spiffe_id: str,
    signer_cert: x509.Certificate,
    signer_key: SigningKey,
    ttl: dt.timedelta,
    now: dt.datetime,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
) -> x509.Certificate:
    """Sign a workload X.509-SVID for ``spiffe_id`` over the CSR's public key.

    The certificate never outlives its signer: notAfter is capped at the signer's notAfter.
    ``dns_names``/``ip_addresses`` add other SAN types (SPIFFE allows them beside the one URI
    SAN); only the CA's own serving certificate uses them, so gRPC clients can check its name.
    """
    parse_spiffe_id(spiffe_id)  # raises ValueError for a non-workload ID
    if ttl <= dt.timedelta(0):
        raise ValueError(f"expected a positive lifetime, got {ttl}")
    public_key = csr.public_key()
    not_after = min(now + ttl, signer_cert.not_valid_after_utc)
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(signer_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - CLOCK_SKEW, signer_cert.not_valid_before_utc))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=is_rsa,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(spiffe_id),
                    *(x509.DNSName(name) for name in dns_names),
                    *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses),
                ]
            ),
            critical=True,  # the subject is empty, so the SAN must be critical (RFC 5280)
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_authority_key_id(signer_cert), critical=False)
    )
    return builder.sign(signer_key, _hash_for(signer_key))


def _authority_key_id(signer_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = signer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_cert.public_key())  # type: ignore[arg-type]


def self_signed_root(
    key: SigningKey,
    trust_domain: str,
    ttl: dt.timedelta,
    now: dt.datetime,
    organization: str = "meshfed",
) -> x509.Certificate:
    """A self-signed root signing certificate for ``trust_domain`` (cA=true, ID without path)."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, f"meshfed root CA ({trust_domain})"),
        ]
    )
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + ttl)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(trust_domain_id(trust_domain))]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, _hash_for(key))
    )


def svid_problems(cert: x509.Certificate) -> list[str]:
    """Ways in which ``cert`` is not a valid leaf X.509-SVID (empty when it is one)."""
    problems: list[str] = []
    ext = cert.extensions
    uris = uri_sans(cert)
    if len(uris) != 1:
        problems.append(f"expected exactly one URI SAN, found {len(uris)}")
    else:
        try:
            parse_spiffe_id(uris[0])
        except ValueError as exc:
            problems.append(str(exc))
    try:
        bc = ext.get_extension_for_class(x509.BasicConstraints).value
        if bc.ca:
            problems.append("leaf has cA=true")
    except x509.ExtensionNotFound:
        problems.append("no basicConstraints")
    try:
        ku_ext = ext.get_extension_for_class(x509.KeyUsage)
        ku = ku_ext.value
        if not ku_ext.critical:
            problems.append("keyUsage is not critical")
        if not ku.digital_signature:
            problems.append("keyUsage lacks digitalSignature")
        if ku.key_cert_sign or ku.crl_sign:
            problems.append("leaf may sign certificates or CRLs")
    except x509.ExtensionNotFound:
        problems.append("no keyUsage")
    return problems


def chain_pem(certs: Sequence[x509.Certificate]) -> bytes:
    """Concatenated PEM of ``certs`` in order."""
    from cryptography.hazmat.primitives.serialization import Encoding

    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


__all__ = ["chain_pem", "issue_svid", "load_pem_chain", "self_signed_root", "spiffe_id_of"]
__all__ += ["svid_problems", "trust_domain_id", "uri_sans"]
