"""Benchmark: what enriching a request's attributes from the federated registry costs.

An aggregate of four registries (Kubernetes pods, Consul nodes, Eureka instances, VMs), 10,000
endpoints over 2,000 services, is asked who is behind a bag's ``source`` and ``destination``:
µs per bag (best of several windows) for

1. lookup by address (``source.ip`` / ``destination.ip``, the index Pilot shares);
2. lookup by uid (``source.uid`` / ``destination.uid`` as Istio 0.2's proxy sends them,
   ``kubernetes://<pod>.<namespace>``);
3. an address no registry knows (the miss path).

Also the cost of keeping the by-workload index: replacing one member's whole state.
Writes ``bench/results/mixer_enrich.json`` and prints the figures.
Run: ``python bench/mixer_enrich.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from meshfed.mixer.attributes.enrich import Enricher  # noqa: E402
from meshfed.registry.aggregate import AggregateRegistry  # noqa: E402
from meshfed.registry.model import Endpoint, Port, Protocol, Service  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "mixer_enrich.json"
KINDS = ("k8s", "consul", "eureka", "vms")


def build(services: int, per_service: int) -> tuple[AggregateRegistry, list, dict]:
    aggregate = AggregateRegistry()
    http = (Port(80, "http", Protocol.HTTP),)
    members = {kind: aggregate.add_member(kind, kind) for kind in KINDS}
    state: dict[str, tuple[list[Service], dict[str, list[Endpoint]]]] = {k: ([], {}) for k in KINDS}
    workloads = []
    n = 0
    for s in range(services):
        kind = KINDS[s % len(KINDS)]
        namespace = f"ns{s % 20}"
        host = f"svc{s}.{namespace}.svc.cluster.local"
        svcs, eps = state[kind]
        svcs.append(Service(host, namespace, http))
        eps[host] = []
        for _ in range(per_service):
            n += 1
            address = str(ipaddress.ip_address(0x0A000000 + n))
            name = f"svc{s}-{n}"
            eps[host].append(
                Endpoint(
                    address,
                    labels={"app": f"svc{s}", "version": f"v{n % 3}"},
                    identity=f"spiffe://cluster.local/ns/{namespace}/sa/svc{s}",
                    registry=kind,
                    workload=name,
                )
            )
            workloads.append((address, f"kubernetes://{name}.{namespace}"))
    for kind, member in members.items():
        svcs, eps = state[kind]
        member.replace(svcs, eps)
    return aggregate, workloads, state


def per_call(fn, bags: list, windows: int) -> float:
    best = float("inf")
    for _ in range(windows):
        started = time.perf_counter()
        for bag in bags:
            fn(bag)
        best = min(best, (time.perf_counter() - started) / len(bags))
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    services, per_service, calls, windows = (
        (200, 5, 2_000, 3) if args.quick else (2_000, 5, 20_000, 5)
    )
    aggregate, workloads, state = build(services, per_service)
    enricher = Enricher(aggregate)
    step = max(1, len(workloads) // calls)
    picked = workloads[::step][:calls]
    pairs = list(zip(picked, reversed(picked), strict=True))
    by_ip = [
        {
            "source.ip": ipaddress.ip_address(src[0]).packed,
            "destination.ip": ipaddress.ip_address(dst[0]).packed,
        }
        for src, dst in pairs
    ]
    by_uid = [{"source.uid": src[1], "destination.uid": dst[1]} for src, dst in pairs]
    miss = [{"source.ip": ipaddress.ip_address("192.0.2.1").packed} for _ in pairs]
    # every lookup must find (or, for the miss, not find) what it is meant to
    assert all("source.labels" in enricher.enrich(b) for b in by_ip[:100])
    assert all("source.labels" in enricher.enrich(b) for b in by_uid[:100])
    assert "source.labels" not in enricher.enrich(miss[0])

    figures = {
        "endpoints": len(workloads),
        "services": services,
        "registries": len(KINDS),
        "bags": len(pairs),
        "by_ip_us_per_bag": round(per_call(enricher.enrich, by_ip, windows), 2),
        "by_uid_us_per_bag": round(per_call(enricher.enrich, by_uid, windows), 2),
        "unknown_ip_us_per_bag": round(per_call(enricher.enrich, miss, windows), 2),
    }
    kind = KINDS[0]
    svcs, eps = state[kind]
    member = next(m for m in aggregate.members if m.name == kind)
    best = float("inf")
    for i in range(windows):
        relabelled = {
            h: [Endpoint(e.address, labels={**e.labels, "round": str(i)}, registry=kind,
                         identity=e.identity, workload=e.workload) for e in es]
            for h, es in eps.items()
        }  # fmt: skip
        started = time.perf_counter()
        member.replace(svcs, relabelled)
        best = min(best, time.perf_counter() - started)
    figures["replace_member_ms"] = round(best * 1e3, 2)
    figures["replace_member_endpoints"] = sum(len(es) for es in eps.values())
    if not args.quick:
        RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
