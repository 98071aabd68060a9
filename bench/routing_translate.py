"""Benchmark: what routing config costs Pilot (not a test).

For N services x M endpoints (half v1, half v2) and R route rules (a 90/10 split, a header
match with a fault, for R/2 services each) plus a per-version DestinationPolicy per ruled
service, measures:

1. the registry translation without rules (``ConfigCache.rebuild``), then with rules
   (``set_config``: index resolution, subset clusters with filtered assignments, policies);
2. one proxy view with the route table (cold: builds RDS; warm: cached);
3. a one-rule edit: stage + switch + settle (what the server pushes in three steps), with
   how many clusters each step touched;
4. sizes: clusters, assignments, serialized route table bytes.

Run: ``.venv/bin/python bench/routing_translate.py [--services 1000 --endpoints 10
--rules 500]``. Prints figures and writes ``bench/results/routing_translate.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshfed.pilot import xds_types as T
from meshfed.pilot.cache import ConfigCache
from meshfed.pilot.config.model import (
    CircuitBreaker,
    DestinationPolicy,
    Fault,
    Match,
    MatchKind,
    RouteRule,
    ServiceRef,
    StringMatch,
    WeightedDestination,
)
from meshfed.pilot.config.store import ConfigSnapshot
from meshfed.pilot.mtls_plugin import MtlsPlugin
from meshfed.pilot.node import ProxyNode
from meshfed.registry.aggregate import AggregateRegistry
from meshfed.registry.model import Endpoint, Port, Protocol, Service


def registry(services: int, endpoints: int) -> AggregateRegistry:
    agg = AggregateRegistry()
    member = agg.add_member("bench")
    for i in range(services):
        host = f"svc{i}.default.svc.cluster.local"
        eps = [
            Endpoint(f"10.{i // 250}.{i % 250}.{j}", labels={"version": "v1" if j % 2 else "v2"})
            for j in range(endpoints)
        ]
        member.put_service(Service(host, ports=(Port(80, "http", Protocol.HTTP),)), eps)
    member.mark_synced()
    return agg


def objects(rules: int, split_v1: int = 90) -> list:
    out: list = []
    for i in range(rules // 2):
        dest = ServiceRef(name=f"svc{i}")
        out.append(
            RouteRule(
                f"split{i}",
                "default",
                "bench.yaml",
                dest,
                1,
                route=(
                    WeightedDestination({"version": "v1"}, split_v1),
                    WeightedDestination({"version": "v2"}, 100 - split_v1),
                ),
                timeout=2.0,
            )
        )
        out.append(
            RouteRule(
                f"user{i}",
                "default",
                "bench.yaml",
                dest,
                2,
                match=Match(headers=(("x-user", StringMatch(MatchKind.EXACT, "jason")),)),
                route=(WeightedDestination({"version": "v2"}),),
                fault=Fault(delay_percent=10, fixed_delay=0.5),
            )
        )
        out.append(
            DestinationPolicy(
                f"cb{i}",
                "default",
                "bench.yaml",
                ServiceRef(name=f"svc{i}", labels={"version": "v2"}),
                circuit_breaker=CircuitBreaker(max_connections=100, http_consecutive_errors=5),
            )
        )
    return out


def timed(fn):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=10)
    parser.add_argument("--rules", type=int, default=500)
    args = parser.parse_args()
    cache = ConfigCache(registry(args.services, args.endpoints), [MtlsPlugin()])  # as the hub
    _, plain = timed(cache.rebuild)
    plain_clusters = len(cache.clusters())
    snapshot = ConfigSnapshot.of(objects(args.rules))
    change, with_rules = timed(lambda: cache.set_config(snapshot))
    node = ProxyNode(id="bench", ip="127.0.0.2")
    view, cold_view = timed(lambda: cache.view(node))
    _, warm_view = timed(lambda: cache.view(node))
    route_bytes = sum(len(r.body.value) for r in view.get(T.ROUTE).values())
    edited = ConfigSnapshot.of(objects(args.rules, split_v1=50))
    staged, stage_s = timed(lambda: cache.stage_config(edited))
    switched, switch_s = timed(lambda: cache.set_config(edited))
    settled, settle_s = timed(cache.settle_config)
    _, edit_view = timed(lambda: cache.view(node))
    results = {
        "services": args.services,
        "endpoints_per_service": args.endpoints,
        "route_rules": len(snapshot.route_rules),
        "destination_policies": len(snapshot.destination_policies),
        "rebuild_without_rules_s": round(plain, 4),
        "set_config_s": round(with_rules, 4),
        "clusters_without_rules": plain_clusters,
        "clusters_with_rules": len(view.get(T.CLUSTER)),
        "assignments_with_rules": len(view.get(T.ENDPOINT)),
        "clusters_changed_by_set_config": len(change.cluster_names),
        "view_cold_s": round(cold_view, 4),
        "view_warm_s": round(warm_view, 6),
        "route_table_bytes": route_bytes,
        "edit_stage_s": round(stage_s, 4),
        "edit_switch_s": round(switch_s, 4),
        "edit_settle_s": round(settle_s, 4) if settled is not None else None,
        "edit_view_s": round(edit_view, 4),
        "edit_clusters_changed": [
            len(staged.cluster_names),
            len(switched.cluster_names),
            len(settled.cluster_names) if settled is not None else 0,
        ],
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    for key, value in results.items():
        print(f"{key:32} {value}")
    out = Path(__file__).resolve().parent / "results" / "routing_translate.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
