"""The hostile corpus against ``meshfed validate`` and against a live hub (``meshfed up``).

``corpus/`` (written by :mod:`integration.hostile.generate`, see ``INDEX.tsv``) holds files
every reader must refuse. Two promises are checked for each of them:

- ``meshfed validate FILE`` exits 1 within :data:`VALIDATE_SECONDS` and :data:`VALIDATE_MAX_RSS`,
  prints one clean line per error (file first, no traceback, bounded length) and, for a file
  made by changing one field, names that field (or the structure the field is checked in);
- a running hub whose watched folder holds a good config, given each file in turn, keeps its
  last good state (``/debug/registryz`` services and endpoints, ``/debug/configz`` objects),
  answers ``/healthz/ready`` within 1 s throughout, stays under :data:`HUB_MAX_RSS`, still
  applies a good edit afterwards, and stops on SIGTERM.

Mesh config files are also given to ``meshfed up -c FILE``, which must refuse each one the
way ``validate`` does: exit 1 with clean lines, never start, never crash.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration.hostile.seeds import SEEDS, replaced
from integration.peers.ports import free_ports

HERE = Path(__file__).parent
CORPUS = HERE / "corpus"
ROOT = HERE.parents[1]
VALIDATE_SECONDS = 15.0  # per file, interpreter start included (about 0.7 s of it)
VALIDATE_MAX_RSS = 200 * 1024 * 1024  # measured peak: 53-104 MiB
HUB_MAX_RSS = 200 * 1024 * 1024  # measured peak over the corpus: 94 MiB (idle hub: ~85)
HEALTH_BUDGET = 1.0
MAX_LINE = 1200


def corpus() -> list[tuple[str, str, str]]:
    rows = (CORPUS / "INDEX.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [tuple(row.split("\t")) for row in rows]  # type: ignore[misc]


def test_corpus_is_large_and_covers_every_kind():
    rows = corpus()
    assert len(rows) >= 300
    classes = {cls for _, cls, _ in rows}
    for kind in SEEDS:
        assert f"field-{kind}" in classes, kind
    for family in ("yaml-encoding", "yaml-aliases", "yaml-depth", "yaml-duplicate", "shape"):
        assert family in classes
    assert all((CORPUS / name).is_file() for name, _, _ in rows)


def _run(args: list[str], timeout: float) -> tuple[int, str, str, float, int]:
    """(exit code, stdout, stderr, seconds, peak RSS bytes) of a child process.

    The peak is the command's own, measured by :mod:`integration.hostile.peak_rss`: a child
    forked from this (large, late in a run) test process would report this process's peak.
    """
    start = time.monotonic()
    with (
        tempfile.TemporaryFile() as out_file,
        tempfile.TemporaryFile() as err_file,
        tempfile.NamedTemporaryFile() as report,
    ):
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "peak_rss.py"), report.name, "--", *args],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out_file,
            stderr=err_file,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=timeout)
            killed = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            killed = True
        seconds = time.monotonic() - start
        out_file.seek(0)
        err_file.seek(0)
        out = out_file.read().decode(errors="replace")
        err = err_file.read().decode(errors="replace")
        peak = Path(report.name).read_text(encoding="utf-8").strip()
    if killed:
        return -9, out, err, timeout, 0
    return proc.returncode, out, err, seconds, int(peak)


def _clean_lines(path: Path, stderr: str) -> list[str]:
    lines = [line for line in stderr.splitlines() if line]
    assert "Traceback" not in stderr, stderr[-2000:]
    errors = []
    for line in lines:
        assert len(line) <= MAX_LINE, line[:300]
        if line.startswith(("warning: ", "WARNING: All log messages")):
            continue
        if re.fullmatch(r"\d+ error\(s\) in \d+ file\(s\)", line):
            continue
        assert line.startswith(f"{path}: "), line
        errors.append(line)
    assert errors, stderr
    return errors


# One interpreter per file: the corpus's ~750 files take longer than the default test timeout.
@pytest.mark.timeout(1200)
def test_validate_refuses_every_hostile_file_cleanly():
    rows = corpus()
    validate = [sys.executable, "-m", "meshfed.cli", "validate"]

    def check(row: tuple[str, str, str]) -> tuple[str, float, int]:
        name, cls, field = row
        path = CORPUS / name
        code, out, err, seconds, rss = _run([*validate, str(path)], VALIDATE_SECONDS)
        assert code == 1, (name, code, out, err[-2000:])
        lines = _clean_lines(path, err)
        if cls.startswith(("field-", "removed-", "unknown-")) and field:
            fields = [line[len(str(path)) + 2 :] for line in lines]
            parent = field.rsplit(".", 1)[0] if cls.startswith("unknown-") else field
            assert any(_names_related(f, parent) for f in fields), (name, field, fields)
        return name, seconds, rss

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(check, rows))
    slowest = max(results, key=lambda r: r[1])
    peak = max(r[2] for r in results)
    print(
        f"validate: {len(results)} files, slowest {slowest[0]} {slowest[1]:.2f}s, "
        f"peak RSS {peak / 2**20:.0f} MiB"
    )
    assert slowest[1] < VALIDATE_SECONDS
    assert peak < VALIDATE_MAX_RSS


def _names_related(line: str, field: str) -> bool:
    # "<obj>: <field>: <message>": the field sits between the object and the message
    from integration.hostile.seeds import related
    from meshfed.core.resources import ConfigError

    parts = line.split(": ")
    candidates = [p for p in parts[1:-1]] or [""]
    return any(related(ConfigError("f", "o", c, "m"), field) for c in candidates)


# -- the live hub -------------------------------------------------------------------------

GOOD = [
    replaced("ServiceEntry", ("metadata", "name"), "ledger"),
    SEEDS["WorkloadEntry"],
    SEEDS["RouteRule"],
    SEEDS["DestinationPolicy"],
    SEEDS["EgressRule"],
]


def _get(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


def _state(base: str) -> tuple[Any, Any]:
    """What the hub serves from its config: services with endpoints, and routing objects."""
    registry = _get(f"{base}/debug/registryz")
    services = sorted(
        (s["hostname"], sorted((e["address"], json.dumps(e["ports"])) for e in s["endpoints"]))
        for s in registry["services"]
    )
    objects: dict[str, list[str]] = {}
    for store in _get(f"{base}/debug/configz")["stores"]:
        for key in ("route_rules", "destination_policies", "egress_rules", "gateways"):
            objects.setdefault(key, []).extend(store.get(key, []))
    return services, objects


def _errors(base: str) -> str:
    """Every error both stores report now, as one text to search for file names."""
    found: list[str] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "errors" and isinstance(value, list):
                    found.extend(map(str, value))
                else:
                    collect(value)
        elif isinstance(node, list):
            for item in node:
                collect(item)

    collect(_get(f"{base}/debug/registryz"))
    collect(_get(f"{base}/debug/configz"))
    return "\n".join(found)


class Watch(threading.Thread):
    """Polls the hub's health every 100 ms and its RSS, recording the worst seen."""

    def __init__(self, base: str, pid: int) -> None:
        super().__init__(daemon=True)
        self.base, self.pid = base, pid
        self.worst = 0.0
        self.failures: list[str] = []
        self.peak_rss = 0
        self.samples = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                with urllib.request.urlopen(f"{self.base}/healthz/ready", timeout=2) as r:
                    r.read()
            except Exception as exc:
                self.failures.append(f"{time.strftime('%X')} {exc}")
            self.worst = max(self.worst, time.monotonic() - start)
            self.peak_rss = max(self.peak_rss, _rss(self.pid))
            self.samples += 1
            self.stop.wait(0.1)


def _rss(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(found.group(1)) * 1024 if found else 0


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    watched = tmp_path / "watched"
    watched.mkdir()
    (watched / "good.yaml").write_text(yaml.safe_dump_all(GOOD), encoding="utf-8")
    monitoring, discovery = free_ports(2)
    mesh = replaced(
        "MeshConfig",
        ("spec", "listen"),
        {
            "monitoring": f"127.0.0.1:{monitoring}",
            "discovery": f"127.0.0.1:{discovery}",
        },
    )
    mesh["spec"]["registries"] = [{"name": "files", "kind": "static", "paths": [str(watched)]}]
    mesh["spec"]["configPaths"] = [str(watched)]
    (tmp_path / "mesh.yaml").write_text(yaml.safe_dump(mesh), encoding="utf-8")
    log = open(tmp_path / "hub.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meshfed.cli",
            "--log-level",
            "WARNING",
            "up",
            "-c",
            str(tmp_path / "mesh.yaml"),
        ],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{monitoring}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except Exception:
                pass
            assert proc.poll() is None, (tmp_path / "hub.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "hub not ready in 30 s"
            time.sleep(0.2)
        yield base, watched, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        print((tmp_path / "hub.log").read_text(errors="replace")[-1500:])


def _wait(predicate: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_live_hub_keeps_last_good_state(hub: tuple[str, Path, subprocess.Popen[bytes]]):
    base, watched, proc = hub
    baseline = _state(base)
    assert baseline[0] and baseline[1]["route_rules"], baseline
    watch = Watch(base, proc.pid)
    watch.start()
    rows = [r for r in corpus() if not r[1].endswith("MeshConfig")]  # not read by stores
    mixed = [r for r in rows if r[1] == "shape-mixed"]
    rows = [r for r in rows if r not in mixed]
    unreported = []
    batch_size = 12
    try:
        for first in range(0, len(rows), batch_size):
            batch = rows[first : first + batch_size]
            names = [f"hostile-{name}" for name, _, _ in batch]
            for (name, _, _), target in zip(batch, names, strict=True):
                shutil.copyfile(CORPUS / name, watched / target)
            _wait(lambda names=names: all(n in _errors(base) for n in names), 10)
            text = _errors(base)
            unreported += [n for n in names if n not in text]
            assert _state(base) == baseline, batch
            for target in names:
                (watched / target).unlink()
            assert _wait(lambda names=names: not any(n in _errors(base) for n in names), 10), batch
        # A file with good documents around a bad one: the good ones apply, the bad one is
        # reported, and removing the file restores the state before it.
        for name, _, _ in mixed:
            target = watched / f"hostile-{name}"
            shutil.copyfile(CORPUS / name, target)
            assert _wait(lambda target=target: target.name in _errors(base), 10), name
            services, objects = _state(base)
            assert services == baseline[0]
            assert all(set(v) <= set(objects[k]) for k, v in baseline[1].items()), name
            target.unlink()
            assert _wait(lambda: _state(base) == baseline, 10), name
        # Files refused by what they are: a FIFO, /dev/zero, a directory, a dangling link.
        made = []
        for i, make in enumerate((_fifo, _dev_zero, _directory, _dangling)):
            target = watched / f"hostile-fs-{i}.yaml"
            make(target)
            made.append(target)
        assert _wait(lambda: sum(t.name in _errors(base) for t in made) >= 3, 10), _errors(base)
        assert _state(base) == baseline
        for target in made:
            target.rmdir() if target.is_dir() and not target.is_symlink() else target.unlink()
        # The good file itself replaced by hostile content keeps its objects in force.
        good = (watched / "good.yaml").read_bytes()
        # The first file of each of these classes (names shift when the corpus is regenerated).
        firsts = {}
        for file, cls, _ in corpus():
            firsts.setdefault(cls, file)
        for name in (firsts[c] for c in ("yaml-aliases", "yaml-encoding", "yaml-duplicate")):
            (watched / "good.yaml").write_bytes((CORPUS / name).read_bytes())
            _wait(lambda: "good.yaml" in _errors(base), 10)
            assert _state(base) == baseline, name
        (watched / "good.yaml").write_bytes(good)
        assert _wait(lambda: "good.yaml" not in _errors(base), 10)
        # Both stores still apply edits: a new service and a new rule arrive.
        extra = [
            replaced("ServiceEntry", ("metadata", "name"), "audit") | {},
            replaced("RouteRule", ("metadata", "name"), "audit-rule"),
        ]
        extra[0]["spec"] = dict(extra[0]["spec"], hosts=["audit.default.svc.cluster.local"])
        extra[1]["spec"] = dict(extra[1]["spec"], destination={"name": "audit"})
        (watched / "extra.yaml").write_text(yaml.safe_dump_all(extra), encoding="utf-8")
        assert _wait(
            lambda: any(h == "audit.default.svc.cluster.local" for h, _ in _state(base)[0]), 10
        )
        assert _wait(lambda: "default/audit-rule" in json.dumps(_state(base)[1]), 10)
    finally:
        watch.stop.set()
        watch.join()
    print(
        f"live hub: {len(rows)} files, {watch.samples} health probes, worst "
        f"{watch.worst * 1000:.0f} ms, peak RSS {watch.peak_rss / 2**20:.0f} MiB, "
        f"unreported: {len(unreported)}"
    )
    assert not watch.failures, watch.failures[:5]
    assert watch.worst < HEALTH_BUDGET
    assert watch.peak_rss < HUB_MAX_RSS
    # A file the hub does not report is one no store reads: an unknown kind (validate's own
    # error), or an Ingress of a class this mesh does not serve, which validate given the
    # same mesh config skips too.
    from meshfed.config import load_mesh_config
    from meshfed.validate import validate_files

    mesh = load_mesh_config(watched.parent / "mesh.yaml")
    for target in unreported:
        name = target.removeprefix("hostile-")
        if "unknown kind" in " ".join(str(e) for e in validate_files([CORPUS / name])[1]):
            continue
        assert not validate_files([CORPUS / name], mesh)[1], name
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0


@pytest.mark.parametrize("name", [n for n, c, _ in corpus() if c.endswith("MeshConfig")][:40])
def test_up_refuses_what_validate_refuses(name: str):
    path = CORPUS / name
    code, _, err, _, _ = _run(
        [sys.executable, "-m", "meshfed.cli", "up", "-c", str(path)], VALIDATE_SECONDS
    )
    assert code == 1, (name, code, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    assert any(line.startswith(("error: ", f"{path}: ")) for line in err.splitlines()), err


# -- files refused by what they are -------------------------------------------------------


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _dev_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _directory(path: Path) -> None:
    path.mkdir()


def _dangling(path: Path) -> None:
    path.symlink_to(path.parent / "missing.yaml")


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(_fifo, id="fifo"),
        pytest.param(_dev_zero, id="dev-zero"),
        pytest.param(_directory, id="directory"),
        pytest.param(_dangling, id="dangling-symlink"),
    ],
)
def test_validate_refuses_files_that_are_not_config(tmp_path: Path, make: Any):
    path = tmp_path / "x.yaml"
    make(path)
    code, _, err, seconds, _ = _run(
        [
            sys.executable,
            "-c",
            "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)); "
            "from meshfed.cli import main; sys.exit(main(sys.argv[1:]))",
            "validate",
            str(path),
        ],
        VALIDATE_SECONDS,
    )
    assert code == 1, (code, err[-2000:])
    _clean_lines(path, err)
    assert seconds < VALIDATE_SECONDS
