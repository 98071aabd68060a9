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


def test_validate_reads_a_folder_as_the_hub_reads_a_configured_folder(
    tmp_path: Path, capsys
) -> None:
    """A folder is its *.yaml / *.yml files, not its subfolders (the README's config rules)."""
    rules = tmp_path / "rules"
    (rules / "sub").mkdir(parents=True)
    good = "apiVersion: config.istio.io/v1alpha2\nkind: RouteRule\nmetadata: {name: %s}\n"
    good += "spec: {destination: {name: reviews}, precedence: %s}\n"
    (rules / "a.yaml").write_text(good % ("a", 1))
    (rules / "b.yml").write_text(good % ("b", 2))
    (rules / "notes.txt").write_text("not: [config")
    (rules / "sub" / "c.yaml").write_text("not: [valid")  # a subfolder is not read
    assert main(["validate", str(rules)]) == 0, capsys.readouterr().err
    assert "2 document(s) in 2 file(s) valid" in capsys.readouterr().out
    (rules / "b.yml").write_text(good % ("b", "high"))
    assert main(["validate", str(rules)]) == 1
    err = capsys.readouterr().err
    assert "b.yml: RouteRule default/b: spec.precedence: expected an integer" in err
    assert "1 error(s) in 2 file(s)" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["validate", str(empty)]) == 0
    assert f"warning: {empty}: a folder with no *.yaml or *.yml files" in capsys.readouterr().err
