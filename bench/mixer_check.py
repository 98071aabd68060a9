"""Benchmark: Mixer's Check latency, Report throughput and config compile time.

Figures (one run, this machine):

1. In-process Check (``Dispatcher.check``: enrichment lookup, rule selection, instance building,
   handler calls, verdict) with 100 rules over 10 handlers; each request matches 10 of the rules
   (so 10 handler calls), p50/p99 per call. Istio published ~263 us/op for its Go Mixer's
   in-process check (2018 benchmarks); the figure is quoted beside ours, not re-measured.
2. The same Check over gRPC on loopback (one channel, sequential calls): p50/p99 round trip.
3. Report: Istio 0.2's default telemetry config (4 metrics + the access log), a 1,000-entry
   delta-encoded batch of 12 attributes per entry, decoded and dispatched to no-op handlers:
   attributes per second, in-process and over gRPC.
4. Config compile time for 1,000 rules (parse + type-check + compile, and the whole snapshot
   build with handlers).

Writes ``bench/results/mixer_check.json``. Run: ``python bench/mixer_check.py``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from meshfed.core.resources import FieldReader, load_documents, parse_documents  # noqa: E402
from meshfed.mixer.api.service import MixerStub  # noqa: E402
from meshfed.mixer.api.v1 import check_pb2  # noqa: E402
from meshfed.mixer.attributes import codec  # noqa: E402
from meshfed.mixer.attributes.enrich import Enricher  # noqa: E402
from meshfed.mixer.component import Mixer  # noqa: E402
from meshfed.mixer.config.compile import compile_config  # noqa: E402
from meshfed.mixer.config.parse import parsers  # noqa: E402
from meshfed.mixer.config.store import default_attributes_path  # noqa: E402
from meshfed.mixer.config.store import parse_documents as mixer_documents  # noqa: E402
from meshfed.mixer.handlers.api import CheckResult, HandlerEnv  # noqa: E402
from meshfed.mixer.runtime.dispatch import Dispatcher, Options  # noqa: E402
from meshfed.mixer.runtime.snapshot import build_snapshot  # noqa: E402
from meshfed.mixer.settings import MixerSettings  # noqa: E402
from meshfed.registry.aggregate import AggregateRegistry  # noqa: E402
from meshfed.registry.model import Endpoint, Port, Protocol, Service  # noqa: E402

ISTIO_GO_US = 263.0
REVIEWS = "reviews.default.svc.cluster.local"
RESULTS = ROOT / "bench" / "results" / "mixer_check.json"
TELEMETRY = ROOT / "mixer" / "tests" / "data" / "istio-0.2-telemetry.yaml"


class Allow:
    """A handler that answers at once (measures Mixer, not a backend)."""

    async def check(self, instance: Any) -> CheckResult:
        return CheckResult()

    async def report(self, instances: Sequence[Any]) -> None:
        return None

    async def quota(self, instance: Any, request: Any) -> Any:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class AllowKind:
    templates = frozenset({"checknothing", "listentry", "logentry", "metric", "reportnothing"})

    def __init__(self, name: str) -> None:
        self.name = name

    def parse_params(self, reader: FieldReader) -> dict[str, Any]:
        return dict(reader.data)

    async def build(self, params: Any, env: HandlerEnv) -> Allow:
        return Allow()


KINDS = {"allow": AllowKind("allow"), "prometheus": AllowKind("prometheus"),
         "stdio": AllowKind("stdio")}  # fmt: skip


def rules_yaml(n_rules: int, n_handlers: int) -> str:
    docs = []
    for h in range(n_handlers):
        docs.append(
            f"apiVersion: config.istio.io/v1alpha2\nkind: allow\n"
            f"metadata: {{name: h{h}, namespace: istio-system}}\nspec:\n  id: {h}\n"
        )
    docs.append(
        "apiVersion: config.istio.io/v1alpha2\nkind: listentry\n"
        "metadata: {name: app, namespace: istio-system}\n"
        'spec:\n  value: source.labels["app"] | "unknown"\n'
    )
    for i in range(n_rules):
        # request i % 10 == k matches rules with i % 10 == k: 10 of every 100
        match = (
            f'(request.headers["x-group"] | "none") == "g{i % 10}" && '
            f'(destination.service | "") != "never-{i}" && request.method == "GET"'
        )
        docs.append(
            "apiVersion: config.istio.io/v1alpha2\nkind: rule\n"
            f"metadata: {{name: r{i}, namespace: istio-system}}\n"
            f"spec:\n  match: '{match}'\n  actions:\n"
            f"  - handler: h{i % n_handlers}.allow\n    instances: [app.listentry]\n"
        )
    return "---\n".join(docs)


def load(text: str, tmp: Path) -> list[Any]:
    path = tmp / "config.yaml"
    path.write_text(text)
    table = parsers(KINDS)
    objects = []
    for p in (default_attributes_path(), path):
        docs, errors = load_documents(p)
        objs, errs = mixer_documents(docs, table)
        assert not errors and not errs, errors + errs
        objects.extend(objs)
    return objects


def percentiles(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {
        "p50_us": round(samples[len(samples) // 2] * 1e6, 1),
        "p99_us": round(samples[int(len(samples) * 0.99)] * 1e6, 1),
        "mean_us": round(statistics.fmean(samples) * 1e6, 1),
        "calls": len(samples),
    }


def request_bag(i: int) -> dict[str, Any]:
    return {
        "source.ip": ipaddress.ip_address("10.1.0.7").packed,
        "destination.service": "ratings.default.svc.cluster.local",
        "request.method": "GET",
        "request.path": f"/ratings/{i}",
        "request.headers": {"x-group": f"g{i % 10}", ":authority": "ratings"},
    }


def aggregate() -> AggregateRegistry:
    agg = AggregateRegistry()
    agg.add_member("vms", "static").replace(
        [
            Service(
                "reviews.default.svc.cluster.local", "default", (Port(80, "http", Protocol.HTTP),)
            )
        ],
        {REVIEWS: [Endpoint("10.1.0.7", labels={"app": "reviews"})]},
    )
    return agg


async def bench_check(tmp: Path, calls: int) -> dict[str, Any]:
    objects = load(rules_yaml(100, 10), tmp)
    config = compile_config(objects, KINDS)
    assert not config.errors, config.errors
    snap = await build_snapshot(config, KINDS, None, None, 1)  # type: ignore[arg-type]
    dispatcher = Dispatcher(snap, Enricher(aggregate()), Options())
    out = await dispatcher.check(request_bag(0))
    assert out.code == 0 and len(snap.handlers) == 10
    for i in range(500):  # warm up
        await dispatcher.check(request_bag(i))
    samples = []
    bags = [request_bag(i) for i in range(calls)]
    for bag in bags:
        t = time.perf_counter()
        await dispatcher.check(bag)
        samples.append(time.perf_counter() - t)
    return percentiles(samples)


async def bench_grpc(tmp: Path, calls: int) -> tuple[dict[str, Any], dict[str, Any]]:
    folder = tmp / "grpc"
    folder.mkdir()
    (folder / "rules.yaml").write_text(rules_yaml(100, 10))
    (folder / "telemetry.yaml").write_text(TELEMETRY.read_text())
    mixer = Mixer(
        MixerSettings(enabled=True, listen="127.0.0.1:0", config_paths=(str(folder),)),
        kinds=KINDS,
        index=aggregate(),
    )
    await mixer.start()
    assert not mixer.problems(), mixer.problems()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{mixer.port}")
    stub = MixerStub(channel)
    requests = [
        check_pb2.CheckRequest(attributes=codec.encode(request_bag(i))) for i in range(calls)
    ]
    for r in requests[:300]:
        await stub.Check(r)
    samples = []
    for r in requests:
        t = time.perf_counter()
        reply = await stub.Check(r)
        samples.append(time.perf_counter() - t)
    assert reply.precondition.status.code == 0
    batch = report_batch()
    (request,) = codec.encode_batches(batch)
    await stub.Report(request)
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        await stub.Report(request)
        rounds.append(time.perf_counter() - t)
    await channel.close()
    await mixer.stop()
    attrs_total = sum(len(b) for b in batch)
    best = min(rounds)
    return percentiles(samples), {
        "batch_entries": len(batch),
        "attributes": attrs_total,
        "request_bytes": request.ByteSize(),
        "best_seconds": round(best, 4),
        "attributes_per_second": round(attrs_total / best),
        "entries_per_second": round(len(batch) / best),
    }


def report_batch() -> list[dict[str, Any]]:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return [
        {
            "source.ip": ipaddress.ip_address("10.1.0.7").packed,
            "destination.ip": ipaddress.ip_address(f"10.2.{i % 200}.9").packed,
            "source.service": "reviews.default.svc.cluster.local",
            "destination.service": f"ratings-{i % 7}.default.svc.cluster.local",
            "destination.labels": {"version": f"v{i % 3}"},
            "request.path": f"/r/{i}",
            "request.method": "GET",
            "request.size": i,
            "request.time": start + dt.timedelta(milliseconds=i),
            "response.code": 200 if i % 10 else 503,
            "response.size": 2 * i,
            "response.duration": dt.timedelta(milliseconds=i % 50),
        }
        for i in range(1000)
    ]


async def bench_report(tmp: Path) -> dict[str, Any]:
    objects = load(TELEMETRY.read_text(), tmp)
    config = compile_config(objects, KINDS)
    assert not config.errors and len(config.rules) == 3, config.errors
    snap = await build_snapshot(config, KINDS, None, None, 1)  # type: ignore[arg-type]
    dispatcher = Dispatcher(snap, Enricher(aggregate()), Options())
    batch = report_batch()
    (request,) = codec.encode_batches(batch)
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        bags = list(codec.decode_batch(request))
        assert await dispatcher.report(bags) == 0
        rounds.append(time.perf_counter() - t)
    attrs_total = sum(len(b) for b in batch)
    best = min(rounds)
    return {
        "batch_entries": len(batch),
        "attributes": attrs_total,
        "best_seconds": round(best, 4),
        "attributes_per_second": round(attrs_total / best),
        "entries_per_second": round(len(batch) / best),
    }


async def bench_compile(tmp: Path) -> dict[str, Any]:
    text = rules_yaml(1000, 10)
    path = tmp / "big.yaml"
    path.write_text(text)
    t = time.perf_counter()
    docs, errors = load_documents(path)
    t_yaml = time.perf_counter() - t
    t = time.perf_counter()
    defaults, _ = load_documents(default_attributes_path())
    objects, errs = mixer_documents([*defaults, *docs], parsers(KINDS))
    t_parse = time.perf_counter() - t
    t = time.perf_counter()
    config = compile_config(objects, KINDS)
    t_compile = time.perf_counter() - t
    t = time.perf_counter()
    await build_snapshot(config, KINDS, None, None, 1)  # type: ignore[arg-type]
    t_snapshot = time.perf_counter() - t
    assert len(config.rules) == 1000 and not config.errors and not errors and not errs
    return {
        "rules": 1000,
        "yaml_seconds": round(t_yaml, 3),
        "parse_seconds": round(t_parse, 3),
        "compile_seconds": round(t_compile, 3),
        "snapshot_seconds": round(t_snapshot, 4),
        "total_seconds": round(t_yaml + t_parse + t_compile + t_snapshot, 3),
    }


async def main() -> None:
    import tempfile

    assert parse_documents  # the shared resource reader is what the store uses
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        check = await bench_check(tmp, 5000)
        grpc_check, grpc_report = await bench_grpc(tmp, 2000)
        report = await bench_report(tmp)
        compiled = await bench_compile(tmp)
    results = {
        "check_in_process_100_rules_10_handlers": check,
        "istio_go_mixer_in_process_us_per_op": ISTIO_GO_US,
        "check_grpc_round_trip": grpc_check,
        "report_in_process": report,
        "report_grpc": grpc_report,
        "compile_1000_rules": compiled,
        "python": sys.version.split()[0],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
