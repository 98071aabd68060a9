"""Reading X.509-SVIDs: the few certificate helpers that verifying callers needs.

Why in the bottom layer: the CA (``security``) issues SVIDs, but verifying that a caller holds
one (the hub's workload registration, ``adapters.workloads``) sits below ``security`` in the
layering. Both read certificates the same way, from here.
"""

from __future__ import annotations

from cryptography import x509

from meshfed.registry.model import SPIFFE_PREFIX


def uri_sans(cert: x509.Certificate) -> list[str]:
    """The certificate's URI SANs (an SVID has exactly one: its SPIFFE ID)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def spiffe_id_of(cert: x509.Certificate) -> str:
    """The SPIFFE ID of a leaf SVID; ValueError when it does not carry exactly one."""
    uris = [u for u in uri_sans(cert) if u.startswith(SPIFFE_PREFIX)]
    if len(uris) != 1 or len(uri_sans(cert)) != 1:
        raise ValueError(f"expected exactly one SPIFFE URI SAN, found {uri_sans(cert)}")
    return uris[0]


def load_pem_chain(data: bytes | str) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle, in file order."""
    raw = data.encode() if isinstance(data, str) else data
    return x509.load_pem_x509_certificates(raw)
