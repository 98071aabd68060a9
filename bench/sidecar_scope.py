"""Benchmark: how much a Sidecar resource cuts the config one proxy receives (not a test).

N services spread over K namespaces, M endpoints each (half HTTP, half TCP). One proxy in the
first namespace gets its view without a Sidecar, then with Istio's usual namespace-local one
(``egress: [{hosts: ["./*", "istio-system/*"]}]``). For each: the clusters, listeners, virtual
hosts and endpoint assignments it would be sent (assignments only for its clusters, which is
what Envoy asks EDS for), the serialized bytes per type and in total, and the view build time
(cold, then warm). The same view is what Pilot's ADS server sends, resource for resource.

Run: ``.venv/bin/python bench/sidecar_scope.py [--services 1000 --namespaces 20
--endpoints 4]``. Prints figures and writes ``bench/results/sidecar_scope.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envoy.config.route.v3 import route_pb2

from meshfed.pilot import xds_types as T
from meshfed.pilot.cache import ConfigCache
from meshfed.pilot.config.store import ConfigSnapshot, parse_config_file
from meshfed.pilot.mtls_plugin import MtlsPlugin
from meshfed.pilot.node import ProxyNode
from meshfed.registry.aggregate import AggregateRegistry
from meshfed.registry.model import Endpoint, Port, Protocol, Service

SIDECAR = """apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: ns0}
spec:
  egress: [{hosts: ["./*", "istio-system/*"]}]
"""


def registry(services: int, namespaces: int, endpoints: int) -> AggregateRegistry:
    agg = AggregateRegistry()
    member = agg.add_member("bench")
    svcs, eps = [], {}
    for i in range(services):
        ns = f"ns{i % namespaces}"
        host = f"svc{i}.{ns}.svc.cluster.local"
        port = (
            Port(80, "http", Protocol.HTTP) if i % 2 == 0 else Port(7000 + i, "tcp", Protocol.TCP)
        )
        svcs.append(Service(host, namespace=ns, ports=(port,)))
        eps[host] = [
            Endpoint(f"127.{1 + i // 250}.{i % 250}.{j + 1}", {port.name: 9080}, {"app": f"s{i}"})
            for j in range(endpoints)
        ]
    member.replace(svcs, eps)
    member.mark_synced()
    return agg


def measure(cache: ConfigCache, node: ProxyNode) -> dict[str, Any]:
    started = time.perf_counter()
    view = cache.view(node)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    cache.view(node)
    warm = time.perf_counter() - started
    clusters = view.get(T.CLUSTER)
    assignments = view.get(T.ENDPOINT)
    eds = {n: r for n, r in assignments.items() if n in clusters}
    vhosts = 0
    for res in view.get(T.ROUTE).values():
        config = route_pb2.RouteConfiguration()
        res.body.Unpack(config)
        vhosts += len(config.virtual_hosts)
    sizes = {
        "cds": sum(len(r.body.value) for r in clusters.values()),
        "lds": sum(len(r.body.value) for r in view.get(T.LISTENER).values()),
        "rds": sum(len(r.body.value) for r in view.get(T.ROUTE).values()),
        "eds": sum(len(r.body.value) for r in eds.values()),
    }
    return {
        "clusters": len(clusters),
        "listeners": len(view.get(T.LISTENER)),
        "virtual_hosts": vhosts,
        "assignments": len(eds),
        "bytes": sizes,
        "total_bytes": sum(sizes.values()),
        "view_cold_s": round(cold, 4),
        "view_warm_s": round(warm, 6),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--namespaces", type=int, default=20)
    parser.add_argument("--endpoints", type=int, default=4)
    args = parser.parse_args()
    cache = ConfigCache(registry(args.services, args.namespaces, args.endpoints), [MtlsPlugin()])
    cache.rebuild()
    node = ProxyNode(id="bench", ip="127.0.0.2", namespace="ns0")
    before = measure(cache, node)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sidecar.yaml"
        path.write_text(SIDECAR)
        objects, errors = parse_config_file(path)
        assert not errors and objects is not None, errors
    cache.set_config(ConfigSnapshot.of(objects))
    after = measure(cache, node)
    results = {
        "services": args.services,
        "namespaces": args.namespaces,
        "endpoints_per_service": args.endpoints,
        "sidecar_egress": ["./*", "istio-system/*"],
        "without_sidecar": before,
        "with_sidecar": after,
        "bytes_ratio": round(after["total_bytes"] / before["total_bytes"], 4),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    for label, m in (("without Sidecar", before), ("with Sidecar", after)):
        print(
            f"{label:16} clusters {m['clusters']:5}  listeners {m['listeners']:5}  "
            f"vhosts {m['virtual_hosts']:5}  assignments {m['assignments']:5}  "
            f"bytes {m['total_bytes']:9} {m['bytes']}  view {m['view_cold_s']} s cold, "
            f"{m['view_warm_s']} s warm"
        )
    print(f"bytes with / without: {results['bytes_ratio']}")
    out = Path(__file__).resolve().parent / "results" / "sidecar_scope.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
