"""Mixer over gRPC with the built-in handler kinds as installed (found through their entry
points, not the test kinds), configured by Istio 0.2's own YAML.

- a ``denier`` rule refuses the requests its match selects with its status, and the
  precondition lists what the match looked at; other requests pass; labels the rule reads are
  filled from the registry by address or by Istio's ``kubernetes://<pod>.<namespace>`` uid;
- a ``memquota`` of N per second grants exactly N of a burst of Checks, then N again a second
  later, and its per-destination override holds;
- Istio 0.2's default telemetry config, unedited, turns a 1,000-entry delta-encoded Report into
  the right ``istio_request_count`` samples on the hub's monitoring port (scraped over HTTP) and
  1,000 JSON access-log lines from ``stdio``.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import ipaddress
import json
import time
from pathlib import Path

import aiohttp
import grpc
from prometheus_client.parser import text_string_to_metric_families

from meshfed.config import MeshConfig
from meshfed.hub import Hub
from meshfed.mixer.api.service import MixerStub
from meshfed.mixer.api.v1 import check_pb2
from meshfed.mixer.attributes import codec
from meshfed.mixer.attributes.dictionary import GLOBAL_WORDS
from meshfed.mixer.component import Mixer
from meshfed.mixer.handlers import denier, memquota, prometheus, stdio
from meshfed.mixer.handlers.api import load_kinds
from meshfed.mixer.settings import MixerSettings
from meshfed.registry.aggregate import AggregateRegistry
from meshfed.registry.model import Endpoint, Port, Protocol, Service

from .test_server import refs_of

DATA = Path(__file__).parent / "data"
EXACT, ABSENCE = 2, 1

# Istio 0.2's testdata/config denier example, as written there.
DENY_SOME = """\
apiVersion: "config.istio.io/v1alpha2"
kind: denier
metadata:
  name: denyall
  namespace: istio-system
spec:
  status:
    code: 7
    message: Not allowed
---
apiVersion: "config.istio.io/v1alpha2"
kind: checknothing
metadata:
  name: denyrequest
  namespace: istio-system
spec:
---
apiVersion: "config.istio.io/v1alpha2"
kind: rule
metadata:
  name: mixerdenysome
  namespace: istio-system
spec:
  match: request.headers["clnt"] == "abc"
  actions:
  - handler: denyall.denier
    instances:
    - denyrequest.checknothing
"""

# Istio 0.2's bookinfo sample (samples/bookinfo/kube/mixer-rule-ratings-denial.yaml), in the
# namespace kubectl would have put it in: it applies to requests for services of ``default``.
DENY_REVIEWS_V3 = """\
apiVersion: "config.istio.io/v1alpha2"
kind: denier
metadata:
  name: handler
  namespace: default
spec:
  status:
    code: 7
    message: Not allowed
---
apiVersion: "config.istio.io/v1alpha2"
kind: checknothing
metadata:
  name: denyrequest
  namespace: default
spec:
---
apiVersion: "config.istio.io/v1alpha2"
kind: rule
metadata:
  name: denyreviewsv3
  namespace: default
spec:
  match: destination.labels["app"] == "ratings" && source.labels["app"]=="reviews" && source.labels["version"] == "v3"
  actions:
  - handler: handler.denier
    instances: [ denyrequest.checknothing ]
"""  # noqa: E501 - the sample's one-line match, as shipped

# Istio 0.2's bookinfo rate limit (samples/bookinfo/kube/mixer-rule-ratings-ratelimit.yaml)
# with its catch-all limit lowered to N so a test can exhaust it.
N = 5
RATE_LIMIT = f"""\
apiVersion: "config.istio.io/v1alpha2"
kind: memquota
metadata:
  name: handler
  namespace: istio-system
spec:
  quotas:
  - name: requestcount.quota.istio-system
    maxAmount: {N}
    validDuration: 1s
    # The first matching override is used.
    # An override value of 0 is not allowed.
    overrides:
    # The following override applies to 'ratings' when
    # the source is 'reviews'.
    - dimensions:
        destination: ratings
        source: reviews
      maxAmount: 1
      validDuration: 1s
---
apiVersion: "config.istio.io/v1alpha2"
kind: quota
metadata:
  name: requestcount
  namespace: istio-system
spec:
  dimensions:
    source: source.labels["app"] | source.service | "unknown"
    sourceVersion: source.labels["version"] | "unknown"
    destination: destination.labels["app"] | destination.service | "unknown"
    destinationVersion: destination.labels["version"] | "unknown"
---
apiVersion: "config.istio.io/v1alpha2"
kind: rule
metadata:
  name: quota
  namespace: istio-system
spec:
  actions:
  - handler: handler.memquota
    instances:
    - requestcount.quota
"""

REVIEWS_V3, RATINGS, PRODUCTPAGE = "10.70.0.3", "10.70.0.9", "10.70.0.1"


def bookinfo() -> AggregateRegistry:
    """Three workloads of the bookinfo sample in a static registry (addresses are data here)."""
    aggregate = AggregateRegistry()
    http = (Port(9080, "http", Protocol.HTTP),)
    member = aggregate.add_member("vms", "static")
    hosts = {
        "reviews.default.svc.cluster.local": (REVIEWS_V3, {"app": "reviews", "version": "v3"}),
        "ratings.default.svc.cluster.local": (RATINGS, {"app": "ratings", "version": "v1"}),
        "productpage.default.svc.cluster.local": (PRODUCTPAGE, {"app": "productpage"}),
    }
    member.replace(
        [Service(host, "default", http) for host in hosts],
        {
            host: [
                Endpoint(ip, labels=labels, registry="vms", workload=f"{labels['app']}-{ip[-1]}")
            ]
            for host, (ip, labels) in hosts.items()
        },
    )
    return aggregate


async def start(tmp_path: Path, text: str, index=None) -> tuple[Mixer, grpc.aio.Channel]:
    (tmp_path / "mixer.yaml").write_text(text)
    mixer = Mixer(
        MixerSettings(enabled=True, listen="127.0.0.1:0", config_paths=(str(tmp_path),)),
        index=index if index is not None else AggregateRegistry(),
    )
    await mixer.start()
    return mixer, grpc.aio.insecure_channel(f"127.0.0.1:{mixer.port}")


def ips(**sides: str) -> dict:
    return {f"{side}.ip": ipaddress.ip_address(ip).packed for side, ip in sides.items()}


def test_the_kinds_are_the_installed_built_ins():
    kinds = load_kinds()
    assert kinds["denier"] is denier.KIND and kinds["memquota"] is memquota.KIND
    assert kinds["prometheus"] is prometheus.KIND and kinds["stdio"] is stdio.KIND


async def test_denier_rule_from_istio_testdata(tmp_path):
    mixer, channel = await start(tmp_path, DENY_SOME)
    try:
        assert mixer.problems() == []
        assert isinstance(mixer.snapshot.handlers["denyall.denier.istio-system"], denier.Denier)
        stub = MixerStub(channel)
        denied = await stub.Check(
            check_pb2.CheckRequest(
                attributes=codec.encode({"request.headers": {"clnt": "abc"}}),
                global_word_count=len(GLOBAL_WORDS),
            )
        )
        pre = denied.precondition
        assert pre.status.code == 7  # PERMISSION_DENIED, as configured
        assert pre.status.message == "denyall.denier.istio-system: Not allowed"
        # the denier's own validity (Istio's defaults: 1000 s / 10,000 uses)
        assert pre.valid_duration.ToTimedelta() == dt.timedelta(seconds=1000)
        assert pre.valid_use_count == 10_000
        assert refs_of(pre.referenced_attributes) == {
            ("request.headers", "clnt"): EXACT,
            "context.protocol": ABSENCE,
        }
        allowed = await stub.Check(
            check_pb2.CheckRequest(attributes=codec.encode({"request.headers": {"clnt": "xyz"}}))
        )
        assert allowed.precondition.status.code == 0
        assert refs_of(allowed.precondition.referenced_attributes) == {
            ("request.headers", "clnt"): EXACT,
            "context.protocol": ABSENCE,
        }
    finally:
        await channel.close()
        await mixer.stop()


async def test_denier_rule_on_enriched_labels_from_the_bookinfo_sample(tmp_path):
    mixer, channel = await start(tmp_path, DENY_REVIEWS_V3, bookinfo())
    try:
        assert mixer.problems() == []
        stub = MixerStub(channel)

        async def check(**sides: str) -> check_pb2.CheckResponse:
            return await stub.Check(check_pb2.CheckRequest(attributes=codec.encode(ips(**sides))))

        denied = (await check(source=REVIEWS_V3, destination=RATINGS)).precondition
        assert denied.status.code == 7
        assert "Not allowed" in denied.status.message
        # everything the rule looked at was derived from the two addresses: the client cache
        # must key on those
        assert refs_of(denied.referenced_attributes) == {
            "source.ip": EXACT,
            "destination.ip": EXACT,
            "source.labels": ABSENCE,
            "destination.labels": ABSENCE,
            "destination.namespace": ABSENCE,
            "context.protocol": ABSENCE,
        }
        assert (await check(source=PRODUCTPAGE, destination=RATINGS)).precondition.status.code == 0
        assert (
            await check(source=REVIEWS_V3, destination=PRODUCTPAGE)
        ).precondition.status.code == 0
        # an address the registry does not know: no labels, the rule's match cannot hold
        assert (await check(source="10.70.9.9", destination=RATINGS)).precondition.status.code == 0
    finally:
        await channel.close()
        await mixer.stop()


async def test_denier_rule_on_labels_found_by_uid(tmp_path):
    """Istio 0.2's proxy names workloads by ``source.uid`` / ``destination.uid``
    (``kubernetes://<pod>.<namespace>``): the same sample rule holds with no address sent."""
    mixer, channel = await start(tmp_path, DENY_REVIEWS_V3, bookinfo())
    try:
        stub = MixerStub(channel)

        async def check(**uids: str) -> check_pb2.PreCondition:
            bag = {f"{side}.uid": uid for side, uid in uids.items()}
            reply = await stub.Check(check_pb2.CheckRequest(attributes=codec.encode(bag)))
            return reply.precondition

        denied = await check(
            source="kubernetes://reviews-3.default", destination="kubernetes://ratings-9.default"
        )
        assert denied.status.code == 7
        assert refs_of(denied.referenced_attributes) == {
            "source.uid": EXACT,
            "destination.uid": EXACT,
            "source.ip": ABSENCE,  # had it been sent, it would have been used instead
            "destination.ip": ABSENCE,
            "source.labels": ABSENCE,
            "destination.labels": ABSENCE,
            "destination.namespace": ABSENCE,
            "context.protocol": ABSENCE,
        }
        # the uid Mixer itself derives (scheme: the registry) names the same workload
        again = await check(source="vms://reviews-3.default", destination="vms://ratings-9.default")
        assert again.status.code == 7
        allowed = await check(
            source="kubernetes://productpage-1.default", destination="vms://ratings-9.default"
        )
        assert allowed.status.code == 0
        for unknown in ("kubernetes://reviews-3.other", "kubernetes://nobody.default", "reviews"):
            pre = await check(source=unknown, destination="kubernetes://ratings-9.default")
            assert pre.status.code == 0, unknown
        # what the uid adds to the bag: the address too, and an address sent wins over a uid
        bag = mixer.dispatcher.enricher.enrich({"source.uid": "kubernetes://reviews-3.default"})
        assert bag["source.ip"] == ipaddress.ip_address(REVIEWS_V3)
        assert bag["source.name"] == "reviews-3" and bag["source.namespace"] == "default"
        assert bag["source.uid"] == "kubernetes://reviews-3.default"  # sent: kept
        both = mixer.dispatcher.enricher.enrich(
            {**ips(source=PRODUCTPAGE), "source.uid": "kubernetes://reviews-3.default"}
        )
        assert both["source.labels"] == {"app": "productpage"}
    finally:
        await channel.close()
        await mixer.stop()


async def test_memquota_of_n_per_second_grants_exactly_n(tmp_path):
    mixer, channel = await start(tmp_path, RATE_LIMIT, bookinfo())
    try:
        assert mixer.problems() == []
        stub = MixerStub(channel)

        def ask(source: str, destination: str, amount: int = 1) -> check_pb2.CheckRequest:
            request = check_pb2.CheckRequest(
                attributes=codec.encode(ips(source=source, destination=destination))
            )
            request.quotas["requestcount"].amount = amount
            return request

        async def burst(source: str, destination: str, count: int) -> list[int]:
            started = time.monotonic()
            replies = await asyncio.gather(
                *(stub.Check(ask(source, destination)) for _ in range(count))
            )
            # the limit is per rolling second: a burst longer than that proves nothing
            assert time.monotonic() - started < 0.9, "the burst outlasted the window"
            assert all(r.precondition.status.code == 0 for r in replies)
            return [r.quotas["requestcount"].granted_amount for r in replies]

        first = await burst(PRODUCTPAGE, RATINGS, 3 * N)
        assert sorted(first) == [0] * (2 * N) + [1] * N
        # the override (destination ratings from reviews): 1 per second
        assert sum(await burst(REVIEWS_V3, RATINGS, 4)) == 1
        # another dimension set counts on its own
        assert sum(await burst(PRODUCTPAGE, REVIEWS_V3, 2 * N)) == N
        reply = await stub.Check(ask(PRODUCTPAGE, RATINGS))
        quota = reply.quotas["requestcount"]
        assert quota.granted_amount == 0
        assert refs_of(quota.referenced_attributes)["source.ip"] == EXACT

        await asyncio.sleep(1.1)  # the window has rolled past the first burst
        assert sum(await burst(PRODUCTPAGE, RATINGS, 3 * N)) == N
        granted = await stub.Check(ask(PRODUCTPAGE, "10.70.9.9"))
        assert granted.quotas["requestcount"].granted_amount == 1
        assert granted.quotas["requestcount"].valid_duration.ToTimedelta() == dt.timedelta(
            seconds=1
        )
    finally:
        await channel.close()
        await mixer.stop()


async def test_istio_telemetry_report_with_real_prometheus_and_stdio(tmp_path, capsys):
    # Istio 0.2's config as shipped: stdio writes to stderr (its default stream)
    (tmp_path / "mixer.yaml").write_text((DATA / "istio-0.2-telemetry.yaml").read_text())
    mixer = Mixer(MixerSettings(enabled=True, listen="127.0.0.1:0", config_paths=(str(tmp_path),)))
    hub = Hub(MeshConfig(monitoring_address="127.0.0.1:0"), [mixer])
    await hub.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{mixer.port}")
    try:
        assert mixer.problems() == []
        handlers = mixer.snapshot.handlers
        assert isinstance(handlers["handler.prometheus.istio-system"], prometheus.Prometheus)
        writer = handlers["handler.stdio.istio-system"]
        assert isinstance(writer, stdio.Stdio)
        start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        bags = [
            {
                "source.ip": ipaddress.ip_address("10.0.0.1").packed,
                "destination.ip": ipaddress.ip_address(f"10.0.1.{i % 7}").packed,
                "source.service": "reviews.default.svc.cluster.local",
                "source.labels": {"app": "reviews", "version": f"v{1 + i % 3}"},
                "destination.service": f"ratings-{i % 7}.default.svc.cluster.local",
                "destination.labels": {"app": "ratings"},
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
        assert len(request.attributes) == 1000
        assert len(request.attributes[1].strings) < 6  # delta-encoded: only what changed
        await MixerStub(channel).Report(request)
        await writer.flush()

        url = f"http://127.0.0.1:{hub.monitoring_port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            assert resp.status == 200
            text = await resp.text()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        names = ("source_service", "source_version", "destination_service")
        names += ("destination_version", "response_code")
        counted = {
            tuple(s.labels[n] for n in names): s.value
            for s in families["istio_request_count"].samples
            if s.name == "istio_request_count_total"
        }
        want = collections.Counter(
            (
                "reviews.default.svc.cluster.local",
                f"v{1 + i % 3}",
                f"ratings-{i % 7}.default.svc.cluster.local",
                "unknown",  # destination.labels has no "version"
                "200" if i % 10 else "503",
            )
            for i in range(1000)
        )
        assert counted == {k: float(v) for k, v in want.items()}
        assert sum(counted.values()) == 1000
        sizes = families["istio_request_size"].samples
        assert sum(s.value for s in sizes if s.name == "istio_request_size_sum") == sum(range(1000))
        assert sum(s.value for s in sizes if s.name == "istio_request_size_count") == 1000
        # TCP metrics: the promtcp rule serves only context.protocol == "tcp"
        assert not [s for s in families["istio_tcp_bytes_sent"].samples if s.value]
        assert "meshfed_mixer_report_bags_total" in text

        lines = [
            json.loads(line) for line in capsys.readouterr().err.splitlines() if line[:1] == "{"
        ]
        access = [e for e in lines if e.get("instance") == "accesslog.logentry.istio-system"]
        assert len(access) == 1000
        assert [e["url"] for e in access] == [f"/r/{i}" for i in range(1000)]
        last = access[999]
        assert last["level"] == "info" and last["time"] == "2026-01-01T00:00:00.999000Z"
        assert last["sourceIp"] == "10.0.0.1" and last["destinationIp"] == "10.0.1.5"
        assert last["responseCode"] == 200 and last["requestSize"] == 999
        assert sum(1 for e in access if e["responseCode"] == 503) == 100
    finally:
        await channel.close()
        await hub.stop()
