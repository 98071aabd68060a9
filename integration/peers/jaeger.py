"""A real Jaeger (the v2 all-in-one, ``cmd/jaeger`` 1.75.0) per test, for the tracing tests.

Provisioned by ``python -m integration.provision --only jaeger``. Jaeger v2 is an OpenTelemetry
collector distribution configured by one YAML file, so each server gets its own: receivers for
OTLP (gRPC and HTTP) and Zipkin, the in-memory trace store, the query API (HTTP and gRPC) and
the health check, every one on a free port of one loopback address. The query service's own
tracing and the collector's metrics endpoint are off, so nothing listens on a fixed port and
nothing but the test's spans lands in the store. The batch processor flushes after 100 ms, so
a span is queryable soon after it arrives.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from integration.peers.artifacts import jaeger_path, require_binary
from integration.peers.ports import free_ports, loopback_host
from integration.peers.process import PeerProcess

START_TIMEOUT = 30.0


def config_yaml(host: str, ports: dict[str, int]) -> str:
    """The all-in-one config (JSON is YAML) with every listener on ``host``."""

    def at(name: str) -> str:
        return f"{host}:{ports[name]}"

    config = {
        "service": {
            "extensions": ["jaeger_storage", "jaeger_query", "healthcheckv2"],
            "pipelines": {
                "traces": {
                    "receivers": ["otlp", "zipkin"],
                    "processors": ["batch"],
                    "exporters": ["jaeger_storage_exporter"],
                }
            },
            "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "info"}},
        },
        "extensions": {
            "jaeger_storage": {"backends": {"memstore": {"memory": {"max_traces": 100_000}}}},
            "jaeger_query": {
                "storage": {"traces": "memstore"},
                "enable_tracing": False,
                "http": {"endpoint": at("query_http")},
                "grpc": {"endpoint": at("query_grpc")},
            },
            "healthcheckv2": {"use_v2": True, "http": {"endpoint": at("health")}},
        },
        "receivers": {
            "otlp": {
                "protocols": {
                    "grpc": {"endpoint": at("otlp_grpc")},
                    "http": {"endpoint": at("otlp_http")},
                }
            },
            "zipkin": {"endpoint": at("zipkin")},
        },
        "processors": {"batch": {"timeout": "100ms"}},
        "exporters": {"jaeger_storage_exporter": {"trace_storage": "memstore"}},
    }
    return json.dumps(config, indent=2)


@dataclass
class JaegerServer:
    """Where a Jaeger all-in-one listens, and its query API."""

    host: str
    ports: dict[str, int]
    log_path: Path
    process: PeerProcess

    @property
    def otlp_grpc(self) -> str:
        """``host:port`` of the OTLP/gRPC receiver (Envoy's and the SDK's exporter)."""
        return f"{self.host}:{self.ports['otlp_grpc']}"

    @property
    def otlp_http(self) -> str:
        return f"{self.host}:{self.ports['otlp_http']}"

    @property
    def zipkin(self) -> str:
        """``host:port`` of the Zipkin receiver (``POST /api/v2/spans``)."""
        return f"{self.host}:{self.ports['zipkin']}"

    @property
    def query_url(self) -> str:
        return f"http://{self.host}:{self.ports['query_http']}"

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """``GET`` on the query API; the decoded JSON body."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.query_url}{path}{query}", timeout=5) as response:
            return json.load(response)

    def services(self) -> list[str]:
        """Service names Jaeger holds spans of (``/api/services``)."""
        return sorted(self.get("/api/services")["data"] or [])

    def traces(self, service: str, limit: int = 100, lookback: str = "1h") -> list[dict[str, Any]]:
        """Traces with a span of ``service`` (``/api/traces``), in Jaeger's JSON form."""
        body = self.get("/api/traces", {"service": service, "limit": limit, "lookback": lookback})
        return list(body["data"] or [])

    def trace(self, trace_id: str) -> dict[str, Any] | None:
        """One trace by id (``/api/traces/<id>``), or None when Jaeger has none."""
        try:
            body = self.get(f"/api/traces/{trace_id}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        data = body.get("data") or []
        return data[0] if data else None

    def healthy(self) -> bool:
        url = f"http://{self.host}:{self.ports['health']}/status"
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(json.load(response).get("healthy"))


@contextmanager
def start_jaeger(base: Path, host: str | None = None) -> Iterator[JaegerServer]:
    """Start Jaeger all-in-one on loopback; yield once healthy and its query API answers."""
    binary = require_binary(jaeger_path(), "jaeger", "go", "jaeger")
    host = host or loopback_host()
    names = ("otlp_grpc", "otlp_http", "zipkin", "query_http", "query_grpc", "health")
    ports = dict(zip(names, free_ports(len(names), host), strict=True))
    workdir = base / f"jaeger-{ports['query_http']}"
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "jaeger.yaml"
    config.write_text(config_yaml(host, ports))
    argv = [binary, "--config", f"file:{config}"]
    proc = PeerProcess(f"jaeger@{host}", argv, workdir / "jaeger.log", cwd=workdir).start()
    server = JaegerServer(host, ports, proc.log_path, proc)
    try:
        proc.wait_until(server.healthy, "for its health check", START_TIMEOUT)
        proc.wait_until(lambda: server.services() == [], "for the query API", START_TIMEOUT)
        yield server
    finally:
        proc.stop()
