"""The certificate authority: one signing key, the chain up to a root, and SVID issuance.

Why: every sidecar needs an X.509-SVID that its peers can verify against one trust bundle. This
module owns the signing material and nothing else: who may ask for which identity is decided by
the signing service (:mod:`security.service`), and what a certificate looks like by
:mod:`security.identity`.

Promises:
- Self-signed mode: the root (ECDSA P-256 by default) is created *once* and saved to a
  :class:`~security.storage.CAStorage`; every later start loads it, so the root never changes
  and certificates issued before a restart keep verifying.
- Bring-your-own mode (Istio's ``cacerts`` layout): the operator's signing certificate and key
  sign, and issued certificates chain through ``cert-chain.pem`` to ``root-cert.pem``. The
  material is checked at load time (key matches certificate, signer is a CA, chain verifies to
  the root) so a wrong folder fails at start, not at the first handshake.
- Issued chains are ``leaf + signing chain``; the root is returned separately as the trust bundle.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
from collections.abc import Sequence

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from security import identity
from security.identity import SigningKey
from security.storage import AlreadyStored, CAMaterial, CAStorage, FileStorage

log = logging.getLogger("meshfed.security.ca")

DEFAULT_ROOT_TTL = dt.timedelta(days=3650)


class CAConfigError(ValueError):
    """The CA's signing material is inconsistent (wrong key, not a CA, broken chain)."""


@attrs.frozen(slots=True)
class Issued:
    """A freshly signed SVID with what a workload needs beside it."""

    certificate: x509.Certificate
    chain_pem: bytes  # leaf first, then the signing chain (what a TLS peer presents)
    root_pem: bytes  # the trust bundle

    @property
    def spiffe_id(self) -> str:
        return identity.spiffe_id_of(self.certificate)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _public_bytes(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class CertificateAuthority:
    """Signs X.509-SVIDs with one signing key."""

    def __init__(
        self,
        trust_domain: str,
        signer_key: SigningKey,
        chain: Sequence[x509.Certificate],
        roots: Sequence[x509.Certificate],
        default_ttl: dt.timedelta = identity.DEFAULT_LEAF_TTL,
        max_ttl: dt.timedelta = identity.MAX_LEAF_TTL,
    ) -> None:
        if not chain or not roots:
            raise CAConfigError("expected a signing certificate and at least one root")
        self.trust_domain = trust_domain
        self.signer_key = signer_key
        self.signer_cert = chain[0]
        self.chain = list(chain)
        self.roots = list(roots)
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self._chain_pem = identity.chain_pem(self.chain)
        self._root_pem = identity.chain_pem(self.roots)
        self._check()

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_material(
        cls, material: CAMaterial, trust_domain: str, **kwargs: object
    ) -> CertificateAuthority:
        key = serialization.load_pem_private_key(material.key_pem, password=None)
        signer = x509.load_pem_x509_certificate(material.cert_pem)
        chain = identity.load_pem_chain(material.chain_pem)
        if not chain or _public_bytes(chain[0].public_key()) != _public_bytes(signer.public_key()):
            chain = [signer, *chain]  # tolerate a cert-chain.pem that starts above the signer
        roots = identity.load_pem_chain(material.root_pem)
        # Self-signed roots appear as the last chain element too; a peer needs it only once.
        chain = [c for c in chain if not (c in roots and c is not chain[0])]
        return cls(trust_domain, key, chain, roots, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def load_or_create(
        cls,
        storage: CAStorage,
        trust_domain: str,
        root_ttl: dt.timedelta = DEFAULT_ROOT_TTL,
        **kwargs: object,
    ) -> CertificateAuthority:
        """Load the stored root; create, store and use a new self-signed one when there is none."""
        material = storage.load()
        if material is None:
            material = new_self_signed_material(trust_domain, root_ttl)
            try:
                storage.save(material)
                log.info(
                    "created a self-signed root for %s in %s", trust_domain, storage.describe()
                )
            except AlreadyStored:
                log.info("another CA stored a root first in %s; using it", storage.describe())
                material = storage.load()
                assert material is not None
        else:
            log.info("loaded the CA root from %s", storage.describe())
        return cls.from_material(material, trust_domain, **kwargs)

    @classmethod
    def from_cacerts(cls, folder: str, trust_domain: str, **kwargs: object) -> CertificateAuthority:
        """Bring your own CA: the operator's ``cacerts`` folder (never written to)."""
        material = FileStorage(folder, read_only=True).load()
        if material is None:
            raise CAConfigError(f"{folder}: no CA material (expected the cacerts layout)")
        return cls.from_material(material, trust_domain, **kwargs)

    def _check(self) -> None:
        signer = self.signer_cert
        if _public_bytes(signer.public_key()) != _public_bytes(self.signer_key.public_key()):
            raise CAConfigError("the signing key does not belong to the signing certificate")
        try:
            bc = signer.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise CAConfigError("the signing certificate is not a CA certificate (cA=false)")
        for uri in identity.uri_sans(signer):
            if uri.startswith("spiffe://") and uri != identity.trust_domain_id(self.trust_domain):
                raise CAConfigError(
                    f"the signing certificate is for {uri}, but the trust domain is "
                    f"{self.trust_domain!r}"
                )
        # Every link must be issued by the next one, and the top by one of the roots.
        links = [*self.chain]
        for child, parent in itertools.pairwise(links):
            _verify_issued(child, parent, "chain")
        top = links[-1]
        if not any(_issued_by(top, root) for root in self.roots):
            raise CAConfigError("the signing chain does not lead to any certificate in the roots")

    # -- issuing ---------------------------------------------------------------------------
    @property
    def root_pem(self) -> bytes:
        return self._root_pem

    @property
    def chain_pem(self) -> bytes:
        return self._chain_pem

    def clamp_ttl(self, ttl: dt.timedelta | None) -> dt.timedelta:
        """The lifetime to issue for a requested one: default when unset, at most ``max_ttl``."""
        if ttl is None or ttl <= dt.timedelta(0):
            return self.default_ttl
        return min(ttl, self.max_ttl)

    def sign(
        self,
        csr: x509.CertificateSigningRequest,
        spiffe_id: str,
        ttl: dt.timedelta | None = None,
        now: dt.datetime | None = None,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
    ) -> Issued:
        """Issue an SVID for ``spiffe_id`` over the CSR's key (authorisation is the caller's)."""
        domain = spiffe_id.removeprefix("spiffe://").split("/", 1)[0]
        if domain != self.trust_domain:
            raise ValueError(f"{spiffe_id} is not in trust domain {self.trust_domain!r}")
        cert = identity.issue_svid(
            csr,
            spiffe_id,
            self.signer_cert,
            self.signer_key,
            self.clamp_ttl(ttl),
            now or _utcnow(),
            dns_names=dns_names,
            ip_addresses=ip_addresses,
        )
        leaf = cert.public_bytes(serialization.Encoding.PEM)
        return Issued(cert, leaf + self._chain_pem, self._root_pem)

    def verify_issued(
        self, chain: Sequence[x509.Certificate], now: dt.datetime | None = None
    ) -> str:
        """Check that ``chain`` (leaf first) is a currently valid SVID this CA issued.

        Returns its SPIFFE ID; raises ValueError saying what is wrong otherwise. Used for
        renewal, where the transport already verified the chain: this is the second, explicit
        check that also gives the refusal a reason to log.
        """
        if not chain:
            raise ValueError("no client certificate")
        leaf = chain[0]
        now = now or _utcnow()
        if leaf.not_valid_after_utc <= now:
            raise ValueError(f"the client certificate expired at {leaf.not_valid_after_utc}")
        if leaf.not_valid_before_utc > now:
            raise ValueError("the client certificate is not valid yet")
        if not _issued_by(leaf, self.signer_cert):
            raise ValueError("the client certificate was not issued by this CA")
        problems = identity.svid_problems(leaf)
        if problems:
            raise ValueError(f"the client certificate is not an SVID: {'; '.join(problems)}")
        return identity.spiffe_id_of(leaf)


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _verify_issued(child: x509.Certificate, parent: x509.Certificate, what: str) -> None:
    if not _issued_by(child, parent):
        raise CAConfigError(
            f"{what}: {child.subject.rfc4514_string()!r} is not issued by "
            f"{parent.subject.rfc4514_string()!r}"
        )


def new_self_signed_material(
    trust_domain: str, ttl: dt.timedelta = DEFAULT_ROOT_TTL, now: dt.datetime | None = None
) -> CAMaterial:
    """A new ECDSA P-256 root key and its self-signed certificate, PEM-encoded."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = identity.self_signed_root(key, trust_domain, ttl, now or _utcnow())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return CAMaterial(key_pem=key_pem, cert_pem=cert_pem, root_pem=cert_pem, chain_pem=cert_pem)
