"""CLI conventions an operator expects from istioctl and the consul CLI, against a real hub:
``-o table|json|yaml``, the hub from ``$MESHFED_HUB``, ``meshfed version``, and no traceback
when the reader of the output goes away (``| head``)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from meshfed.cli import main
from meshfed.tests.test_hub_cli import HOST, hub  # noqa: F401  (the hub fixture)


async def test_registry_list_and_get_print_json_and_yaml(hub, capsys):  # noqa: F811
    _, url = hub
    assert await asyncio.to_thread(main, ["registry", "list", "--hub", url, "-o", "json"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert [s["hostname"] for s in view["services"]] == [HOST]
    assert {m["name"] for m in view["members"]} == {"primary", "vms"}
    assert await asyncio.to_thread(main, ["registry", "list", "--hub", url, "-o", "yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == view
    argv = ["registry", "get", HOST, "--hub", url, "-o", "yaml"]
    assert await asyncio.to_thread(main, argv) == 0
    service = yaml.safe_load(capsys.readouterr().out)
    assert service["hostname"] == HOST and service["endpoints"][0]["address"] == "127.0.0.2"


async def test_the_hub_address_comes_from_meshfed_hub(hub, capsys, monkeypatch):  # noqa: F811
    _, url = hub
    monkeypatch.setenv("MESHFED_HUB", url)
    assert await asyncio.to_thread(main, ["registry", "list"]) == 0
    assert HOST in capsys.readouterr().out
    # --hub still wins over the environment.
    monkeypatch.setenv("MESHFED_HUB", "http://127.0.0.1:1")
    assert await asyncio.to_thread(main, ["registry", "list", "--hub", url]) == 0


async def test_version_shows_client_and_hub(hub, capsys):  # noqa: F811
    _, url = hub
    assert await asyncio.to_thread(main, ["version", "--hub", url, "-o", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["client"]["version"] == document["hub"]["version"] != "unknown"
    assert await asyncio.to_thread(main, ["version", "--hub", "http://127.0.0.1:1"]) == 0
    out = capsys.readouterr().out
    assert "client version:" in out and "not reachable" in out


async def test_output_piped_into_a_closed_reader_is_no_traceback(hub, tmp_path: Path):  # noqa: F811
    _, url = hub
    env = {**os.environ, "MESHFED_HUB": url}
    read, write = os.pipe()
    os.close(read)  # the reader has gone (as `head` does once it has its lines)
    try:
        proc = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "meshfed.cli", "registry", "list", "-o", "yaml"],
            stdout=write,
            stderr=subprocess.PIPE,
            env=env,
            timeout=60,
        )
    finally:
        os.close(write)
    err = proc.stderr.decode()
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert proc.returncode == 1


NODEAGENT = ["nodeagent", "--ca-root", "roots.pem", "-n", "default", "-s", "web"]


def test_log_options_are_accepted_before_and_after_the_subcommand():
    from meshfed.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["registry", "list", "--log-level", "DEBUG"]).log_level == "DEBUG"
    assert parse(["--log-level", "WARNING", "registry", "list"]).log_level == "WARNING"
    assert parse(["ca", "serve", "--log-level", "ERROR"]).log_level == "ERROR"
    assert parse(["up"]).log_level == "INFO" and parse(["up"]).log_format == "text"
    proxy = ["proxy", "--ip", "127.0.0.1", "--workload", "web"]
    for argv in (["up"], proxy, NODEAGENT, ["ca", "serve"], ["demo"]):
        assert parse([*argv, "--log-format", "json"]).log_format == "json", argv
        assert parse(["--log-format", "json", *argv]).log_format == "json", argv


async def test_the_proxy_does_not_wait_for_a_server_without_hub_readiness():
    # Pilot embedded in another process serves xDS and status but no /healthz/ready: the
    # proxy goes on to its own config readiness instead of waiting its whole timeout.
    import threading

    from aiohttp import web

    from meshfed.sidecar import wait_hub_ready

    runner = web.AppRunner(web.Application())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        url = f"http://127.0.0.1:{port}"
        await asyncio.wait_for(asyncio.to_thread(wait_hub_ready, url, 30, threading.Event()), 5)
    finally:
        await runner.cleanup()
