"""Shared fixtures for the CA's unit tests: a fresh self-signed CA in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshfed.security.ca import CertificateAuthority
from meshfed.security.storage import FileStorage

TRUST_DOMAIN = "example.org"


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(FileStorage(tmp_path / "ca"), TRUST_DOMAIN)
