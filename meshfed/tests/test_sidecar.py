"""The sidecar process (``meshfed proxy`` after it has written the bootstrap): what it keeps
resident, its readiness probe, its waits and its errors. Envoy itself is run by the
integration tests (``integration/test_pilot_cli.py``)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from meshfed.sidecar import Envoy, Plan, Probe, Stopped, main, wait_hub_ready, wait_synced
from meshfed.tests.test_hub_cli import hub  # noqa: F401  (the hub fixture)

HEAVY = ("grpc", "google.protobuf", "envoy", "aiohttp", "structlog", "yaml", "cryptography")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def plan(tmp_path: Path, **fields: object) -> Plan:
    values: dict = {
        "envoy": "/nonexistent/envoy",
        "bootstrap": str(tmp_path / "envoy.json"),
        "workdir": str(tmp_path),
        "node_id": "sidecar~127.0.0.1~web.default~default.svc.cluster.local",
        "ip": "127.0.0.1",
        "admin_port": closed_port(),
        "hub": f"http://127.0.0.1:{closed_port()}",
        **fields,
    }
    return Plan(**values)


def test_the_sidecar_module_loads_no_protobuf_grpc_or_http_framework() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import sys, meshfed.sidecar; print('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    loaded = sorted({m for m in out for h in HEAVY if m == h or m.startswith(h + ".")})
    assert loaded == []


def test_a_plan_survives_its_json_and_a_bad_one_is_a_clear_error(tmp_path: Path, capsys) -> None:
    original = plan(tmp_path, mixer={"socket": "/tmp/m.sock", "mixer": "127.0.0.1:9091"})
    original.write(tmp_path / "plan.json")
    assert Plan.read(tmp_path / "plan.json") == original
    (tmp_path / "bad.json").write_text(json.dumps({"envoy": "x", "surprise": 1}))
    assert main([str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert "cannot read the sidecar plan" in err and "bad.json" in err
    assert "Traceback" not in err
    assert main([str(tmp_path / "missing.json")]) == 2


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_probe_says_not_ready_until_synced_and_then_follows_envoy(tmp_path: Path) -> None:
    p = plan(tmp_path)
    probe = Probe(Envoy(p), "127.0.0.1", 0)
    probe.start()
    try:
        url = f"http://127.0.0.1:{probe.server.server_address[1]}"
        status, body = get(url + "/healthz/ready")
        assert (status, body["reason"]) == (503, "config not ACKed")
        probe.synced = True
        status, body = get(url + "/healthz/ready")  # Envoy's admin port is closed
        assert status == 503 and body["reason"].startswith("envoy: ")
        assert get(url + "/other")[0] == 404
    finally:
        probe.stop()


def test_waiting_for_an_absent_hub_times_out_naming_it_or_stops(tmp_path: Path) -> None:
    p = plan(tmp_path)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"not reachable at http://127\.0\.0\.1"):
        wait_hub_ready(p.hub, 1.0, threading.Event())
    assert time.monotonic() - started < 5
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    with pytest.raises(Stopped):
        wait_hub_ready(p.hub, 60.0, stop)


async def test_a_ready_hub_is_not_waited_for(hub) -> None:  # noqa: F811
    _, url = hub
    started = time.monotonic()
    await asyncio.to_thread(wait_hub_ready, url, 10.0, threading.Event())
    assert time.monotonic() - started < 5


def test_an_envoy_that_exits_at_once_is_an_error_not_a_hang(tmp_path: Path) -> None:
    # `false` stands in for an Envoy refusing its bootstrap: it exits at once, non-zero.
    p = plan(tmp_path, envoy="/bin/false", ready_timeout=30.0)
    envoy = Envoy(p)
    envoy.start()
    started = time.monotonic()
    try:
        with pytest.raises(RuntimeError, match="envoy exited"):
            wait_synced(envoy, p, threading.Event())
    finally:
        envoy.stop()
    assert time.monotonic() - started < 10


def test_a_probe_port_in_use_is_an_error_line_not_a_traceback(tmp_path: Path, capsys) -> None:
    from meshfed.sidecar import run

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        p = plan(tmp_path, envoy="/bin/false", status_port=taken.getsockname()[1])
        assert run(p) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_every_json_log_line_of_the_sidecar_names_its_proxy() -> None:
    import io
    import logging

    from meshfed.logformat import json_formatter
    from meshfed.sidecar import ProxyField

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    handler.addFilter(ProxyField("sidecar~127.0.0.5~web-1.default~default.svc.cluster.local"))
    logger = logging.getLogger("meshfed.test.sidecar")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("mixer check failed: %s", "UNAVAILABLE")
        logger.warning("given", extra={"proxy": "other"})
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (
        first["proxy"].startswith("sidecar~127.0.0.5~web-1") and "UNAVAILABLE" in first["message"]
    )
    assert second["proxy"] == "other"  # a caller's own field is kept


def test_ready_line_versions_keep_types_the_proxy_never_requested() -> None:
    """A gateway (or a sidecar) with no service to reach never asks for EDS: Pilot's entry then
    has only a status for it, and the ready line must not crash on that (it did, a traceback)."""
    from meshfed.sidecar import acked_versions

    state = {
        "ready": True,
        "types": {
            "CDS": {"status": "SYNCED", "acked_version": "v3"},
            "EDS": {"status": "NOT REQUESTED"},
            "LDS": {"status": "SYNCED", "acked_version": "v3"},
        },
    }
    assert acked_versions(state) == {"CDS": "v3", "EDS": "NOT REQUESTED", "LDS": "v3"}
    assert acked_versions({"ready": True}) == {}
