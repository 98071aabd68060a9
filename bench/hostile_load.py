"""What hostile config costs: the loader on an alias bomb, validate over the hostile corpus.

Prints and writes ``bench/results/hostile_load.json``: for a 1.3 kB "billion laughs" document,
the time and peak memory of ``load_documents`` (refused by the alias budget before anything is
built); for the committed corpus (``integration/hostile/corpus``), the time per file of
``validate_files`` in one process, and the slowest file.

Run: ``.venv/bin/python -m bench.hostile_load``.
"""

from __future__ import annotations

import json
import logging
import resource
import tempfile
import time
from pathlib import Path

from meshfed.core.resources import load_documents
from meshfed.validate import validate_files

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "integration" / "hostile" / "corpus"
RESULTS = ROOT / "bench" / "results" / "hostile_load.json"


def billion_laughs() -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    head = "apiVersion: config.istio.io/v1alpha2\nkind: RouteRule\nmetadata: {name: lol}\n"
    return head + "spec:\n" + "".join(f"  {line}\n" for line in lines)


def main() -> None:
    logging.disable(logging.CRITICAL)
    with tempfile.TemporaryDirectory() as tmp:
        bomb = Path(tmp) / "bomb.yaml"
        bomb.write_text(billion_laughs())
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        _, errors = load_documents(bomb)
        bomb_s = time.perf_counter() - start
        bomb_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
        assert errors, "the bomb was accepted"
    files = sorted(p for p in CORPUS.glob("*.yaml"))
    timings = []
    for path in files:
        start = time.perf_counter()
        validate_files([path])
        timings.append((time.perf_counter() - start, path.name))
    total = sum(t for t, _ in timings)
    slowest = max(timings)
    result = {
        "bomb_bytes": len(billion_laughs()),
        "bomb_load_ms": round(bomb_s * 1000, 2),
        "bomb_extra_rss_kib": bomb_rss_kib,
        "corpus_files": len(files),
        "corpus_total_s": round(total, 3),
        "corpus_mean_ms": round(total / len(files) * 1000, 2),
        "corpus_slowest": {"file": slowest[1], "ms": round(slowest[0] * 1000, 2)},
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(result, indent=2))
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
