"""Handing a proxy its secrets as files Envoy watches (file-based SDS).

Why files and not an SDS server in the agent: a gRPC server needs grpcio and Envoy's protobufs
resident in the agent for as long as it runs, which is most of its memory. Envoy reads the same
secrets from files it watches (``path_config_source`` with a ``watched_directory``) and applies
a new certificate to new connections without a restart or a drain, so the agent only has to
write files, with the standard library. The price is that the private key is in a file, as in
Istio 0.2 (its node agent and Citadel put key and certificate in files mounted into the proxy);
the directory and file permissions below are what keeps other users out.

Promises:
- :meth:`SecretFiles.prepare` makes the directory (``0700``, owned by this user); a directory
  that cannot be made, is not a directory, or is owned by someone else (or sits in a folder
  another user owns, who could swap it) raises :class:`SecretDirError` naming the path and
  what was expected.
- :meth:`SecretFiles.write` replaces both files, each atomically: the new content goes to a
  ``0600`` temporary file in the same directory, is flushed to the disk, then renamed over the
  old file, so Envoy (watching the directory for moves) sees the old file or the new one, never
  a partial one, and certificate and key always come from the same write.
- A failed write raises :class:`SecretDirError` and leaves the files of the last good write in
  place (no temporary file is left behind); the version moves only when every file was written.
- File layout and secret names are :mod:`security.sds_files`'s.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from meshfed.security.sds_files import CERT_SECRET, ROOT_SECRET, SECRET_TYPE, secret_path


class SecretDirError(Exception):
    """The secrets directory cannot hold a proxy's secrets safely (message names it)."""


def default_directory(name: str) -> Path:
    """A tmpfs-backed place for a proxy's secrets when the operator names none: the user's
    ``$XDG_RUNTIME_DIR`` (tmpfs, per user, removed at logout), else ``/dev/shm`` when it exists,
    else the system's temporary folder. Keys on tmpfs never reach a disk."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        base = Path(runtime)
    elif os.path.isdir("/dev/shm"):
        base = Path("/dev/shm")
    else:
        base = Path(tempfile.gettempdir())
    return base / f"meshfed-{os.getuid()}" / name


def cert_document(chain_pem: bytes, key_pem: bytes, version: str) -> dict[str, Any]:
    """The ``DiscoveryResponse`` of the certificate secret (chain and key inline)."""
    return _response(
        version,
        {
            "name": CERT_SECRET,
            "tls_certificate": {
                "certificate_chain": _inline(chain_pem),
                "private_key": _inline(key_pem),
            },
        },
    )


def root_document(root_pem: bytes, version: str) -> dict[str, Any]:
    """The ``DiscoveryResponse`` of the trust bundle secret."""
    return _response(
        version,
        {
            "name": ROOT_SECRET,
            "validation_context": {"trusted_ca": _inline(root_pem)},
        },
    )


def _inline(pem: bytes) -> dict[str, str]:
    # Bytes, as SDS over gRPC carried them: config dumps and ``proxy-config`` read them alike.
    return {"inline_bytes": base64.b64encode(pem).decode()}


def _response(version: str, secret: dict[str, Any]) -> dict[str, Any]:
    return {"version_info": version, "resources": [{"@type": SECRET_TYPE, **secret}]}


class SecretFiles:
    """One proxy's secrets directory, written by this process only."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.version = 0
        self.writes = 0
        self.failures = 0
        self.last_error = ""

    @property
    def cert_path(self) -> str:
        return secret_path(self.directory, CERT_SECRET)

    @property
    def root_path(self) -> str:
        return secret_path(self.directory, ROOT_SECRET)

    def prepare(self) -> None:
        """Make the directory private to this user (see the module's promises)."""
        where = self.directory
        try:
            if where.exists() and not where.is_dir():
                raise SecretDirError(f"secrets directory {where}: is not a directory")
            where.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = os.lstat(where)
            if not stat.S_ISDIR(info.st_mode):
                raise SecretDirError(f"secrets directory {where}: is a link, not a directory")
            if info.st_uid != os.getuid():
                raise SecretDirError(
                    f"secrets directory {where}: owned by uid {info.st_uid}, expected this "
                    f"user's ({os.getuid()}): another user could read or replace the key"
                )
            parent = os.stat(where.parent)
            if parent.st_uid not in (0, os.getuid()):
                raise SecretDirError(
                    f"secrets directory {where}: its folder {where.parent} is owned by uid "
                    f"{parent.st_uid}, who could replace it; expected root or this user"
                )
            os.chmod(where, 0o700)
        except SecretDirError:
            raise
        except OSError as exc:
            raise SecretDirError(
                f"secrets directory {where}: cannot make it a private (0700) directory: "
                f"{exc.strerror or exc}"
            ) from None
        for leftover in where.glob(".*.tmp"):  # a write that a crash interrupted
            leftover.unlink(missing_ok=True)

    def write(self, chain_pem: bytes, key_pem: bytes, root_pem: bytes) -> int:
        """Replace certificate, key and trust bundle; returns the new version."""
        version = str(self.version + 1)
        try:
            # The trust bundle first: a new certificate from a new root is then never presented
            # to a peer while this proxy still distrusts that root.
            self._replace(self.root_path, root_document(root_pem, version))
            self._replace(self.cert_path, cert_document(chain_pem, key_pem, version))
        except OSError as exc:
            self.failures += 1
            self.last_error = (
                f"secrets directory {self.directory}: cannot write: {exc.strerror or exc}"
            )
            raise SecretDirError(self.last_error) from None
        self.version += 1
        self.writes += 1
        self.last_error = ""
        return self.version

    def _replace(self, path: str, document: dict[str, Any]) -> None:
        data = json.dumps(document, indent=1).encode()
        name = os.path.basename(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as out:  # mkstemp made it 0600
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def remove(self) -> None:
        """Delete the secrets (on stop): a key that nothing serves should not stay behind."""
        for path in (self.cert_path, self.root_path):
            Path(path).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty (an operator's files) or gone
            self.directory.rmdir()

    def describe(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "version": self.version,
            "writes": self.writes,
            "failures": self.failures,
            "last_error": self.last_error,
        }
