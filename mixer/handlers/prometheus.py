"""``prometheus``: ``metric`` instances become Prometheus counters, gauges and histograms.

Istio 0.2's prometheus adapter. Each entry of ``metrics`` names the instance it takes
(``instanceName``), the exported name (prefixed ``istio_`` as Istio's were, so its dashboards'
``istio_request_count`` works), the kind, the label names (filled from the instance's dimensions
of the same names) and, for a DISTRIBUTION, its buckets. They are registered in the registry the
runtime hands over (``env.metrics``), which Mixer serves on its monitoring port. Handlers of
successive config snapshots that define the same metric share one collector, so counts survive
a config change; the last handler using it unregisters it when closed.

Values: a COUNTER adds the instance's value (a negative one is dropped: counters only go up), a
GAUGE is set to it, a DISTRIBUTION observes it; durations count in seconds. A dimension missing
from an instance leaves its label empty rather than losing the sample.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import math
import re
import weakref
from collections.abc import Sequence

import attrs
import prometheus_client
from prometheus_client.metrics import MetricWrapperBase

from meshfed.core.resources import FieldReader
from meshfed.mixer.handlers import params as p
from meshfed.mixer.handlers.api import CheckResult, HandlerEnv
from meshfed.mixer.handlers.names import InstanceIndex
from meshfed.mixer.handlers.quotas import dimension_text
from meshfed.mixer.templates import Instance, Metric, Value

NAMESPACE = "istio"
_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
MAX_BUCKETS = 1000


class Kind(enum.Enum):
    COUNTER = "COUNTER"
    GAUGE = "GAUGE"
    DISTRIBUTION = "DISTRIBUTION"


@attrs.frozen
class MetricSpec:
    name: str
    instance_name: str
    kind: Kind
    label_names: tuple[str, ...] = ()
    description: str = ""
    buckets: tuple[float, ...] = ()

    @property
    def exported(self) -> str:
        return f"{NAMESPACE}_{self.name}"


@attrs.frozen
class PrometheusParams:
    metrics: tuple[MetricSpec, ...] = ()


def _number(value: Value) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


@attrs.define
class _Shared:
    spec: MetricSpec
    collector: MetricWrapperBase
    users: int = 0


# registry -> exported name -> the collector handlers share. A new config snapshot is built
# while the old one still serves, so a handler rebuilt with the same metric must reuse the
# registered collector (its counts go on, as Prometheus expects of a counter) rather than
# register the name a second time; one whose shape changed replaces it in the registry at once.
_SHARED: weakref.WeakKeyDictionary[prometheus_client.CollectorRegistry, dict[str, _Shared]] = (
    weakref.WeakKeyDictionary()
)


def _shape(spec: MetricSpec) -> tuple[object, ...]:
    return (spec.kind, spec.label_names, spec.buckets, spec.description, spec.instance_name)


class Prometheus:
    def __init__(self, params: PrometheusParams, env: HandlerEnv) -> None:
        self._registry = env.metrics
        self._env = env
        self._held: list[_Shared] = []
        shared = _SHARED.setdefault(self._registry, {})
        entries: list[tuple[str, tuple[MetricSpec, MetricWrapperBase]]] = []
        try:
            for spec in params.metrics:
                entry = shared.get(spec.exported)
                if entry is None or _shape(entry.spec) != _shape(spec):
                    if entry is not None:
                        self._registry.unregister(entry.collector)
                        del shared[spec.exported]
                    entry = _Shared(spec, self._make(spec))
                    shared[spec.exported] = entry
                entry.users += 1
                self._held.append(entry)
                entries.append((spec.instance_name, (spec, entry.collector)))
        except ValueError:
            # the name is taken by a collector that is not a handler's: release, fail the build
            self._release()
            raise
        self._index = InstanceIndex(entries)
        self._dropped = 0

    def _make(self, spec: MetricSpec) -> MetricWrapperBase:
        doc = spec.description or f"{spec.name} from the {spec.instance_name} metric instance"
        labels, registry = spec.label_names, self._registry
        if spec.kind is Kind.COUNTER:
            return prometheus_client.Counter(spec.exported, doc, labels, registry=registry)
        if spec.kind is Kind.GAUGE:
            return prometheus_client.Gauge(spec.exported, doc, labels, registry=registry)
        buckets = spec.buckets or prometheus_client.Histogram.DEFAULT_BUCKETS
        return prometheus_client.Histogram(
            spec.exported, doc, labels, registry=registry, buckets=buckets
        )

    async def check(self, instance: Instance) -> CheckResult:
        return CheckResult()

    async def report(self, instances: Sequence[Instance]) -> None:
        for instance in instances:
            if not isinstance(instance, Metric):
                continue
            found = self._index.get(instance.name)
            if found is None:
                continue
            spec, collector = found
            value = _number(instance.value)
            if value is None or math.isnan(value):
                self._drop(instance, "its value is not a number")
                continue
            target = collector
            if spec.label_names:
                dims = instance.dimensions
                target = collector.labels(
                    *(dimension_text(dims.get(n)) or "" for n in spec.label_names)
                )
            if spec.kind is Kind.COUNTER:
                if value < 0:
                    self._drop(instance, "a counter cannot go down")
                    continue
                target.inc(value)  # type: ignore[attr-defined]
            elif spec.kind is Kind.GAUGE:
                target.set(value)  # type: ignore[attr-defined]
            else:
                target.observe(value)  # type: ignore[attr-defined]

    def _drop(self, instance: Metric, why: str) -> None:
        self._dropped += 1
        if self._dropped == 1 or self._dropped % 1000 == 0:
            self._env.logger.warning(
                "prometheus %s: dropped %d samples; latest from %s: %s (value %r)",
                self._env.name,
                self._dropped,
                instance.name,
                why,
                instance.value,
            )

    def _release(self) -> None:
        shared = _SHARED.get(self._registry, {})
        for entry in self._held:
            entry.users -= 1
            current = shared.get(entry.spec.exported)
            if entry.users == 0 and current is entry:
                del shared[entry.spec.exported]
                with contextlib.suppress(KeyError):
                    self._registry.unregister(entry.collector)
        self._held.clear()

    async def close(self) -> None:
        self._release()


def _buckets(reader: FieldReader) -> tuple[float, ...]:
    b = p.sub_message(reader, "buckets")
    if b is None:
        return ()
    b.unknown_fields({"linearBuckets", "exponentialBuckets", "explicitBuckets"})
    chosen = [k for k in ("linearBuckets", "exponentialBuckets", "explicitBuckets") if k in b.data]
    if len(chosen) != 1:
        b.error("", "expected exactly one of linearBuckets, exponentialBuckets, explicitBuckets")
        return ()
    inner = p.sub_message(b, chosen[0], required=True)
    if inner is None:
        return ()
    if chosen[0] == "explicitBuckets":
        inner.unknown_fields({"bounds"})
        raw = inner.data.get("bounds")
        if not isinstance(raw, list) or not raw or len(raw) > MAX_BUCKETS:
            inner.error("bounds", f"expected a list of 1..{MAX_BUCKETS} increasing numbers")
            return ()
        bounds: list[float] = []
        for i, v in enumerate(raw):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                inner.error(f"bounds[{i}]", f"expected a number, got {v!r}")
                return ()
            if bounds and v <= bounds[-1]:
                inner.error(f"bounds[{i}]", f"expected more than {bounds[-1]}, got {v!r}")
                return ()
            bounds.append(float(v))
        return tuple(bounds)
    count = inner.int("numFiniteBuckets", required=True, minimum=1, maximum=MAX_BUCKETS)
    if chosen[0] == "linearBuckets":
        inner.unknown_fields({"numFiniteBuckets", "width", "offset"})
        width = _float(inner, "width", required=True, positive=True)
        offset = _float(inner, "offset")
        return tuple(offset + width * i for i in range(count + 1)) if count and width else ()
    inner.unknown_fields({"numFiniteBuckets", "growthFactor", "scale"})
    growth = _float(inner, "growthFactor", required=True, positive=True)
    scale = _float(inner, "scale", required=True, positive=True)
    if growth and growth <= 1:
        inner.error("growthFactor", f"expected more than 1, got {growth}")
        return ()
    # Istio's (and Stackdriver's) definition: bound i = scale * growthFactor^i, i = 0..N
    return tuple(scale * growth**i for i in range(count + 1)) if count and growth and scale else ()


def _float(reader: FieldReader, name: str, required: bool = False, positive: bool = False) -> float:
    raw = reader.data.get(name)
    if raw is None:
        if required:
            reader.error(name, "is required")
        return 0.0
    ok = not isinstance(raw, bool) and isinstance(raw, int | float) and math.isfinite(raw)
    if not ok or (positive and raw <= 0):
        reader.error(name, f"expected a {'positive ' if positive else ''}number, got {raw!r}")
        return 0.0
    return float(raw)


class PrometheusKind:
    name = "prometheus"
    templates = frozenset({"metric"})

    def parse_params(self, reader: FieldReader) -> PrometheusParams | None:
        reader = p.message(reader)
        before = len(reader.errors)
        reader.unknown_fields({"metrics"})
        specs: list[MetricSpec] = []
        names: set[str] = set()
        fields = {"name", "instanceName", "kind", "labelNames", "description", "buckets"}
        for m in p.messages(reader, "metrics"):
            m.unknown_fields(fields)
            name = m.str("name", required=True)
            if name and not _NAME.match(f"{NAMESPACE}_{name}"):
                m.error("name", f"expected a Prometheus metric name ([a-zA-Z0-9_:]), got {name!r}")
            elif name in names:
                m.error("name", f"metric {name!r} is defined twice")
            names.add(name)
            instance = m.str("instanceName", required=True)
            kind = m.enum("kind", Kind, Kind.COUNTER)
            if "kind" not in m.data:
                m.error("kind", "is required (COUNTER, GAUGE or DISTRIBUTION)")
            labels: list[str] = list(m.str_list("labelNames"))
            for i, label in enumerate(labels):
                if not _LABEL.match(label) or label.startswith("__") or label == "le":
                    m.error(f"labelNames[{i}]", f"expected a Prometheus label name, got {label!r}")
            if len(set(labels)) != len(labels):
                m.error("labelNames", "expected each label name once")
            buckets = _buckets(m) if kind is Kind.DISTRIBUTION else ()
            if kind is not Kind.DISTRIBUTION and "buckets" in m.data:
                m.error("buckets", "only a DISTRIBUTION has buckets")
            specs.append(
                MetricSpec(name, instance, kind, tuple(labels), m.str("description"), buckets)
            )
        if len(reader.errors) > before:
            return None
        return PrometheusParams(tuple(specs))

    async def build(self, params: PrometheusParams, env: HandlerEnv) -> Prometheus:
        return Prometheus(params, env)


KIND = PrometheusKind()
