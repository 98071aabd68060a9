"""The Check cache fed by meshfed's own Mixer runtime (in-process, no server).

References come from real rules compiled from YAML, through the server's wire encoding, so the
keying is checked against what Mixer actually reports: map keys from ``request.headers``,
``source.labels`` derived by Mixer from ``source.ip``, and ``context.protocol``.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import prometheus_client
import pytest

from meshfed.core.resources import load_documents
from meshfed.mixer.api.v1 import check_pb2
from meshfed.mixer.attributes.dictionary import GLOBAL_WORDS
from meshfed.mixer.attributes.enrich import Enricher
from meshfed.mixer.config.compile import compile_config
from meshfed.mixer.config.parse import parsers
from meshfed.mixer.config.store import default_attributes_path
from meshfed.mixer.config.store import parse_documents as mixer_documents
from meshfed.mixer.handlers.api import load_kinds
from meshfed.mixer.runtime.dispatch import Dispatcher, Options
from meshfed.mixer.runtime.snapshot import build_snapshot
from meshfed.mixer.server import encode_refs
from meshfed.nodeagent.mixerclient.check_cache import CheckCache, referenced_from_proto
from meshfed.registry.aggregate import AggregateRegistry
from meshfed.registry.model import Endpoint, Port, Protocol, Service

REVIEWS = "reviews.default.svc.cluster.local"
RATINGS = "ratings.default.svc.cluster.local"
PRODUCTPAGE_IP = ipaddress.ip_address("10.1.0.10").packed
REVIEWS_IP = ipaddress.ip_address("10.1.0.22").packed

CONFIG = f"""
apiVersion: config.istio.io/v1alpha2
kind: denier
metadata: {{name: deny, namespace: istio-system}}
spec: {{status: {{code: 7, message: not for you}}}}
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
  match: destination.service == "{RATINGS}" && source.labels["app"] == "productpage"
  actions: [{{handler: deny.denier, instances: [nothing.checknothing]}}]
---
apiVersion: config.istio.io/v1alpha2
kind: listchecker
metadata: {{name: users, namespace: istio-system}}
spec: {{overrides: [jason], blacklist: false}}
---
apiVersion: config.istio.io/v1alpha2
kind: listentry
metadata: {{name: user, namespace: istio-system}}
spec: {{value: 'request.headers["x-user"] | "anonymous"'}}
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {{name: reviews-users, namespace: istio-system}}
spec:
  match: destination.service == "{REVIEWS}"
  actions: [{{handler: users.listchecker, instances: [user.listentry]}}]
"""


@pytest.fixture
async def mixer(tmp_path: Path) -> Dispatcher:
    path = tmp_path / "rules.yaml"
    path.write_text(CONFIG)
    kinds = load_kinds()
    objects: list[Any] = []
    for p in (default_attributes_path(), path):
        docs, errors = load_documents(p)
        objs, errs = mixer_documents(docs, parsers(kinds))
        assert not errors and not errs
        objects.extend(objs)
    config = compile_config(objects, kinds)
    assert not config.errors
    snap = await build_snapshot(config, kinds, None, prometheus_client.CollectorRegistry(), 1)
    agg = AggregateRegistry()
    agg.add_member("k8s", "static").replace(
        [Service(h, "default", (Port(9080, "http", Protocol.HTTP),)) for h in (REVIEWS, RATINGS)],
        {
            REVIEWS: [Endpoint("10.1.0.22", labels={"app": "reviews"})],
            RATINGS: [Endpoint("10.1.0.30", labels={"app": "ratings"})],
        },
    )
    # productpage is registered too (by address), so Mixer can derive its labels
    agg.add_member("vm", "static").replace(
        [Service("productpage.default.svc.cluster.local", "default", ())],
        {
            "productpage.default.svc.cluster.local": [
                Endpoint("10.1.0.10", labels={"app": "productpage"})
            ]
        },
    )
    return Dispatcher(snap, Enricher(agg), Options())


class Client:
    """The cache used as the node-local client will: lookup, else ask Mixer and insert."""

    def __init__(self, mixer: Dispatcher) -> None:
        self.mixer = mixer
        self.cache: CheckCache[int] = CheckCache(1000)
        self.calls = 0

    async def check(self, bag: dict[str, Any]) -> int:
        hit = self.cache.lookup(bag)
        if hit is not None:
            return hit.answer
        self.calls += 1
        outcome = await self.mixer.check(bag)
        wire = encode_refs(outcome.refs, len(GLOBAL_WORDS))
        referenced = referenced_from_proto(
            check_pb2.ReferencedAttributes.FromString(wire.SerializeToString())
        )
        self.cache.insert(
            bag,
            referenced,
            outcome.code,
            outcome.valid_duration.total_seconds(),
            outcome.valid_use_count,
        )
        return outcome.code


def call(dst: str, src: bytes, n: int, user: str | None = None) -> dict[str, Any]:
    headers = {"x-request-id": f"req-{n}", ":authority": dst}
    if user:
        headers["x-user"] = user
    return {
        "context.protocol": "http",
        "destination.service": dst,
        "source.ip": src,
        "request.path": f"/{n}",
        "request.headers": headers,
    }


async def test_a_header_rule_hits_across_request_ids(mixer: Dispatcher):
    client = Client(mixer)
    answers = [await client.check(call(REVIEWS, PRODUCTPAGE_IP, n, "jason")) for n in range(50)]
    assert answers == [0] * 50 and client.calls == 1
    assert await client.check(call(REVIEWS, PRODUCTPAGE_IP, 50, "mallory")) == 5  # NOT_FOUND
    assert await client.check(call(REVIEWS, PRODUCTPAGE_IP, 51)) == 5  # no x-user: anonymous
    assert client.calls == 3
    assert await client.check(call(REVIEWS, PRODUCTPAGE_IP, 52, "jason")) == 0
    assert await client.check(call(REVIEWS, PRODUCTPAGE_IP, 53)) == 5
    assert client.calls == 3


async def test_derived_labels_key_on_the_source_address(mixer: Dispatcher):
    client = Client(mixer)
    assert await client.check(call(RATINGS, PRODUCTPAGE_IP, 1)) == 7  # denied by source.labels
    assert await client.check(call(RATINGS, REVIEWS_IP, 2)) == 0
    assert await client.check(call(RATINGS, PRODUCTPAGE_IP, 3, "jason")) == 7
    assert await client.check(call(RATINGS, REVIEWS_IP, 4, "jason")) == 0
    assert client.calls == 2


async def test_every_cached_verdict_equals_mixers(mixer: Dispatcher):
    client = Client(mixer)
    bags = [
        call(dst, src, n, user)
        for n in range(40)
        for dst in (REVIEWS, RATINGS)
        for src in (PRODUCTPAGE_IP, REVIEWS_IP)
        for user in ("jason", "bob", None)
    ]
    for bag in bags:
        assert await client.check(bag) == (await mixer.check(bag)).code
    assert client.cache.stats.hit_ratio > 0.95
