"""Where the CA keeps its signing key and certificates, so that a restart keeps the root.

Why: if the CA minted a new root on every start, every certificate it had issued would stop
verifying the moment it restarted, and every sidecar would have to be re-bootstrapped. So the
signing material is written once and read back on every later start.

Two backends with one small interface (:class:`CAStorage`: ``load()`` / ``save()``):

- :class:`FileStorage`: a folder in Istio's ``cacerts`` layout (``ca-key.pem``,
  ``ca-cert.pem``, ``root-cert.pem``, ``cert-chain.pem``). The folder is created 0700 and the key
  0600; each file is written to a temporary name and renamed, so a crash never leaves half a key.
  The same layout is what an operator hands over for bring-your-own CA, so a BYO folder is read
  with the same class (``read_only=True``).
- :class:`KubernetesSecretStorage`: one ``Opaque`` Secret in the mesh's system namespace, with
  the same four keys. ``save()`` *creates* the Secret and never overwrites it: when two CA
  replicas race, the loser gets :class:`AlreadyStored` and loads the winner's root.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Protocol

import attrs

log = logging.getLogger("meshfed.security.storage")

KEY_FILE = "ca-key.pem"
CERT_FILE = "ca-cert.pem"
ROOT_FILE = "root-cert.pem"
CHAIN_FILE = "cert-chain.pem"
ALL_FILES = (KEY_FILE, CERT_FILE, ROOT_FILE, CHAIN_FILE)


class StorageError(RuntimeError):
    """Stored CA material is incomplete or unreadable."""


class AlreadyStored(StorageError):
    """Someone else stored CA material first; load theirs."""


@attrs.frozen(slots=True)
class CAMaterial:
    """A signing key and its certificates, all PEM.

    ``chain_pem`` is the signing certificate followed by any intermediates (Istio's
    ``cert-chain.pem``); ``root_pem`` holds the root(s) that peers trust.
    """

    key_pem: bytes = attrs.field(repr=False)
    cert_pem: bytes
    root_pem: bytes
    chain_pem: bytes


class CAStorage(Protocol):
    def load(self) -> CAMaterial | None: ...

    def save(self, material: CAMaterial) -> None: ...

    def describe(self) -> str: ...


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically; the file never exists with a looser ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class FileStorage:
    """CA material in a folder, ``cacerts`` layout."""

    def __init__(self, folder: Path | str, read_only: bool = False) -> None:
        self.folder = Path(folder)
        self.read_only = read_only

    def describe(self) -> str:
        return f"folder {self.folder}"

    def load(self) -> CAMaterial | None:
        present = [name for name in ALL_FILES if (self.folder / name).exists()]
        if not present:
            return None
        missing = [name for name in ALL_FILES if name not in present]
        # A self-signed root may be stored as key + certificate only (the root is the signer);
        # anything less than that, or a BYO folder without all four files, is an error.
        if (missing and self.read_only) or KEY_FILE in missing or CERT_FILE in missing:
            raise StorageError(f"{self.folder}: missing {', '.join(missing)} (cacerts layout)")
        key_path = self.folder / KEY_FILE
        mode = stat.S_IMODE(key_path.stat().st_mode)
        if mode & 0o077:
            log.warning("%s is readable by group/others (mode %o); expected 0600", key_path, mode)
        cert = (self.folder / CERT_FILE).read_bytes()
        return CAMaterial(
            key_pem=key_path.read_bytes(),
            cert_pem=cert,
            root_pem=_read_or(self.folder / ROOT_FILE, cert),
            chain_pem=_read_or(self.folder / CHAIN_FILE, cert),
        )

    def save(self, material: CAMaterial) -> None:
        if self.read_only:
            raise StorageError(f"{self.folder} is read-only (bring-your-own CA)")
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        if (self.folder / KEY_FILE).exists():
            raise AlreadyStored(f"{self.folder / KEY_FILE} exists")
        # Certificates first, the key last: load() treats the key as "material is complete".
        write_private(self.folder / CERT_FILE, material.cert_pem, 0o644)
        write_private(self.folder / ROOT_FILE, material.root_pem, 0o644)
        write_private(self.folder / CHAIN_FILE, material.chain_pem, 0o644)
        write_private(self.folder / KEY_FILE, material.key_pem, 0o600)


def _read_or(path: Path, default: bytes) -> bytes:
    return path.read_bytes() if path.exists() else default


class KubernetesSecretStorage:
    """CA material in a Kubernetes Secret (``meshfed-ca`` in the system namespace by default).

    ``api`` is a ``kubernetes.client.CoreV1Api``; calls are blocking, so the CA makes them once at
    start-up (from a worker thread when it runs inside an event loop).
    """

    def __init__(self, api: Any, namespace: str, name: str = "meshfed-ca") -> None:
        self.api = api
        self.namespace = namespace
        self.name = name

    def describe(self) -> str:
        return f"secret {self.namespace}/{self.name}"

    def load(self) -> CAMaterial | None:
        from kubernetes.client.rest import ApiException

        try:
            secret = self.api.read_namespaced_secret(self.name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        data = secret.data or {}
        missing = [k for k in ALL_FILES if k not in data]
        if missing:
            raise StorageError(f"{self.describe()}: missing keys {missing}")
        raw = {k: base64.b64decode(data[k]) for k in ALL_FILES}
        return CAMaterial(raw[KEY_FILE], raw[CERT_FILE], raw[ROOT_FILE], raw[CHAIN_FILE])

    def save(self, material: CAMaterial) -> None:
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        values = {
            KEY_FILE: material.key_pem,
            CERT_FILE: material.cert_pem,
            ROOT_FILE: material.root_pem,
            CHAIN_FILE: material.chain_pem,
        }
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(
                name=self.name,
                namespace=self.namespace,
                labels={"app.kubernetes.io/managed-by": "meshfed"},
            ),
            type="Opaque",
            data={k: base64.b64encode(v).decode() for k, v in values.items()},
        )
        try:
            self.api.create_namespaced_secret(self.namespace, body)
        except ApiException as exc:
            if exc.status == 409:
                raise AlreadyStored(f"{self.describe()} already exists") from None
            if exc.status == 404:
                # The system namespace does not exist yet: create it, then the Secret.
                ns = client.V1Namespace(metadata=client.V1ObjectMeta(name=self.namespace))
                with contextlib.suppress(ApiException):
                    self.api.create_namespace(ns)
                self.api.create_namespaced_secret(self.namespace, body)
                return
            raise
