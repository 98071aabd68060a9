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
- Root rotation (self-signed mode): ``start_root_rotation`` stores a new root and a schedule;
  from then on what signs and what is trusted follows the phase the clock says
  (:mod:`security.rotation`), in every replica alike. ``reload()`` picks a rotation up in a
  running CA.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
from collections.abc import Sequence

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshfed.security import identity
from meshfed.security.identity import SigningKey
from meshfed.security.rotation import Phase, Schedule
from meshfed.security.storage import (
    AlreadyStored,
    CAMaterial,
    CAStorage,
    FileStorage,
    RotationRecord,
    StorageError,
)

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


@attrs.frozen(slots=True, eq=False)
class SigningState:
    """What the CA signs with and what it hands out as the trust bundle, at one moment."""

    signer_key: SigningKey = attrs.field(repr=False)
    chain: tuple[x509.Certificate, ...]  # the signing certificate first, up to (not incl.) roots
    roots: tuple[x509.Certificate, ...]  # the trust bundle
    issuers: tuple[x509.Certificate, ...]  # signing certificates whose leaves may renew
    chain_pem: bytes
    root_pem: bytes

    @classmethod
    def of(
        cls,
        key: SigningKey,
        chain: Sequence[x509.Certificate],
        roots: Sequence[x509.Certificate],
        issuers: Sequence[x509.Certificate] = (),
    ) -> SigningState:
        unique_roots = tuple(dict.fromkeys(roots))  # order kept, duplicates dropped
        return cls(
            key,
            tuple(chain),
            unique_roots,
            tuple(issuers) or (chain[0],),
            identity.chain_pem(chain),
            identity.chain_pem(unique_roots),
        )

    @property
    def signer_cert(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def fingerprint(self) -> tuple[int, bytes]:
        """Changes exactly when the signer or the bundle changes."""
        return (self.signer_cert.serial_number, self.root_pem)


@attrs.frozen(slots=True, eq=False)
class _Rotation:
    """A loaded rotation record: its schedule and the signing state of each phase."""

    record: RotationRecord
    schedule: Schedule
    old_root: x509.Certificate
    new_root: x509.Certificate
    states: dict[Phase, SigningState]


class CertificateAuthority:
    """Signs X.509-SVIDs with one signing key (two roots overlap while a root rotates).

    The signing material is a :class:`SigningState`; with a rotation record it depends on the
    clock (:mod:`security.rotation`), so every attribute below is read *now*. ``reload()``
    re-reads the storage (a rotation started by the operator while the CA runs) and keeps the
    current material when the stored one cannot be read.
    """

    def __init__(
        self,
        trust_domain: str,
        signer_key: SigningKey,
        chain: Sequence[x509.Certificate],
        roots: Sequence[x509.Certificate],
        default_ttl: dt.timedelta = identity.DEFAULT_LEAF_TTL,
        max_ttl: dt.timedelta = identity.MAX_LEAF_TTL,
        *,
        rotation: RotationRecord | None = None,
        storage: CAStorage | None = None,
    ) -> None:
        if not chain or not roots:
            raise CAConfigError("expected a signing certificate and at least one root")
        self.trust_domain = trust_domain
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self.storage = storage
        base = SigningState.of(signer_key, chain, roots)
        self._check(base)
        # One attribute, replaced whole, so a reader never mixes two loads.
        self._loaded: tuple[SigningState, _Rotation | None] = (base, self._rotation(base, rotation))

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
    def from_storage(
        cls,
        storage: CAStorage,
        material: CAMaterial,
        trust_domain: str,
        now: dt.datetime | None = None,
        **kwargs: object,
    ) -> CertificateAuthority:
        """The CA for stored material plus the stored rotation record, if any."""
        record = storage.load_rotation()
        if record is not None:
            # The stored root file doubles as the published bundle (``root-cert.pem`` in the
            # state folder), which during a rotation holds both roots or only the new one;
            # the old root the material belongs to is in the record.
            material = attrs.evolve(material, root_pem=record.old_cert_pem)
        try:
            return cls.from_material(
                material, trust_domain, rotation=record, storage=storage, **kwargs
            )
        except CAConfigError:
            if record is None:
                raise
            # The material is being replaced by the rotation's new root (complete_rotation
            # writes file by file). That happens only once the rotation is retired, when the
            # new root alone is needed, and the record still holds it.
            if (
                Schedule(record.started_at, record.add, record.switch).phase(now or _utcnow())
                is not Phase.RETIRED
            ):
                raise
            new = CAMaterial(
                record.new_key_pem, record.new_cert_pem, record.new_cert_pem, record.new_cert_pem
            )
            return cls.from_material(new, trust_domain, storage=storage, **kwargs)

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
        return cls.from_storage(storage, material, trust_domain, **kwargs)

    @classmethod
    def from_cacerts(cls, folder: str, trust_domain: str, **kwargs: object) -> CertificateAuthority:
        """Bring your own CA: the operator's ``cacerts`` folder (never written to)."""
        material = FileStorage(folder, read_only=True).load()
        if material is None:
            raise CAConfigError(f"{folder}: no CA material (expected the cacerts layout)")
        return cls.from_material(material, trust_domain, **kwargs)

    def _check(self, state: SigningState) -> None:
        signer = state.signer_cert
        if _public_bytes(signer.public_key()) != _public_bytes(state.signer_key.public_key()):
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
        links = [*state.chain]
        for child, parent in itertools.pairwise(links):
            _verify_issued(child, parent, "chain")
        top = links[-1]
        if not any(_issued_by(top, root) for root in state.roots):
            raise CAConfigError("the signing chain does not lead to any certificate in the roots")

    def _rotation(self, base: SigningState, record: RotationRecord | None) -> _Rotation | None:
        """The signing state of each phase of ``record`` (None without a record)."""
        if record is None:
            return None
        try:
            old = x509.load_pem_x509_certificate(record.old_cert_pem)
            new = x509.load_pem_x509_certificate(record.new_cert_pem)
            new_key = serialization.load_pem_private_key(record.new_key_pem, password=None)
            schedule = Schedule(record.started_at, record.add, record.switch)
        except ValueError as exc:
            raise CAConfigError(f"unreadable rotation record: {exc}") from None
        if base.signer_cert != old:
            raise CAConfigError(
                "the rotation record's old root is not the stored signing certificate"
            )
        switch = SigningState.of(new_key, [new], [old, new], [old, new])  # type: ignore[arg-type]
        self._check(switch)
        if not _issued_by(new, new):
            raise CAConfigError("the rotation's new root is not self-signed")
        states = {
            Phase.ADD: SigningState.of(base.signer_key, base.chain, [old, new], [old]),
            Phase.SWITCH: switch,
            Phase.RETIRED: SigningState.of(new_key, [new], [new]),  # type: ignore[arg-type]
        }
        return _Rotation(record, schedule, old, new, states)

    # -- the current material ----------------------------------------------------------------
    def state(self, now: dt.datetime | None = None) -> SigningState:
        """What signs and what is trusted at ``now`` (default: the clock)."""
        base, rotation = self._loaded
        if rotation is None:
            return base
        return rotation.states[rotation.schedule.phase(now or _utcnow())]

    def phase(self, now: dt.datetime | None = None) -> Phase | None:
        """The rotation's phase at ``now``; None when no rotation is stored."""
        rotation = self._loaded[1]
        return None if rotation is None else rotation.schedule.phase(now or _utcnow())

    @property
    def rotation_schedule(self) -> Schedule | None:
        rotation = self._loaded[1]
        return None if rotation is None else rotation.schedule

    @property
    def signer_cert(self) -> x509.Certificate:
        return self.state().signer_cert

    @property
    def signer_key(self) -> SigningKey:
        return self.state().signer_key

    @property
    def chain(self) -> list[x509.Certificate]:
        return list(self.state().chain)

    @property
    def roots(self) -> list[x509.Certificate]:
        return list(self.state().roots)

    @property
    def root_pem(self) -> bytes:
        return self.state().root_pem

    @property
    def chain_pem(self) -> bytes:
        return self.state().chain_pem

    def reload(self) -> bool:
        """Re-read the storage (blocking); True when the stored rotation record changed.

        A storage that cannot be read, or material that does not check out, leaves the
        current material in force (logged): bad input never replaces good state.
        """
        if self.storage is None:
            return False
        try:
            material = self.storage.load()
            if material is None:
                raise StorageError("no CA material stored any more")
            fresh = type(self).from_storage(
                self.storage,
                material,
                self.trust_domain,
                default_ttl=self.default_ttl,
                max_ttl=self.max_ttl,
            )
        except Exception as exc:  # storage outage, half-written files: keep what works
            log.warning(
                "could not re-read the CA material from %s: %s", self.storage.describe(), exc
            )
            return False
        before = self._loaded[1]
        self._loaded = fresh._loaded
        after = self._loaded[1]
        changed = (before.record if before else None) != (after.record if after else None)
        if changed and after is not None:
            log.info(
                "root rotation: started %s, switch at %s, retire at %s (now %s)",
                after.schedule.started_at.isoformat(),
                after.schedule.switch_at.isoformat(),
                after.schedule.retire_at.isoformat(),
                after.schedule.phase(_utcnow()),
            )
        return changed

    def status(self, now: dt.datetime | None = None) -> dict[str, object]:
        """The phase, signer and trust bundle, for ``meshfed ca status`` and ``/debug/ca``."""
        now = now or _utcnow()
        state = self.state(now)
        rotation = self._loaded[1]
        out: dict[str, object] = {
            "trust_domain": self.trust_domain,
            "phase": rotation.schedule.phase(now).value if rotation else "none",
            "signer": describe_certificate(state.signer_cert),
            "roots": [describe_certificate(c) for c in state.roots],
            "max_ttl_seconds": self.max_ttl.total_seconds(),
        }
        if rotation is not None:
            sched = rotation.schedule
            out["rotation"] = {
                "started_at": sched.started_at.isoformat(),
                "switch_at": sched.switch_at.isoformat(),
                "retire_at": sched.retire_at.isoformat(),
                "add_seconds": sched.add.total_seconds(),
                "switch_seconds": sched.switch.total_seconds(),
                "old_root": describe_certificate(rotation.old_root),
                "new_root": describe_certificate(rotation.new_root),
            }
        return out

    # -- issuing ---------------------------------------------------------------------------
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
        now = now or _utcnow()
        state = self.state(now)  # one snapshot: signer, chain and bundle belong together
        cert = identity.issue_svid(
            csr,
            spiffe_id,
            state.signer_cert,
            state.signer_key,
            self.clamp_ttl(ttl),
            now,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
        )
        leaf = cert.public_bytes(serialization.Encoding.PEM)
        return Issued(cert, leaf + state.chain_pem, state.root_pem)

    def verify_issued(
        self, chain: Sequence[x509.Certificate], now: dt.datetime | None = None
    ) -> str:
        """Check that ``chain`` (leaf first) is a currently valid SVID this CA issued.

        Returns its SPIFFE ID; raises ValueError saying what is wrong otherwise. Used for
        renewal, where the transport already verified the chain: this is the second, explicit
        check that also gives the refusal a reason to log. During a root rotation's switch
        phase a leaf from either root may renew; after retirement only the new root's.
        """
        if not chain:
            raise ValueError("no client certificate")
        leaf = chain[0]
        now = now or _utcnow()
        if leaf.not_valid_after_utc <= now:
            raise ValueError(f"the client certificate expired at {leaf.not_valid_after_utc}")
        if leaf.not_valid_before_utc > now:
            raise ValueError("the client certificate is not valid yet")
        if not any(_issued_by(leaf, issuer) for issuer in self.state(now).issuers):
            raise ValueError("the client certificate was not issued by this CA")
        problems = identity.svid_problems(leaf)
        if problems:
            raise ValueError(f"the client certificate is not an SVID: {'; '.join(problems)}")
        return identity.spiffe_id_of(leaf)


def describe_certificate(cert: x509.Certificate) -> dict[str, str]:
    return {
        "subject": cert.subject.rfc4514_string(),
        "serial": f"{cert.serial_number:x}",
        "sha256": cert.fingerprint(hashes.SHA256()).hex(),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }


class RotationInProgress(CAConfigError):
    """A root rotation is stored and not retired yet."""


def start_root_rotation(
    storage: CAStorage,
    trust_domain: str,
    add: dt.timedelta,
    switch: dt.timedelta,
    now: dt.datetime | None = None,
    root_ttl: dt.timedelta = DEFAULT_ROOT_TTL,
) -> RotationRecord:
    """Create a new self-signed root and store a rotation to it starting ``now``.

    A previous rotation that is retired is folded into the stored material first; one that is
    still running is refused (:class:`RotationInProgress`). Only a self-signed root can be
    rotated here: a bring-your-own signer is the operator's to replace.
    """
    now = now or _utcnow()
    material = storage.load()
    if material is None:
        raise CAConfigError(f"no CA root in {storage.describe()} yet: start `meshfed ca serve`")
    record = storage.load_rotation()
    if record is not None:
        schedule = Schedule(record.started_at, record.add, record.switch)
        phase = schedule.phase(now)
        if phase is not Phase.RETIRED:
            raise RotationInProgress(
                f"a root rotation is in progress in {storage.describe()} (phase {phase}, "
                f"switch at {schedule.switch_at.isoformat()}, retire at "
                f"{schedule.retire_at.isoformat()})"
            )
        complete_root_rotation(storage, trust_domain, now)
        material = storage.load()
        assert material is not None
    current = CertificateAuthority.from_material(material, trust_domain)
    signer = current.signer_cert
    if len(current.chain) != 1 or not _issued_by(signer, signer):
        raise CAConfigError(
            "the stored signing certificate is not a self-signed root (an intermediate of "
            "bring-your-own material): rotate it by handing the CA new cacerts"
        )
    new = new_self_signed_material(trust_domain, root_ttl, now)
    record = RotationRecord(
        started_at=now,
        add=add,
        switch=switch,
        old_cert_pem=signer.public_bytes(serialization.Encoding.PEM),
        new_cert_pem=new.cert_pem,
        new_key_pem=new.key_pem,
    )
    Schedule(now, add, switch)  # validates the durations before anything is stored
    storage.start_rotation(record)
    log.info("root rotation stored in %s: switch at %s", storage.describe(), now + add)
    return record


def complete_root_rotation(
    storage: CAStorage, trust_domain: str, now: dt.datetime | None = None
) -> bool:
    """Fold a retired rotation into the stored material (the new root alone); True if done."""
    record = storage.load_rotation()
    if record is None:
        return False
    if (
        Schedule(record.started_at, record.add, record.switch).phase(now or _utcnow())
        is not Phase.RETIRED
    ):
        return False
    material = CAMaterial(
        key_pem=record.new_key_pem,
        cert_pem=record.new_cert_pem,
        root_pem=record.new_cert_pem,
        chain_pem=record.new_cert_pem,
    )
    CertificateAuthority.from_material(material, trust_domain)  # checks before writing
    storage.complete_rotation(material)
    log.info("folded the retired root rotation into %s", storage.describe())
    return True


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
