"""The config file reader: regular files only, never blocking on a FIFO, bounded in size."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshfed.core.files import (
    MAX_CONFIG_BYTES,
    FileRefused,
    decode_config,
    read_config_file,
    read_config_text,
)
from meshfed.core.resources import load_documents


def refused(path: Path, **kw: int) -> str:
    with pytest.raises(FileRefused) as info:
        read_config_file(path, **kw)
    assert info.value.path == str(path)
    assert str(path) in str(info.value)
    return info.value.reason


def test_regular_file_and_symlink_to_one(tmp_path: Path) -> None:
    real = tmp_path / "real.yaml"
    real.write_bytes(b"kind: X\n")
    link = tmp_path / "link.yaml"
    link.symlink_to(real)  # what a Kubernetes ConfigMap volume is made of
    assert read_config_file(real) == b"kind: X\n"
    assert read_config_file(link) == b"kind: X\n"


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "x.yaml"
    os.mkfifo(fifo)
    started = time.monotonic()
    # Run in a thread so a regression (a blocking open) fails the test instead of hanging it.
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(refused(fifo)), daemon=True)
    worker.start()
    worker.join(2)
    assert not worker.is_alive(), "reading a FIFO blocked"
    assert time.monotonic() - started < 1
    assert outcome == ["not a regular file (a FIFO); only regular files are read"]


@pytest.mark.parametrize(
    ("target", "kind"), [("/dev/zero", "a character device"), ("/dev/null", "a character device")]
)
def test_symlink_to_a_device_is_refused(tmp_path: Path, target: str, kind: str) -> None:
    link = tmp_path / "services.yaml"
    link.symlink_to(target)
    assert refused(link) == f"not a regular file ({kind}); only regular files are read"


def test_directory_and_socket_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "d.yaml"
    folder.mkdir()
    assert "not a regular file (a directory)" in refused(folder)
    sock_path = tmp_path / "s.yaml"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        assert "not a regular file (a socket)" in refused(sock_path)


def test_missing_file_and_symlink_loop(tmp_path: Path) -> None:
    assert refused(tmp_path / "nope.yaml") == "cannot read: No such file or directory"
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)
    assert refused(loop).startswith("cannot read: Too many levels of symbolic links")


def test_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * 1000)
    assert read_config_file(path, limit=1000) == b"#" * 1000
    assert refused(path, limit=999) == "larger than the 999 bytes limit for a config file"
    assert MAX_CONFIG_BYTES == 8 * 1024 * 1024


def test_size_limit_holds_when_the_file_claims_to_be_empty() -> None:
    # /proc files report st_size 0 whatever they hold: the limit is on what is read.
    status = Path("/proc/self/status")
    assert status.stat().st_size == 0
    assert "larger than the 10 bytes limit" in refused(status, limit=10)


def test_growing_file_is_cut_at_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "grows.yaml"
    path.write_bytes(b"a" * (2 * 1024 * 1024))
    assert "larger than the 1 MiB limit" in refused(path, limit=1024 * 1024)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_decoding_never_raises_anything_but_a_clean_refusal(data: bytes) -> None:
    try:
        text = decode_config("f.yaml", data)
    except FileRefused as exc:
        assert exc.reason.startswith("not valid UTF-8 at byte ")
        bad = int(exc.reason.split()[5])
        data[:bad].decode("utf-8")  # everything before the reported byte is valid
    else:
        assert text.encode("utf-8") == data


def test_non_utf8_names_byte_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    data = b"kind: X\nmetadata: {name: caf\xe9}\n"
    path.write_bytes(data)
    with pytest.raises(FileRefused) as info:
        read_config_text(path)
    assert info.value.reason == f"not valid UTF-8 at byte {data.index(0xE9)} (line 2)"


def test_load_documents_reports_refusals_as_file_errors(tmp_path: Path) -> None:
    fifo = tmp_path / "x.yaml"
    os.mkfifo(fifo)
    docs, errors = load_documents(fifo)
    assert docs == []
    assert [str(e) for e in errors] == [
        f"{fifo}: file: not a regular file (a FIFO); only regular files are read"
    ]
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\xff\xfe")
    _, errors = load_documents(bad)
    assert [str(e) for e in errors] == [f"{bad}: file: not valid UTF-8 at byte 0 (line 1)"]


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv")
def test_unreadable_file_is_refused_cleanly(tmp_path: Path) -> None:
    # Root reads a mode 000 file anyway; without the DAC override capabilities it cannot, as an
    # unprivileged hub could not.
    path = tmp_path / "secret.yaml"
    path.write_text("kind: X\n")
    path.chmod(0)
    code = (
        "import sys; from meshfed.core.files import FileRefused, read_config_file\n"
        "try: read_config_file(sys.argv[1])\n"
        "except FileRefused as exc: print(exc.reason)\n"
    )
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    done = subprocess.run(
        [*drop, sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.stdout.strip() == "cannot read: Permission denied", done.stderr
