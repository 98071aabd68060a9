"""``meshfed validate`` and ``meshfed up`` refuse what is not a regular config file at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from meshfed.cli import main


def test_validate_refuses_non_regular_files_without_blocking(tmp_path: Path, capsys) -> None:
    fifo, zero, folder = tmp_path / "x.yaml", tmp_path / "z.yaml", tmp_path / "d.yaml"
    os.mkfifo(fifo)
    zero.symlink_to("/dev/zero")
    folder.mkdir()
    assert main(["validate", str(fifo), str(zero), str(folder)]) == 1
    err = capsys.readouterr().err
    assert f"{fifo}: file: not a regular file (a FIFO)" in err
    assert f"{zero}: file: not a regular file (a character device)" in err
    assert f"{folder}: file: not a regular file (a directory)" in err
    assert "Traceback" not in err


def test_up_with_a_fifo_as_mesh_config_exits_with_the_error(tmp_path: Path) -> None:
    fifo = tmp_path / "mesh.yaml"
    os.mkfifo(fifo)
    done = subprocess.run(
        [sys.executable, "-m", "meshfed.cli", "up", "-c", str(fifo)],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1
    assert f"{fifo}: file: not a regular file (a FIFO)" in done.stderr
    assert "Traceback" not in done.stderr
