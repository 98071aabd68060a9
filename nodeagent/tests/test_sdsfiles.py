"""The secret files Envoy's file-based SDS reads: atomic replacement, permissions, errors."""

from __future__ import annotations

import base64
import json
import os
import resource
import signal
import stat
import threading
from pathlib import Path

import pytest
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format

from meshfed.nodeagent.sdsfiles import SecretDirError, SecretFiles, default_directory
from meshfed.security.sds_files import CERT_SECRET, ROOT_SECRET


def _secret(path: str) -> tuple[str, secret_pb2.Secret]:
    """Parse a file as Envoy does: a DiscoveryResponse with exactly one Secret."""
    response = json_format.Parse(Path(path).read_text(), discovery_pb2.DiscoveryResponse())
    (packed,) = response.resources
    secret = secret_pb2.Secret()
    assert packed.Unpack(secret)
    return response.version_info, secret


def test_write_gives_envoy_one_secret_per_file_with_key_and_chain_together(tmp_path: Path) -> None:
    files = SecretFiles(tmp_path / "proxy")
    files.prepare()
    assert files.write(b"CHAIN1\n", b"KEY1\n", b"ROOT1\n") == 1
    version, cert = _secret(files.cert_path)
    assert (version, cert.name) == ("1", CERT_SECRET)
    assert cert.tls_certificate.certificate_chain.inline_bytes == b"CHAIN1\n"
    assert cert.tls_certificate.private_key.inline_bytes == b"KEY1\n"
    version, root = _secret(files.root_path)
    assert (version, root.name) == ("1", ROOT_SECRET)
    assert root.validation_context.trusted_ca.inline_bytes == b"ROOT1\n"

    assert files.write(b"CHAIN2\n", b"KEY2\n", b"ROOT2\n") == 2
    version, cert = _secret(files.cert_path)
    assert version == "2" and cert.tls_certificate.private_key.inline_bytes == b"KEY2\n"
    assert sorted(os.listdir(files.directory)) == ["ROOTCA.json", "default.json"]


def test_directory_0700_and_files_0600_even_under_a_loose_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        files = SecretFiles(tmp_path / "a" / "proxy")
        files.prepare()
        files.write(b"C", b"K", b"R")
    finally:
        os.umask(old)
    assert stat.S_IMODE(files.directory.stat().st_mode) == 0o700
    for path in (files.cert_path, files.root_path):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_an_existing_loose_directory_is_tightened(tmp_path: Path) -> None:
    where = tmp_path / "proxy"
    where.mkdir(mode=0o755)
    where.chmod(0o755)
    SecretFiles(where).prepare()
    assert stat.S_IMODE(where.stat().st_mode) == 0o700


def test_replacement_is_a_rename_so_a_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    files = SecretFiles(tmp_path / "proxy")
    files.prepare()
    files.write(b"00", b"00", b"R0")
    held = open(files.cert_path)  # noqa: SIM115  (an Envoy mid-read of the old file)
    big = b"X" * 200_000  # large enough that a plain rewrite would be seen half-done
    stop = threading.Event()
    seen: list[str] = []
    torn: list[str] = []

    def read() -> None:
        while not stop.is_set():
            text = Path(files.cert_path).read_text()
            doc = json.loads(text)  # a partial file would not parse
            tls = doc["resources"][0]["tls_certificate"]
            # Chain and key always from the same write.
            chain = base64.b64decode(tls["certificate_chain"]["inline_bytes"])
            key = base64.b64decode(tls["private_key"]["inline_bytes"])
            seen.append(chain[-2:].decode())
            if key[-2:].decode() != seen[-1]:
                torn.append(seen[-1])

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(1, 30):
            tag = f"{i:02d}".encode()
            files.write(big + tag, big + tag, b"R")
    finally:
        stop.set()
        reader.join(10)
    assert seen and not torn
    with held:  # the old file was replaced, never written into
        assert json.loads(held.read())["version_info"] == "1"
    assert not [n for n in os.listdir(files.directory) if n.endswith(".tmp")]


def test_a_file_in_the_way_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "proxy"
    blocker.write_text("not a directory")
    with pytest.raises(SecretDirError, match=r"proxy.*not a directory"):
        SecretFiles(blocker).prepare()
    with pytest.raises(SecretDirError, match=r"private \(0700\) directory"):
        SecretFiles(blocker / "below").prepare()


def test_a_failed_write_keeps_the_last_good_secrets(tmp_path: Path) -> None:
    files = SecretFiles(tmp_path / "proxy")
    files.prepare()
    files.write(b"GOOD", b"GOODKEY", b"GOODROOT")
    # A file-size limit makes the write fail for root too (EFBIG instead of a signal).
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    previous_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16, previous_limit[1]))
    try:
        with pytest.raises(SecretDirError, match=r"proxy: cannot write"):
            files.write(b"NEW", b"NEWKEY", b"NEWROOT")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous_limit)
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert files.version == 1 and files.failures == 1
    assert _secret(files.cert_path)[1].tls_certificate.private_key.inline_bytes == b"GOODKEY"
    assert not [n for n in os.listdir(files.directory) if n.endswith(".tmp")]


def test_a_write_that_fails_midway_leaves_no_temporary_file_and_the_old_secret(
    tmp_path: Path,
) -> None:
    files = SecretFiles(tmp_path / "proxy")
    files.prepare()
    files.write(b"GOOD", b"GOODKEY", b"GOODROOT")
    # The certificate's name taken by a directory: the rename onto it fails (as root too).
    os.unlink(files.cert_path)
    os.mkdir(files.cert_path)
    (Path(files.cert_path) / "x").write_text("x")
    with pytest.raises(SecretDirError, match="cannot write"):
        files.write(b"NEW", b"NEWKEY", b"NEWROOT")
    assert files.version == 1
    assert not [n for n in os.listdir(files.directory) if n.endswith(".tmp")]
    assert files.describe()["last_error"]


def test_stale_temporary_files_from_a_crash_are_removed(tmp_path: Path) -> None:
    where = tmp_path / "proxy"
    where.mkdir()
    (where / ".default.json.abc.tmp").write_text("{")
    SecretFiles(where).prepare()
    assert os.listdir(where) == []


def test_remove_deletes_the_key(tmp_path: Path) -> None:
    files = SecretFiles(tmp_path / "proxy")
    files.prepare()
    files.write(b"C", b"K", b"R")
    files.remove()
    assert not files.directory.exists()


def test_default_directory_prefers_the_users_runtime_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_directory("web") == tmp_path / f"meshfed-{os.getuid()}" / "web"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "missing"))
    assert default_directory("web").parent.parent != tmp_path / "missing"
