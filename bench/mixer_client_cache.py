"""Benchmark: the node-local Mixer client's Check cache on bookinfo-shaped traffic.

A stream of 5,000 requests shaped like bookinfo's (productpage -> reviews and details,
reviews v2/v3 -> ratings; four users, one of them anonymous; varying paths; a fresh
``x-request-id`` on every request) goes through :class:`CheckCache`. Every miss is answered by
meshfed's real Mixer runtime in-process (``Dispatcher.check``: enrichment from the registry,
rule selection, the built-in ``denier`` and ``listchecker`` handlers), and its referenced
attributes go through the wire form (the server's ``encode_refs``, then
``referenced_from_proto``), exactly as the client will receive them. The rules reference
``destination.service``, ``source.labels["app"]`` (derived by Mixer from ``source.ip``, so the
client keys on the address) and ``request.headers["x-user"]``; ``context.protocol`` is always
referenced. The clock advances 1 ms per request (1,000 requests/s), so ``valid_duration`` and
``valid_use_count`` act as they would on a live proxy.

Figures: hit ratio; answers differing from an uncached Mixer's verdict for the same request
(must be 0); lookup cost (hit and miss) and insert cost, p50 / mean in microseconds;
the cost of decoding the references; and, for comparison, the hit ratio of Istio 0.2's keying
(the whole ``request.headers`` map in the key), measured on the same stream.

Writes ``bench/results/mixer_client_cache.json``. Run: ``python bench/mixer_client_cache.py``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import prometheus_client  # noqa: E402

from meshfed.core.resources import load_documents  # noqa: E402
from meshfed.mixer.attributes.dictionary import GLOBAL_WORDS  # noqa: E402
from meshfed.mixer.attributes.enrich import Enricher  # noqa: E402
from meshfed.mixer.config.compile import compile_config  # noqa: E402
from meshfed.mixer.config.parse import parsers  # noqa: E402
from meshfed.mixer.config.store import default_attributes_path  # noqa: E402
from meshfed.mixer.config.store import parse_documents as mixer_documents  # noqa: E402
from meshfed.mixer.handlers.api import load_kinds  # noqa: E402
from meshfed.mixer.runtime.dispatch import Dispatcher, Options  # noqa: E402
from meshfed.mixer.runtime.snapshot import build_snapshot  # noqa: E402
from meshfed.mixer.server import encode_refs  # noqa: E402
from meshfed.nodeagent.mixerclient.check_cache import (  # noqa: E402
    CheckCache,
    Referenced,
    referenced_from_proto,
)
from meshfed.registry.aggregate import AggregateRegistry  # noqa: E402
from meshfed.registry.model import Endpoint, Port, Protocol, Service  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "mixer_client_cache.json"
REQUESTS = 5000
GOAL_HIT_RATIO = 0.90


def svc(name: str) -> str:
    return f"{name}.default.svc.cluster.local"


# (service, version, address) of bookinfo's pods
PODS = [
    ("productpage", "v1", "10.1.0.10"),
    ("reviews", "v1", "10.1.0.21"),
    ("reviews", "v2", "10.1.0.22"),
    ("reviews", "v3", "10.1.0.23"),
    ("ratings", "v1", "10.1.0.30"),
    ("details", "v1", "10.1.0.40"),
]
USERS = ["jason", "alice", "bob", None]  # None: no x-user header (not signed in)

CONFIG = f"""
apiVersion: config.istio.io/v1alpha2
kind: denier
metadata: {{name: no-ratings, namespace: istio-system}}
spec:
  status: {{code: 7, message: ratings is not for productpage}}
---
apiVersion: config.istio.io/v1alpha2
kind: checknothing
metadata: {{name: nothing, namespace: istio-system}}
spec: {{}}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {{name: ratings-callers, namespace: istio-system}}
spec:
  match: destination.service == "{svc("ratings")}" && source.labels["app"] == "productpage"
  actions:
  - handler: no-ratings.denier
    instances: [nothing.checknothing]
---
apiVersion: config.istio.io/v1alpha2
kind: listchecker
metadata: {{name: users, namespace: istio-system}}
spec:
  overrides: [jason, alice, bob]
  blacklist: false
---
apiVersion: config.istio.io/v1alpha2
kind: listentry
metadata: {{name: user, namespace: istio-system}}
spec:
  value: request.headers["x-user"] | "anonymous"
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {{name: reviews-users, namespace: istio-system}}
spec:
  match: destination.service == "{svc("reviews")}"
  actions:
  - handler: users.listchecker
    instances: [user.listentry]
"""


def aggregate() -> AggregateRegistry:
    agg = AggregateRegistry()
    names = sorted({p[0] for p in PODS})
    agg.add_member("k8s", "static").replace(
        [Service(svc(n), "default", (Port(9080, "http", Protocol.HTTP),)) for n in names],
        {
            svc(n): [Endpoint(ip, labels={"app": s, "version": v}) for s, v, ip in PODS if s == n]
            for n in names
        },
    )
    return agg


def ip(service: str, version: str | None = None) -> bytes:
    for s, v, address in PODS:
        if s == service and (version is None or v == version):
            return ipaddress.ip_address(address).packed
    raise KeyError(service)


def stream(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """What a sidecar's client sends for each inbound request (no derived attributes)."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        user = rnd.choice(USERS)
        hop = rnd.random()
        if hop < 0.4:
            src, dst, path = ip("productpage"), "reviews", f"/reviews/{rnd.randrange(20)}"
        elif hop < 0.7:
            src, dst, path = ip("productpage"), "details", f"/details/{rnd.randrange(20)}"
        elif hop < 0.97:
            src = ip("reviews", rnd.choice(["v2", "v3"]))
            dst, path = "ratings", f"/ratings/{rnd.randrange(20)}"
        else:  # a productpage bug calling ratings directly: denied
            src, dst, path = ip("productpage"), "ratings", "/ratings/0"
        headers = {
            "x-request-id": f"{i:08x}-{rnd.getrandbits(32):08x}",
            ":authority": f"{dst}:9080",
            "user-agent": "Mozilla/5.0",
        }
        if user:
            headers["x-user"] = user
        out.append(
            {
                "context.protocol": "http",
                "source.ip": src,
                "destination.service": svc(dst),
                "destination.ip": ip(dst),
                "request.path": path,
                "request.method": "GET",
                "request.headers": headers,
            }
        )
    return out


def whole_maps(ref: Referenced) -> Referenced:
    """Istio 0.2's keying: a map attribute is keyed by the whole map, whichever of its keys
    were referenced (present or absent ones: both depend on the whole map)."""
    return Referenced(
        exact=[r.name for r in (*ref.exact, *ref.absence) if r.map_key is not None]
        + [r for r in ref.exact if r.map_key is None],
        absence=[r for r in ref.absence if r.map_key is None],
        uncacheable=ref.uncacheable,
    )


def us(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "p50_us": round(s[len(s) // 2] * 1e6, 2),
        "p99_us": round(s[int(len(s) * 0.99)] * 1e6, 2),
        "mean_us": round(statistics.fmean(s) * 1e6, 2),
        "calls": len(s),
    }


async def dispatcher(tmp: Path) -> Dispatcher:
    path = tmp / "rules.yaml"
    path.write_text(CONFIG)
    kinds = load_kinds()
    table = parsers(kinds)
    objects = []
    for p in (default_attributes_path(), path):
        docs, errors = load_documents(p)
        objs, errs = mixer_documents(docs, table)
        assert not errors and not errs, errors + errs
        objects.extend(objs)
    config = compile_config(objects, kinds)
    assert not config.errors, config.errors
    snap = await build_snapshot(config, kinds, None, prometheus_client.CollectorRegistry(), 1)
    assert not snap.problems, snap.problems
    return Dispatcher(snap, Enricher(aggregate()), Options())


async def run(
    d: Dispatcher, bags: list[dict[str, Any]], truth: list[int], istio_02_keys: bool
) -> dict[str, Any]:
    now = [0.0]
    cache: CheckCache[tuple[int, str]] = CheckCache(10_000, clock=lambda: now[0])
    hit_t: list[float] = []
    miss_t: list[float] = []
    insert_t: list[float] = []
    decode_t: list[float] = []
    codes: dict[int, int] = {}
    wrong = 0
    for i, bag in enumerate(bags):
        now[0] = i / 1000
        t = time.perf_counter()
        hit = cache.lookup(bag)
        dt_lookup = time.perf_counter() - t
        if hit is not None:
            hit_t.append(dt_lookup)
            code = hit.answer[0]
        else:
            miss_t.append(dt_lookup)
            outcome = await d.check(bag)
            wire = encode_refs(outcome.refs, len(GLOBAL_WORDS))
            t = time.perf_counter()
            referenced = referenced_from_proto(wire)
            decode_t.append(time.perf_counter() - t)
            if istio_02_keys:
                referenced = whole_maps(referenced)
            t = time.perf_counter()
            cache.insert(
                bag,
                referenced,
                (outcome.code, outcome.message),
                outcome.valid_duration.total_seconds(),
                outcome.valid_use_count,
            )
            insert_t.append(time.perf_counter() - t)
            code = outcome.code
        codes[code] = codes.get(code, 0) + 1
        wrong += code != truth[i]
    stats = cache.stats
    return {
        "requests": len(bags),
        "hits": stats.hits,
        "misses": stats.misses,
        "hit_ratio": round(stats.hit_ratio, 4),
        "entries": len(cache),
        "shapes": cache.shapes,
        "expired": stats.expired,
        "evictions": stats.evictions,
        "uncacheable": stats.uncacheable,
        "answers_by_code": {str(k): v for k, v in sorted(codes.items())},
        "answers_differing_from_uncached_mixer": wrong,
        "lookup_hit": us(hit_t) if hit_t else None,
        "lookup_miss": us(miss_t) if miss_t else None,
        "insert": us(insert_t) if insert_t else None,
        "referenced_from_proto": us(decode_t) if decode_t else None,
    }


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        d = await dispatcher(Path(tmp_name))
        bags = stream(REQUESTS)
        warm = stream(500, seed=1)
        # every request's verdict straight from Mixer: a cached answer must be the same
        truth = [(await d.check(bag)).code for bag in bags]
        await run(d, warm, [(await d.check(bag)).code for bag in warm], False)
        ours = await run(d, bags, truth, False)
        istio = await run(d, bags, truth, True)
    assert ours["answers_differing_from_uncached_mixer"] == 0, ours
    results = {
        "stream": (
            f"{REQUESTS} bookinfo-shaped requests, 1,000/s, fresh x-request-id each; rules on "
            'destination.service, source.labels["app"], request.headers["x-user"]'
        ),
        "meshfed": ours,
        "istio_0_2_keying_whole_map": {
            k: istio[k]
            for k in (
                "hits",
                "misses",
                "hit_ratio",
                "entries",
                "answers_differing_from_uncached_mixer",
            )
        },
        "goal_hit_ratio": GOAL_HIT_RATIO,
        "goal_met": ours["hit_ratio"] >= GOAL_HIT_RATIO,
        "python": sys.version.split()[0],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
