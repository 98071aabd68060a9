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

Root rotation (:mod:`security.rotation`) adds one record beside the material: when the rotation
started, how long its phases last, the old root and the new root with its key
(:class:`RotationRecord`). ``start_rotation()`` stores it only when there is none;
``complete_rotation()`` replaces the material with the new root and drops the record. Files: the
new key is ``next-ca-key.pem`` (0600) and the record ``rotation.json``, written last, so a reader
never sees a record without its key; writers take a ``flock``. Secret: the same two keys, and
every change is a ``replace`` carrying the ``resourceVersion`` that was read, so two writers
cannot both win.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import json
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
ROTATION_FILE = "rotation.json"
NEXT_KEY_FILE = "next-ca-key.pem"
LOCK_FILE = ".rotation.lock"


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


@attrs.frozen(slots=True)
class RotationRecord:
    """A root rotation in progress (or complete but not yet folded into the material).

    Certificates and key are PEM; the CA parses them. ``old_cert_pem`` is the root that signed
    when the rotation started; ``new_cert_pem``/``new_key_pem`` the self-signed root replacing it.
    """

    started_at: dt.datetime
    add: dt.timedelta
    switch: dt.timedelta
    old_cert_pem: bytes
    new_cert_pem: bytes
    new_key_pem: bytes = attrs.field(repr=False)

    def to_json(self) -> bytes:
        """The record without the key (the key is stored apart, private)."""
        return json.dumps(
            {
                "version": 1,
                "started_at": self.started_at.isoformat(),
                "add_seconds": self.add.total_seconds(),
                "switch_seconds": self.switch.total_seconds(),
                "old_root": self.old_cert_pem.decode(),
                "new_root": self.new_cert_pem.decode(),
            },
            indent=1,
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes, key_pem: bytes) -> RotationRecord:
        try:
            doc = json.loads(raw)
            return cls(
                started_at=dt.datetime.fromisoformat(doc["started_at"]),
                add=dt.timedelta(seconds=float(doc["add_seconds"])),
                switch=dt.timedelta(seconds=float(doc["switch_seconds"])),
                old_cert_pem=doc["old_root"].encode(),
                new_cert_pem=doc["new_root"].encode(),
                new_key_pem=key_pem,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StorageError(f"unreadable rotation record: {exc!r}") from None


class CAStorage(Protocol):
    def load(self) -> CAMaterial | None: ...

    def save(self, material: CAMaterial) -> None: ...

    def describe(self) -> str: ...

    def load_rotation(self) -> RotationRecord | None: ...

    def start_rotation(self, record: RotationRecord) -> None: ...

    def complete_rotation(self, material: CAMaterial) -> None: ...


def private_dir(folder: Path) -> Path:
    """Make sure ``folder`` exists and is 0700, whatever the process's umask; return it.

    Missing folders (parents included) are created 0700 one by one: ``mkdir -p`` would create
    the parents with the umask's mode, and a umask of 000 would leave them world-writable, so
    another user could swap the state folder. An existing folder of ours that is open to
    group or others is tightened to 0700 (it holds keys and tokens); one we do not own is left
    alone (``--state-dir`` may be a folder the operator manages).
    """
    missing = []
    here = folder
    while not os.path.lexists(here):
        missing.append(here)
        here = here.parent
    for part in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            os.mkdir(part, 0o700)
        os.chmod(part, 0o700)  # a umask such as 0o277 would even remove our own bits
    info = os.stat(folder)
    if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(folder, 0o700)
    return folder


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically; the file never exists with a looser ``mode``."""
    if not path.parent.exists():
        private_dir(path.parent)
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
        private_dir(self.folder)
        if (self.folder / KEY_FILE).exists():
            raise AlreadyStored(f"{self.folder / KEY_FILE} exists")
        # Certificates first, the key last: load() treats the key as "material is complete".
        write_private(self.folder / CERT_FILE, material.cert_pem, 0o644)
        write_private(self.folder / ROOT_FILE, material.root_pem, 0o644)
        write_private(self.folder / CHAIN_FILE, material.chain_pem, 0o644)
        write_private(self.folder / KEY_FILE, material.key_pem, 0o600)

    # -- root rotation -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Any:
        if self.read_only:
            raise StorageError(f"{self.folder} is read-only (bring-your-own CA)")
        private_dir(self.folder)
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def load_rotation(self) -> RotationRecord | None:
        record = self.folder / ROTATION_FILE
        if not record.exists():
            return None
        key = self.folder / NEXT_KEY_FILE
        if not key.exists():
            raise StorageError(f"{record} exists but {key} does not")
        return RotationRecord.from_json(record.read_bytes(), key.read_bytes())

    def start_rotation(self, record: RotationRecord) -> None:
        with self._locked():
            if (self.folder / ROTATION_FILE).exists():
                raise AlreadyStored(f"{self.folder / ROTATION_FILE} exists: a rotation is stored")
            # The key first, the record last: the record is what makes the rotation exist.
            write_private(self.folder / NEXT_KEY_FILE, record.new_key_pem, 0o600)
            write_private(self.folder / ROTATION_FILE, record.to_json(), 0o644)

    def complete_rotation(self, material: CAMaterial) -> None:
        with self._locked():
            # The material first, the record last: while the record exists a reader builds the
            # new root from it (and needs the old key only during the add phase, long over).
            write_private(self.folder / CERT_FILE, material.cert_pem, 0o644)
            write_private(self.folder / ROOT_FILE, material.root_pem, 0o644)
            write_private(self.folder / CHAIN_FILE, material.chain_pem, 0o644)
            write_private(self.folder / KEY_FILE, material.key_pem, 0o600)
            with contextlib.suppress(FileNotFoundError):
                (self.folder / ROTATION_FILE).unlink()
            with contextlib.suppress(FileNotFoundError):
                (self.folder / NEXT_KEY_FILE).unlink()


def _read_or(path: Path, default: bytes) -> bytes:
    return path.read_bytes() if path.exists() else default


class KubernetesSecretStorage:
    """CA material in a Kubernetes Secret (``meshfed-ca`` in the system namespace by default).

    ``api`` is a ``kubernetes.client.CoreV1Api``; calls are blocking, so the CA makes them at
    start-up and when it re-reads the rotation record, from a worker thread inside an event loop.
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

    def _body(self, values: dict[str, bytes], resource_version: str | None = None) -> Any:
        from kubernetes import client

        return client.V1Secret(
            metadata=client.V1ObjectMeta(
                name=self.name,
                namespace=self.namespace,
                labels={"app.kubernetes.io/managed-by": "meshfed"},
                resource_version=resource_version,
            ),
            type="Opaque",
            data={k: base64.b64encode(v).decode() for k, v in values.items()},
        )

    def _read(self) -> tuple[dict[str, bytes], str]:
        secret = self.api.read_namespaced_secret(self.name, self.namespace)
        data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
        return data, secret.metadata.resource_version

    def _replace(self, values: dict[str, bytes], resource_version: str) -> None:
        from kubernetes.client.rest import ApiException

        try:
            self.api.replace_namespaced_secret(
                self.name, self.namespace, self._body(values, resource_version)
            )
        except ApiException as exc:
            if exc.status == 409:
                raise AlreadyStored(f"{self.describe()} changed concurrently; retry") from None
            raise

    def load_rotation(self) -> RotationRecord | None:
        from kubernetes.client.rest import ApiException

        try:
            data, _ = self._read()
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        if ROTATION_FILE not in data:
            return None
        if NEXT_KEY_FILE not in data:
            raise StorageError(f"{self.describe()}: {ROTATION_FILE} without {NEXT_KEY_FILE}")
        return RotationRecord.from_json(data[ROTATION_FILE], data[NEXT_KEY_FILE])

    def start_rotation(self, record: RotationRecord) -> None:
        data, version = self._read()
        if ROTATION_FILE in data:
            raise AlreadyStored(f"{self.describe()} already holds a rotation")
        data[ROTATION_FILE] = record.to_json()
        data[NEXT_KEY_FILE] = record.new_key_pem
        self._replace(data, version)

    def complete_rotation(self, material: CAMaterial) -> None:
        _, version = self._read()
        self._replace(
            {
                KEY_FILE: material.key_pem,
                CERT_FILE: material.cert_pem,
                ROOT_FILE: material.root_pem,
                CHAIN_FILE: material.chain_pem,
            },
            version,
        )

    def save(self, material: CAMaterial) -> None:
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        values = {
            KEY_FILE: material.key_pem,
            CERT_FILE: material.cert_pem,
            ROOT_FILE: material.root_pem,
            CHAIN_FILE: material.chain_pem,
        }
        body = self._body(values)
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
