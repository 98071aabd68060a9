"""The Jaeger config docs/tracing.md tells a user to run (``docs/examples/jaeger.yaml``) starts the
real Jaeger, listens where the page says, and stores a span sent to the receiver it names.

The file is run as written except for its address: ``127.0.0.1`` becomes a loopback address of
this test's own, so the documented ports cannot collide with another test's Jaeger.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.request
from pathlib import Path

from integration.peers.artifacts import jaeger_path, require_binary
from integration.peers.jaeger import START_TIMEOUT, JaegerServer
from integration.peers.ports import loopback_host
from integration.peers.process import PeerProcess

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "jaeger.yaml"
DOC = EXAMPLE.parents[1] / "tracing.md"
PORTS = {"otlp_grpc": 4317, "otlp_http": 4318, "zipkin": 9411, "query_http": 16686}


def test_the_documented_jaeger_config_runs_and_stores_a_span(tmp_path: Path) -> None:
    assert "jaeger --config file:docs/examples/jaeger.yaml" in DOC.read_text()
    text = EXAMPLE.read_text()
    for port in PORTS.values():
        assert f'"127.0.0.1:{port}"' in text  # the ports the page and the mesh config use
    assert "0.0.0.0" not in text  # loopback only
    host = loopback_host()
    config = tmp_path / "jaeger.yaml"
    config.write_text(text.replace("127.0.0.1", host))
    binary = require_binary(jaeger_path(), "jaeger", "go", "jaeger")
    argv = [str(binary), "--config", f"file:{config}"]
    proc = PeerProcess(f"jaeger@{host}", argv, tmp_path / "jaeger.log", cwd=tmp_path).start()
    server = JaegerServer(host, {**PORTS, "health": 13133}, proc.log_path, proc)
    try:
        proc.wait_until(server.healthy, "for its health check", START_TIMEOUT)
        trace_id = secrets.token_hex(16)
        span = {
            "traceId": trace_id,
            "id": secrets.token_hex(8),
            "name": "get /",
            "timestamp": int(time.time() * 1e6),
            "duration": 1000,
            "localEndpoint": {"serviceName": "web.default"},
        }
        request = urllib.request.Request(
            f"http://{server.zipkin}/api/v2/spans",
            data=json.dumps([span]).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 202
        proc.wait_until(
            lambda: server.trace(trace_id) is not None, "for the span in the query API", 10.0
        )
        assert server.services() == ["web.default"]
    finally:
        proc.stop()
