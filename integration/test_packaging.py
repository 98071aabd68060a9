"""The built wheel, installed into a clean venv outside the checkout, is the product users get.

An installed meshfed must occupy one top-level import name (``meshfed``), so it cannot clash
with another distribution's ``registry``, ``security`` or ``pilot`` package; it must carry no
tests; and it must run its demo from anywhere. The demo uses its fixed 127.0.0.10-17 addresses.
"""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_wheel_installs_alone_and_runs_the_demo(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        cwd=tmp_path,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = dist.glob("meshfed-*.whl")

    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"meshfed", wheel.name.split("-py3")[0] + ".dist-info"}, tops
    assert not [n for n in names if "/tests/" in n], "tests shipped in the wheel"
    for layer in ("registry", "core", "adapters", "pilot", "mixer", "security", "nodeagent"):
        assert f"meshfed/{layer}/__init__.py" in names
    for asset in ("index.html", "dashboard.js", "dashboard.css", "logo.svg"):  # /dashboard's
        assert f"meshfed/dashboard/static/{asset}" in names, f"dashboard asset {asset} missing"
    metadata = zipfile.ZipFile(wheel).read(wheel.name.split("-py3")[0] + ".dist-info/METADATA")
    assert b"License-Expression: Apache-2.0" in metadata

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    installed = _run([str(py), "-m", "pip", "install", "-q", str(wheel)], tmp_path, 900)
    assert installed.returncode == 0, installed.stderr[-2000:]

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for bare in ("registry", "security", "pilot", "adapters", "nodeagent", "core", "mixer"):
        probe = _run([str(py), "-c", f"import {bare}"], outside, 60)
        assert probe.returncode != 0, f"an installed meshfed provides a bare {bare!r}"
    probe = _run([str(py), "-c", "import meshfed.registry, meshfed.pilot.server"], outside, 60)
    assert probe.returncode == 0, probe.stderr

    demo = _run([str(env_dir / "bin" / "meshfed"), "demo", "--duration", "5"], outside, 180)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert "productpage -> reviews" in demo.stdout
    assert "Traceback" not in demo.stdout + demo.stderr
