"""A real Mongo-wire server for the traffic tests: FerretDB 1.24.2 (Apache-2.0) on SQLite.

Built from the Go module proxy on first use and cached at
``~/.cache/meshfed/bin/ferretdb-1.24.2`` (``MESHFED_CACHE`` moves the cache), like the other
real peers (see README-peers.md). Why not ``go install``: FerretDB embeds
``build/version/version.txt``, which its module archive does not carry (its own build
generates it), so the binary panics at start; the module source is copied, the file written,
and ``go build`` run there. Nothing is written into the repository.

Without Go the tests that need it skip with a hint on a developer machine and fail under
``CI`` (the suite's rule for missing peers).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

VERSION = "1.24.2"
MODULE = "github.com/FerretDB/FerretDB"


def cache_dir() -> Path:
    return Path(os.environ.get("MESHFED_CACHE", Path.home() / ".cache" / "meshfed"))


def binary() -> Path:
    return cache_dir() / "bin" / f"ferretdb-{VERSION}"


def build(timeout: float = 900.0) -> Path:
    """The FerretDB binary, built once (a few seconds with a warm Go cache)."""
    target = binary()
    if target.exists():
        return target
    go = shutil.which("go")
    if go is None:
        message = "go not found: FerretDB (the Mongo-wire test server) is built from source"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    log = cache_dir() / "logs" / f"ferretdb-{VERSION}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ferretdb-build-") as tmp, open(log, "ab") as out:
        downloaded = subprocess.run(
            [go, "mod", "download", "-json", f"{MODULE}@v{VERSION}"],
            cwd=tmp,
            env=env,
            capture_output=True,
            timeout=timeout,
            check=True,
        )
        source = Path(tmp) / "src"
        shutil.copytree(json.loads(downloaded.stdout)["Dir"], source)
        for path in source.rglob("*"):
            path.chmod(path.stat().st_mode | 0o200)
        (source / "build" / "version" / "version.txt").write_text(f"v{VERSION}\n")
        subprocess.run(
            [go, "build", "-o", str(target), "./cmd/ferretdb"],
            cwd=source,
            env=env,
            stdout=out,
            stderr=out,
            timeout=timeout,
            check=True,
        )
    return target


@contextlib.contextmanager
def running_ferretdb(address: str, port: int, state: Path) -> Iterator[str]:
    """FerretDB on ``address:port`` (SQLite files under ``state``); yields its log path."""
    state.mkdir(parents=True, exist_ok=True)
    log = state / "ferretdb.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                str(build()),
                "--handler=sqlite",
                f"--sqlite-url=file:{state}/",
                f"--state-dir={state}",  # else its state.json lands in the working directory
                f"--listen-addr={address}:{port}",
                "--telemetry=disable",
                "--debug-addr=-",
                "--log-level=warn",
            ],
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection((address, port), 0.5):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ferretdb did not start: {log.read_text()[-800:]}")
            time.sleep(0.1)
        yield str(log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait()
