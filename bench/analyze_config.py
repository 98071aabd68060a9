"""Benchmark: what ``meshfed analyze`` / ``/debug/analyze`` costs at mesh sizes (not a test).

For N services (each with E endpoints, half v1, half v2) and R route rules (a 90/10 split
between v1 and v2; every tenth rule names a missing service, every seventh a subset no endpoint
carries), times :func:`meshfed.pilot.analysis.analyze` over the snapshot and catalog, best of
``--repeat`` runs (bounded), and counts the findings.

Run: ``.venv/bin/python bench/analyze_config.py [--services 1000 --endpoints 10 --rules 1000]``.
Prints figures and writes ``bench/results/analyze_config.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshfed.pilot.analysis import Catalog, analyze
from meshfed.pilot.config.model import RouteRule, ServiceRef, WeightedDestination
from meshfed.pilot.config.store import ConfigSnapshot
from meshfed.registry.model import Endpoint, Port, Service


def world(services: int, endpoints: int, rules: int) -> tuple[ConfigSnapshot, Catalog]:
    hosts = [f"s{i}.default.svc.cluster.local" for i in range(services)]
    svc = [Service(h, ports=[Port(80, "http")]) for h in hosts]
    eps = {
        h: [
            Endpoint(f"127.{i % 250}.{j // 250}.{j % 250 + 1}", labels={"version": f"v{j % 2 + 1}"},
                     registry="r")
            for j in range(endpoints)
        ]
        for i, h in enumerate(hosts)
    }  # fmt: skip
    made = []
    for r in range(rules):
        name = f"missing{r}" if r % 10 == 0 else f"s{r % services}"
        second = "v9" if r % 7 == 0 else "v2"
        made.append(
            RouteRule(
                f"r{r}", "default", "bench.yaml", ServiceRef(name=name), precedence=r,
                route=(WeightedDestination({"version": "v1"}, 90),
                       WeightedDestination({"version": second}, 10)),
            )
        )  # fmt: skip
    return ConfigSnapshot.of(made), Catalog.of(svc, eps)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    snapshot, catalog = world(args.services, args.endpoints, args.rules)
    times = []
    findings: list = []
    deadline = time.monotonic() + 120  # bounded in time as well as count
    for _ in range(max(1, min(args.repeat, 20))):
        started = time.perf_counter()
        findings = analyze(snapshot, catalog)
        times.append(time.perf_counter() - started)
        if time.monotonic() > deadline:
            break
    by_code = dict(sorted(Counter(f.code for f in findings).items()))
    result = {
        "services": args.services,
        "endpoints_per_service": args.endpoints,
        "rules": args.rules,
        "analyze_best_ms": round(min(times) * 1000, 2),
        "analyze_runs": len(times),
        "findings": by_code,
        "python": platform.python_version(),
    }
    print(json.dumps(result, indent=2))
    out = Path(__file__).resolve().parent / "results" / "analyze_config.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
