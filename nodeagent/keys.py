"""The node agent's private key and its certificate signing request.

Why: the private key of a workload must never leave the machine it runs on. The agent generates
it locally (ECDSA P-256 by default: small, fast, and what Envoy handles best), in the
short-lived issuing process (:mod:`nodeagent.issue`), and sends the CA only a CSR, which proves
possession of the key by its signature.

Promises: nothing here touches the disk. The CSR names the requested SPIFFE ID as its one URI
SAN, although the CA decides the final contents itself.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def generate_key(kind: str = "ec-p256") -> PrivateKey:
    """A new private key: ``ec-p256`` (default) or ``rsa-2048``."""
    if kind == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key type {kind!r} (expected ec-p256 or rsa-2048)")


def make_csr(key: PrivateKey, spiffe_id: str | None = None) -> bytes:
    """A PEM CSR signed by ``key``, asking for ``spiffe_id`` when given."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if spiffe_id:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]),
            critical=True,
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def key_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM of ``key`` (for the agent, which hands it to the local Envoy)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
