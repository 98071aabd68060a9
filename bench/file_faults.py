"""Benchmark: what each filesystem fault costs a live hub (run by hand, not by CI).

It is a pytest module because it uses the integration harness; ``bench/`` is outside the test
paths, so only an explicit run executes it. It prints figures and writes a JSON file::

    .venv/bin/python -m pytest -s bench/file_faults.py
    # results: MESHFED_BENCH_OUT (default bench/results/file_faults.json)

For each fault put into the hub's watched config folder (see integration/files_helpers.py) it
reports: the slowest ``/healthz/ready`` or ``/debug/registryz`` answer while the fault is in place,
the time from writing a good file after the fault until the registry shows it, the hub's resident
memory before and after, and how long SIGTERM takes to stop the hub. Figures are reported, never
asserted (beyond the fault being reported at all).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from integration.files_helpers import HOST, RULES, LiveHub, service_entry

OUT = Path(os.environ.get("MESHFED_BENCH_OUT", Path(__file__).parent / "results/file_faults.json"))


def _fifo(folder: Path) -> str:
    os.mkfifo(folder / "x.yaml")
    return "not a regular file (a FIFO)"


def _dev_zero(folder: Path) -> str:
    (folder / "zero.yaml").symlink_to("/dev/zero")
    return "not a regular file (a character device)"


def _directory(folder: Path) -> str:
    (folder / "services.yaml").unlink()
    (folder / "services.yaml").mkdir()
    return "not a regular file (a directory)"


def _unreadable(folder: Path) -> str:
    (folder / "services.yaml").chmod(0)
    return "Permission denied"


def _too_large(folder: Path) -> str:
    with open(folder / "big.yaml", "wb") as out:
        out.write(b"#" * (9 * 1024 * 1024))
    return "larger than the 8 MiB limit"


def _folder_gone(folder: Path) -> str:
    shutil.rmtree(folder)
    return "not found"


FAULTS: dict[str, Callable[[Path], str]] = {
    "fifo": _fifo,
    "symlink to /dev/zero": _dev_zero,
    "file replaced by a directory": _directory,
    "unreadable file (mode 000)": _unreadable,
    "9 MiB file": _too_large,
    "folder deleted": _folder_gone,
}


async def _run(tmp_path: Path, name: str, fault: Callable[[Path], str]) -> dict[str, Any]:
    hub = LiveHub(tmp_path)
    hub.folder.mkdir()
    (hub.folder / "services.yaml").write_text(service_entry("web", HOST, ["127.0.93.2"]))
    (hub.folder / "rules.yaml").write_text(RULES)
    try:
        await hub.start()
        rss_before = hub.rss_mb()
        expected = fault(hub.folder)

        async def reported() -> bool:
            return any(expected in e for e in await hub.errors())

        await hub.eventually(reported, f"{name} reported", 15)
        kept = await hub.addresses() == ["127.0.93.2"]
        hub.folder.mkdir(exist_ok=True)
        started = time.monotonic()
        (hub.folder / "extra.yaml").write_text(
            service_entry("api", "api.files.test", ["127.0.93.9"])
        )

        async def applied() -> bool:
            return await hub.addresses("api.files.test") == ["127.0.93.9"]

        await hub.eventually(applied, "edit after the fault", 15)
        edit_s = time.monotonic() - started
        rss_after = hub.rss_mb()
        worst = hub.worst
        stop_s = await hub.terminate()
        return {
            "fault": name,
            "last_good_kept": kept,
            "worst_probe_ms": round(worst * 1000, 1),
            "edit_applied_s": round(edit_s, 3),
            "rss_before_mb": round(rss_before, 1),
            "rss_after_mb": round(rss_after, 1),
            "sigterm_s": round(stop_s, 2),
            "probe_failures": len(hub.probe_failures),
        }
    finally:
        hub.kill()


async def test_file_faults(tmp_path_factory) -> None:
    rows = []
    for name, fault in FAULTS.items():
        rows.append(await _run(tmp_path_factory.mktemp("fault"), name, fault))
    print()
    print(f"{'fault':30} {'kept':>5} {'probe ms':>9} {'edit s':>7} {'RSS MB':>13} {'stop s':>7}")
    for r in rows:
        rss = f"{r['rss_before_mb']:.0f}->{r['rss_after_mb']:.0f}"
        print(
            f"{r['fault']:30} {r['last_good_kept']!s:>5} {r['worst_probe_ms']:>9} "
            f"{r['edit_applied_s']:>7} {rss:>13} {r['sigterm_s']:>7}"
        )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(rows, indent=2) + "\n")
    assert all(r["last_good_kept"] for r in rows)
