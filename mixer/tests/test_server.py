"""The Mixer component over gRPC, with a client written against the protos: Check denied with
the right status and referenced attributes, quota, dedup, fail policy, dictionary handling, a
1,000-entry delta-encoded Report, and Istio 0.2's telemetry config."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from meshfed.mixer.api.service import MixerStub
from meshfed.mixer.api.v1 import check_pb2
from meshfed.mixer.attributes import codec
from meshfed.mixer.attributes.dictionary import GLOBAL_WORDS
from meshfed.mixer.component import Mixer
from meshfed.mixer.settings import MixerSettings
from meshfed.mixer.templates import LogEntry, Metric
from meshfed.registry.aggregate import AggregateRegistry
from meshfed.registry.model import Endpoint, Port, Protocol, Service

from .testkinds import kinds

DATA = Path(__file__).parent / "data"

DENY = """\
apiVersion: config.istio.io/v1alpha2
kind: testdeny
metadata: {name: denyall, namespace: istio-system}
spec:
  status: {code: 7, message: Not allowed}
  validSeconds: 30
---
apiVersion: config.istio.io/v1alpha2
kind: checknothing
metadata: {name: denyrequest, namespace: istio-system}
spec:
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: mixerdenysome, namespace: istio-system}
spec:
  match: request.headers["clnt"] == "abc"
  actions:
  - handler: denyall.testdeny
    instances: [denyrequest.checknothing]
---
apiVersion: config.istio.io/v1alpha2
kind: testrecord
metadata: {name: quotas, namespace: istio-system}
spec: {budget: 3}
---
apiVersion: config.istio.io/v1alpha2
kind: quota
metadata: {name: requestcount, namespace: istio-system}
spec:
  dimensions:
    source: source.labels["app"] | source.service | "unknown"
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: quota, namespace: istio-system}
spec:
  actions:
  - handler: quotas.testrecord
    instances: [requestcount.quota]
"""


async def start(tmp_path: Path, text: str, **settings) -> tuple[Mixer, grpc.aio.Channel]:
    (tmp_path / "mixer.yaml").write_text(text)
    mixer = Mixer(
        MixerSettings(
            enabled=True, listen="127.0.0.1:0", config_paths=(str(tmp_path),), **settings
        ),
        kinds=kinds(),
        index=AggregateRegistry(),
    )
    await mixer.start()
    return mixer, grpc.aio.insecure_channel(f"127.0.0.1:{mixer.port}")


def refs_of(ra: check_pb2.ReferencedAttributes) -> dict:
    def word(i: int) -> str:
        return ra.words[-i - 1] if i < 0 else GLOBAL_WORDS[i]

    out = {}
    for m in ra.attribute_matches:
        key = (word(m.name), word(m.map_key)) if m.map_key else word(m.name)
        out[key] = m.condition
    return out


async def test_check_denied_with_status_and_referenced_attributes(tmp_path):
    mixer, channel = await start(tmp_path, DENY)
    try:
        stub = MixerStub(channel)
        denied = await stub.Check(
            check_pb2.CheckRequest(
                attributes=codec.encode({"request.headers": {"clnt": "abc"}}),
                global_word_count=len(GLOBAL_WORDS),
            )
        )
        pre = denied.precondition
        assert pre.status.code == 7 and "Not allowed" in pre.status.message
        assert pre.valid_duration.ToTimedelta() == dt.timedelta(seconds=30)
        assert refs_of(pre.referenced_attributes) == {
            ("request.headers", "clnt"): 2,  # EXACT
            "context.protocol": 1,  # ABSENCE: the rule's protocol selector looked at it
        }

        allowed = await stub.Check(
            check_pb2.CheckRequest(attributes=codec.encode({"request.headers": {"clnt": "xyz"}}))
        )
        assert allowed.precondition.status.code == 0
        absent = await stub.Check(check_pb2.CheckRequest(attributes=codec.encode({})))
        assert absent.precondition.status.code == 0
        assert refs_of(absent.precondition.referenced_attributes) == {
            "request.headers": 1,
            "context.protocol": 1,
        }

        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service="istio.mixer.v1.Mixer"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await channel.close()
        await mixer.stop()


async def test_word_counts(tmp_path):
    mixer, channel = await start(tmp_path, DENY)
    try:
        stub = MixerStub(channel)
        # an older client (shorter dictionary): served, references encoded within its words
        short = codec.encode({"request.headers": {"clnt": "abc"}}, word_count=10)
        reply = await stub.Check(check_pb2.CheckRequest(attributes=short, global_word_count=10))
        ra = reply.precondition.referenced_attributes
        assert reply.precondition.status.code == 7
        assert all(m.name < 10 and m.map_key < 10 for m in ra.attribute_matches)
        assert "request.headers" in ra.words
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Check(check_pb2.CheckRequest(global_word_count=len(GLOBAL_WORDS) + 5))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "newer dictionary" in err.value.details()
    finally:
        await channel.close()
        await mixer.stop()


async def test_quota_and_deduplication(tmp_path):
    mixer, channel = await start(tmp_path, DENY)
    try:
        stub = MixerStub(channel)

        def ask(dedup: str, amount: int = 1) -> check_pb2.CheckRequest:
            request = check_pb2.CheckRequest(
                attributes=codec.encode({"source.service": "reviews"}), deduplication_id=dedup
            )
            request.quotas["requestcount"].amount = amount
            return request

        grants = [
            (await stub.Check(ask(f"id-{i}"))).quotas["requestcount"].granted_amount
            for i in range(5)
        ]
        assert grants == [1, 1, 1, 0, 0]  # the handler's budget is 3
        retried = await stub.Check(ask("id-0"))  # a retry: same answer, nothing allocated
        assert retried.quotas["requestcount"].granted_amount == 1
        (handler,) = [h for h in mixer.snapshot.handlers.values() if hasattr(h, "quotas")]
        assert len(handler.quotas) == 5
        instance, request = handler.quotas[0]
        assert instance.dimensions == {"source": "reviews"}
        assert request.deduplication_id == "id-0requestcount"
        # no id: the handler gets none (not the bare quota name, which every Check would share)
        await stub.Check(ask(""))
        assert handler.quotas[-1][1].deduplication_id == ""
        other = await stub.Check(ask("id-x").__class__(attributes=codec.encode({})))
        assert not other.quotas  # no quota asked, none answered
    finally:
        await channel.close()
        await mixer.stop()


FAILING = """\
apiVersion: config.istio.io/v1alpha2
kind: testfail
metadata: {name: broken, namespace: istio-system}
spec: {mode: MODE}
---
apiVersion: config.istio.io/v1alpha2
kind: checknothing
metadata: {name: any, namespace: istio-system}
spec:
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: guarded, namespace: istio-system}
spec:
  actions:
  - handler: broken.testfail
    instances: [any.checknothing]
"""


@pytest.mark.parametrize("mode", ["raise", "hang"])
@pytest.mark.parametrize("fail_open", [False, True])
async def test_fail_policy(tmp_path, mode, fail_open):
    mixer, channel = await start(
        tmp_path, FAILING.replace("MODE", mode), handler_timeout=0.2, fail_open=fail_open
    )
    try:
        reply = await MixerStub(channel).Check(check_pb2.CheckRequest())
        if fail_open:
            assert reply.precondition.status.code == 0
        else:
            assert reply.precondition.status.code == 14  # UNAVAILABLE: fail closed
            assert "broken.testfail.istio-system" in reply.precondition.status.message
            assert reply.precondition.valid_use_count == 0  # never cached
    finally:
        await channel.close()
        await mixer.stop()


def telemetry_with_test_kinds() -> str:
    """Istio 0.2's telemetry config as shipped; its prometheus and stdio handlers are served by
    a recording kind under those names (the real kinds are the handlers' package)."""
    return (DATA / "istio-0.2-telemetry.yaml").read_text()


async def test_report_batch_of_1000_reaches_handlers(tmp_path):
    text = telemetry_with_test_kinds()
    (tmp_path / "mixer.yaml").write_text(text)
    k = kinds()
    record = k["testrecord"]
    k["prometheus"] = type(record)(name="prometheus")
    k["stdio"] = type(record)(name="stdio")
    k["prometheus"].parse_params.__func__  # noqa: B018 - same parser: params are ignored
    mixer = Mixer(
        MixerSettings(enabled=True, listen="127.0.0.1:0", config_paths=(str(tmp_path),)),
        kinds=k,
        index=AggregateRegistry(),
    )
    await mixer.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{mixer.port}")
    try:
        assert mixer.problems() == []
        assert len(mixer.snapshot.config.rules) == 3
        start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        bags = [
            {
                "source.ip": ipaddress.ip_address("10.0.0.1").packed,
                "source.service": "reviews.default.svc.cluster.local",
                "destination.service": f"ratings-{i % 7}.default.svc.cluster.local",
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
        (request,) = codec.encode_batches(bags)
        assert len(request.attributes[1].strings) < 4  # delta-encoded
        await MixerStub(channel).Report(request)

        prom = next(h for h in k["prometheus"].built)
        stdio = next(h for h in k["stdio"].built)
        metrics = [m for batch in prom.reports for m in batch]
        logs = [e for batch in stdio.reports for e in batch]
        # HTTP traffic: promhttp's four metrics per entry, not promtcp's (istio-protocol: tcp)
        assert len(metrics) == 4000 and len(logs) == 1000
        counts = [m for m in metrics if m.name == "requestcount.metric.istio-system"]
        assert all(isinstance(m, Metric) and m.value == 1 for m in counts)
        assert sum(1 for m in counts if m.dimensions["response_code"] == 503) == 100
        sizes = [m.value for m in metrics if m.name == "requestsize.metric.istio-system"]
        assert sizes == list(range(1000))
        assert counts[3].dimensions["destination_service"] == "ratings-3.default.svc.cluster.local"
        assert counts[3].dimensions["source_version"] == "unknown"
        entry = logs[999]
        assert isinstance(entry, LogEntry)
        assert entry.timestamp == start + dt.timedelta(milliseconds=999)
        assert entry.variables["sourceIp"] == ipaddress.ip_address("10.0.0.1")
        assert entry.variables["destinationIp"] == ipaddress.ip_address("0.0.0.0")
        assert entry.variables["url"] == "/r/999" and entry.variables["requestSize"] == 999
        assert entry.variables["latency"] == dt.timedelta(milliseconds=999 % 50)
        assert entry.severity == "Default"
    finally:
        await channel.close()
        await mixer.stop()


async def test_bad_config_is_reported_and_last_good_keeps_serving(tmp_path):
    mixer, channel = await start(tmp_path, DENY)
    try:
        stub = MixerStub(channel)
        request = check_pb2.CheckRequest(
            attributes=codec.encode({"request.headers": {"clnt": "abc"}})
        )
        assert (await stub.Check(request)).precondition.status.code == 7
        old_handler = mixer.snapshot.handlers["denyall.testdeny.istio-system"]
        broken = DENY.replace(
            'match: request.headers["clnt"] == "abc"', "match: request.headrs == 3"
        ).replace("handler: quotas.testrecord", "handler: missing.testrecord")
        (tmp_path / "mixer.yaml").write_text(broken)
        await mixer.reload()
        problems = [str(p) for p in mixer.problems()]
        assert any(
            "rule istio-system/mixerdenysome: spec.match:" in p
            and "undeclared attribute 'request.headrs'" in p
            and "last good version is kept" in p
            for p in problems
        ), problems
        assert any(
            "rule istio-system/quota: spec.actions[0].handler: no handler "
            "missing.testrecord.istio-system" in p
            for p in problems
        ), problems
        assert (await stub.Check(request)).precondition.status.code == 7  # still enforced
        # unchanged handler params: the same handler object is kept
        assert mixer.snapshot.handlers["denyall.testdeny.istio-system"] is old_handler
        body = mixer.describe()
        assert body["problems"] and any(
            r["name"].startswith("mixerdenysome") for r in body["rules"]
        )

        (tmp_path / "mixer.yaml").write_text(DENY.replace("code: 7", "code: 16"))
        await mixer.reload()
        assert mixer.problems() == []
        assert (await stub.Check(request)).precondition.status.code == 16
        assert old_handler.closed  # its params changed: rebuilt, the old one closed
    finally:
        await channel.close()
        await mixer.stop()


async def test_in_flight_request_finishes_on_its_snapshot(tmp_path):
    mixer, channel = await start(tmp_path, FAILING.replace("MODE", "hang"), handler_timeout=1.0)
    try:
        await asyncio.sleep(0.5)  # let the file watcher's first load settle
        call = asyncio.ensure_future(MixerStub(channel).Check(check_pb2.CheckRequest()))
        await asyncio.sleep(0.2)
        old = mixer.snapshot
        assert old.in_flight == 1
        (tmp_path / "mixer.yaml").write_text(DENY)
        await mixer.reload()
        assert mixer.snapshot is not old
        reply = await call
        assert reply.precondition.status.code == 14  # judged by the old config's hung handler
        assert old.in_flight == 0
    finally:
        await channel.close()
        await mixer.stop()


async def test_enrichment_from_the_registry(tmp_path):
    rule = DENY.replace(
        'match: request.headers["clnt"] == "abc"', 'match: source.labels["app"] == "legacy"'
    )
    mixer, channel = await start(tmp_path, rule)
    try:
        aggregate = mixer.index
        member = aggregate.add_member("vms", "static")
        member.replace(
            [Service("legacy.vm.local", "vm", (Port(80, "http", Protocol.HTTP),))],
            {"legacy.vm.local": [Endpoint("10.9.0.5", labels={"app": "legacy"}, registry="vms")]},
        )
        stub = MixerStub(channel)
        ip = ipaddress.ip_address("10.9.0.5").packed
        reply = await stub.Check(check_pb2.CheckRequest(attributes=codec.encode({"source.ip": ip})))
        assert reply.precondition.status.code == 7
        assert refs_of(reply.precondition.referenced_attributes) == {
            "source.labels": 1,
            "source.ip": 2,
            "context.protocol": 1,
        }
        other = codec.encode({"source.ip": ipaddress.ip_address("10.9.0.6").packed})
        assert (
            await stub.Check(check_pb2.CheckRequest(attributes=other))
        ).precondition.status.code == 0
    finally:
        await channel.close()
        await mixer.stop()


async def test_bad_object_leaves_its_neighbours_applied(tmp_path):
    mixer, channel = await start(tmp_path, DENY)
    try:
        stub = MixerStub(channel)
        attributes = codec.encode({"request.headers": {"clnt": "abc"}})
        # the denier's params become invalid (its last good version must stay), and a new,
        # valid quota rule is added in the same file
        extra = DENY.split("---")[-1].replace("name: quota,", "name: quota2,")
        broken = DENY.replace("code: 7", "code: seven") + "---" + extra
        (tmp_path / "mixer.yaml").write_text(broken)
        await mixer.reload()
        problems = [str(p) for p in mixer.problems()]
        assert any(
            "testdeny istio-system/denyall: spec.status.code: expected an integer" in p
            for p in problems
        ), problems
        rules = [r.ref for r in mixer.snapshot.config.rules]
        assert "quota2.rule.istio-system" in rules  # the neighbour applied
        reply = await stub.Check(check_pb2.CheckRequest(attributes=attributes))
        assert reply.precondition.status.code == 7  # the denier's last good version
    finally:
        await channel.close()
        await mixer.stop()
