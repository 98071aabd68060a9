"""Pilot's Prometheus metrics, on the default registry (the hub serves it at ``/metrics``).

Two sets side by side: meshfed's own (``meshfed_pilot_*``, prometheus-client conventions) and,
for the same events, the names Istio's users already chart and alert on (``pilot_xds_pushes``,
``pilot_proxy_convergence_time``, ...; docs/metrics.md maps one to the other). Defined once at
import; every server instance shares them.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

CONNECTED = Gauge(
    "meshfed_pilot_xds_connected_proxies", "Proxies with an open ADS stream", ["protocol"]
)
PUSHES = Counter("meshfed_pilot_xds_pushes_total", "xDS responses sent", ["type"])
PUSH_RESOURCES = Counter(
    "meshfed_pilot_xds_pushed_resources_total", "Resources sent in xDS responses", ["type"]
)
PUSH_TIME = Histogram(
    "meshfed_pilot_xds_push_seconds",
    "Time to build and enqueue one proxy's response of a type",
    ["type"],
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
)
PUSHES_MERGED = Counter(
    "meshfed_pilot_xds_pushes_merged_total",
    "xDS responses merged into a newer one of the same type before the stream took them",
    ["type"],
)
NACKS = Counter("meshfed_pilot_xds_nacks_total", "Responses rejected by proxies", ["type"])
CONVERGENCE = Histogram(
    "meshfed_pilot_proxy_convergence_seconds",
    "From the first registry event of a push to the proxy's ACK of it",
    ["type"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DEBOUNCE = Histogram(
    "meshfed_pilot_debounce_seconds",
    "How long a batch of registry events waited in the debouncer",
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
DEBOUNCED_EVENTS = Counter(
    "meshfed_pilot_debounced_events_total", "Registry events merged into pushes"
)
BUILD_TIME = Histogram(
    "meshfed_pilot_config_build_seconds",
    "Time to translate a batch of registry changes into shared resources",
    buckets=(0.0001, 0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 10),
)


# -- under Istio's names -------------------------------------------------------------------
# Istio's own dashboards and alerts query these exact names (``pilot_xds_pushes``, not
# ``..._total``). prometheus-client appends ``_total`` to every counter it exposes, so Istio's
# counters are kept here by a small collector and exposed as untyped samples under the bare
# name; ``rate()`` and ``increase()`` work on them as on counters.


class BareCounter:
    """A monotonic labelled counter exposed under exactly ``name`` (see above)."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, *labels: str) -> None:
        if len(labels) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {labels}")
        if amount < 0:
            raise ValueError(f"{self.name}: counters only go up")
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(labels, 0.0)

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self.name, self.documentation, "unknown")
        with self._lock:
            items = sorted(self._values.items())
        for labels, value in items:
            metric.add_sample(self.name, dict(zip(self.labelnames, labels, strict=True)), value)
        yield metric


ISTIO_PUSHES = BareCounter("pilot_xds_pushes", "xDS responses sent, by type", ("type",))
ISTIO_REJECTS = BareCounter(
    "pilot_total_xds_rejects", "xDS responses from Pilot rejected by proxies", ("type",)
)
ISTIO_PUSH_TRIGGERS = BareCounter(
    "pilot_push_triggers", "Times a push was triggered, labeled by reason", ("type",)
)
for _counter in (ISTIO_PUSHES, ISTIO_REJECTS, ISTIO_PUSH_TRIGGERS):
    REGISTRY.register(_counter)  # type: ignore[arg-type]

ISTIO_CONVERGENCE = Histogram(
    "pilot_proxy_convergence_time",
    "Delay in seconds between config change and a proxy receiving all required configuration",
    buckets=(0.1, 0.5, 1, 3, 5, 10, 20, 30),
)
ISTIO_PUSH_TIME = Histogram(
    "pilot_xds_push_time",
    "Total time in seconds Pilot takes to push lds, rds, cds and eds",
    ["type"],
    buckets=(0.01, 0.1, 1, 3, 5, 10, 20, 30),
)
ISTIO_CONFIG_SIZE = Histogram(
    "pilot_xds_config_size_bytes",
    "Distribution of configuration sizes pushed to clients",
    ["type"],
    buckets=(1, 10_000, 1_000_000, 4_000_000, 10_000_000, 40_000_000),
)
ISTIO_DEBOUNCE = Histogram(
    "pilot_debounce_time",
    "Delay in seconds between the first config enters debouncing and the merged push request "
    "is pushed into the push queue",
    buckets=(0.01, 0.1, 1, 3, 5, 10, 20, 30),
)


def count_push(short: str, resources: Iterable[Any], seconds: float) -> None:
    """One response of type ``short`` (cds, eds, lds, rds) queued for a proxy."""
    ISTIO_PUSHES.inc(1, short)
    ISTIO_PUSH_TIME.labels(short).observe(seconds)
    ISTIO_CONFIG_SIZE.labels(short).observe(sum(len(r.body.value) for r in resources))


# -- what is read off the live discovery servers at scrape time ----------------------------
_TCP_TAKEN = re.compile(r"has no local listener: port \d+ is taken by (?P<holder>.+)$")
SIDECAR_ITSELF = "the sidecar itself"


class DiscoveryCollector:
    """``pilot_xds`` (connected proxies by protocol version) and Istio's listener-conflict
    gauges, read from every live discovery server of this process at scrape time."""

    def __init__(self) -> None:
        self.servers: weakref.WeakSet[Any] = weakref.WeakSet()

    def collect(self) -> Iterator[Metric]:
        connections = [c for s in list(self.servers) for c in list(s.connections.values())]
        xds = GaugeMetricFamily(
            "pilot_xds", "Number of endpoints connected to this pilot using XDS", labels=["version"]
        )
        xds.add_metric(["meshfed"], len(connections))
        yield xds
        over_tcp = over_http = 0
        for conn in connections:
            for problem in getattr(conn, "problems", ()) or ():
                found = _TCP_TAKEN.search(problem)
                if found is None:
                    continue
                if found["holder"] == SIDECAR_ITSELF:
                    over_http += 1
                else:
                    over_tcp += 1
        yield GaugeMetricFamily(
            "pilot_conflict_outbound_listener_tcp_over_current_tcp",
            "Number of conflicting tcp listeners with current tcp listener",
            over_tcp,
        )
        yield GaugeMetricFamily(
            "pilot_conflict_outbound_listener_tcp_over_current_http",
            "Number of conflicting wildcard tcp listeners with current wildcard http listener",
            over_http,
        )


DISCOVERY = DiscoveryCollector()
REGISTRY.register(DISCOVERY)  # type: ignore[arg-type]
