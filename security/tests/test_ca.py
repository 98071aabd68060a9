"""The CA's root: created once and kept across restarts; bring-your-own chains to the operator's
root, verified by the real ``openssl verify``."""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from meshfed.nodeagent.keys import generate_key, make_csr
from meshfed.security import identity
from meshfed.security.ca import CAConfigError, CertificateAuthority
from meshfed.security.storage import FileStorage, StorageError

TD = "example.org"
ID = "spiffe://example.org/ns/shop/sa/cart"


def _issue(ca: CertificateAuthority, path: Path) -> Path:
    issued = ca.sign(identity.load_csr(make_csr(generate_key())), ID, dt.timedelta(minutes=10))
    path.write_bytes(issued.chain_pem)
    return path


def _openssl_verify(root: Path, leaf: Path, untrusted: Path | None = None) -> str:
    argv = ["openssl", "verify", "-CAfile", str(root), "-purpose", "sslclient"]
    if untrusted is not None:
        argv += ["-untrusted", str(untrusted)]
    result = subprocess.run([*argv, str(leaf)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_restart_keeps_the_root_and_old_certificates_still_verify(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    first = CertificateAuthority.load_or_create(FileStorage(folder), TD)
    old_leaf = _issue(first, tmp_path / "old.pem")
    # Files: folder 0700, key 0600, nothing else writable by others.
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "ca-key.pem").stat().st_mode) == 0o600
    del first

    second = CertificateAuthority.load_or_create(FileStorage(folder), TD)
    root = tmp_path / "root.pem"
    root.write_bytes(second.root_pem)
    assert _openssl_verify(root, old_leaf).strip().endswith("OK")
    new_leaf = _issue(second, tmp_path / "new.pem")
    assert _openssl_verify(root, new_leaf).strip().endswith("OK")
    assert (folder / "root-cert.pem").read_bytes() == second.root_pem


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _operator_cacerts(folder: Path) -> Path:
    """An operator's root and intermediate, made with the openssl CLI (not by meshfed)."""
    folder.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _openssl(
        "req", "-x509", *ec, "-keyout", "root-key.pem", "-out", "root-cert.pem",
        "-days", "30", "-subj", "/O=Operator/CN=Operator Root",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip
    _openssl(
        "req", *ec, "-keyout", "ca-key.pem", "-out", "ca.csr",
        "-subj", "/O=Operator/CN=meshfed intermediate",
        cwd=folder,
    )  # fmt: skip
    (folder / "ext.cnf").write_text(
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
        "subjectAltName=URI:spiffe://example.org\n"
    )
    _openssl(
        "x509", "-req", "-in", "ca.csr", "-CA", "root-cert.pem", "-CAkey", "root-key.pem",
        "-CAcreateserial", "-out", "ca-cert.pem", "-days", "30", "-extfile", "ext.cnf",
        cwd=folder,
    )  # fmt: skip
    chain = (folder / "ca-cert.pem").read_bytes() + (folder / "root-cert.pem").read_bytes()
    (folder / "cert-chain.pem").write_bytes(chain)
    os.chmod(folder / "ca-key.pem", 0o600)
    (folder / "root-key.pem").unlink()  # the operator keeps the root key elsewhere
    return folder


def test_bring_your_own_ca_issues_certificates_that_openssl_verifies(tmp_path: Path) -> None:
    cacerts = _operator_cacerts(tmp_path / "cacerts")
    before = {p.name: p.read_bytes() for p in cacerts.iterdir()}
    ca = CertificateAuthority.from_cacerts(str(cacerts), TD)
    leaf = _issue(ca, tmp_path / "leaf.pem")
    issued = identity.load_pem_chain(leaf.read_bytes())
    assert [c.subject.rfc4514_string() for c in issued[1:]] == [
        "CN=meshfed intermediate,O=Operator"
    ]  # leaf + intermediate; the root is the trust bundle, not part of the chain
    out = _openssl_verify(cacerts / "root-cert.pem", leaf, untrusted=cacerts / "ca-cert.pem")
    assert out.strip().endswith("OK")
    assert ca.root_pem == (cacerts / "root-cert.pem").read_bytes()
    # The operator's folder is never written to.
    assert {p.name: p.read_bytes() for p in cacerts.iterdir()} == before


def test_bring_your_own_ca_is_checked_at_load(tmp_path: Path) -> None:
    cacerts = _operator_cacerts(tmp_path / "cacerts")
    with pytest.raises(CAConfigError, match="trust domain"):
        CertificateAuthority.from_cacerts(str(cacerts), "other.org")
    other = _operator_cacerts(tmp_path / "other")
    (cacerts / "ca-key.pem").write_bytes((other / "ca-key.pem").read_bytes())
    with pytest.raises(CAConfigError, match="does not belong"):
        CertificateAuthority.from_cacerts(str(cacerts), TD)
    (cacerts / "cert-chain.pem").unlink()
    with pytest.raises(StorageError, match=r"cert-chain\.pem"):
        CertificateAuthority.from_cacerts(str(cacerts), TD)


def test_leaf_is_refused_as_a_signing_certificate(tmp_path: Path, ca: CertificateAuthority) -> None:
    from cryptography.hazmat.primitives import serialization

    key = generate_key()
    leaf = ca.sign(identity.load_csr(make_csr(key)), ID).certificate
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "ca-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pem = leaf.public_bytes(serialization.Encoding.PEM)
    for name in ("ca-cert.pem", "cert-chain.pem"):
        (folder / name).write_bytes(pem)
    (folder / "root-cert.pem").write_bytes(ca.root_pem)
    with pytest.raises(CAConfigError, match="not a CA"):
        CertificateAuthority.from_cacerts(str(folder), TD)


def test_verify_issued_refuses_expired_and_foreign_certificates(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    csr = identity.load_csr(make_csr(generate_key()))
    # Issued at the root's first valid second, for 30 s: expired by the time the test runs.
    past = ca.signer_cert.not_valid_before_utc + dt.timedelta(seconds=1)
    expired = ca.sign(csr, ID, dt.timedelta(seconds=30), now=past)
    with pytest.raises(ValueError, match="expired"):
        ca.verify_issued(identity.load_pem_chain(expired.chain_pem))
    foreign = CertificateAuthority.load_or_create(FileStorage(tmp_path / "foreign"), TD)
    other = foreign.sign(csr, ID)
    with pytest.raises(ValueError, match="not issued by this CA"):
        ca.verify_issued(identity.load_pem_chain(other.chain_pem))
    good = ca.sign(csr, ID)
    assert ca.verify_issued([good.certificate]) == ID
    assert isinstance(good.certificate, x509.Certificate)
