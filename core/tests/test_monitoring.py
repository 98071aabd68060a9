"""The monitoring server on loopback: metrics, readiness, routes, bound address, bad requests."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from meshfed.core.monitoring import MonitoringServer, split_host_port


async def _raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(4096), 5)
    writer.close()
    return answer


async def test_serves_metrics_readiness_and_registered_routes() -> None:
    own = CollectorRegistry()
    Counter("meshfed_test_things_total", "things", registry=own).inc(3)
    reasons: list[str] = ["registry a has not synced"]
    server = MonitoringServer("127.0.0.1:0", name="test", metrics=[own])

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"hello": "world"})

    server.add_routes([web.get("/debug/hello", hello)])
    server.add_readiness(lambda: list(reasons), lambda: ["store b failing: boom"])
    assert server.addresses == [] and server.port == 0
    await server.start()
    try:
        host, port = server.addresses[0]
        assert host == "127.0.0.1" and port > 0 and server.bound == f"127.0.0.1:{port}"
        base = f"http://{server.bound}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/healthz/ready") as response:
                assert response.status == 503
                body = await response.json()
            # Not ready is still alive: a liveness probe must not restart a syncing process.
            async with session.get(f"{base}/healthz/live") as response:
                assert response.status == 200
                assert await response.json() == {"live": True}
            assert body == {
                "ready": False,
                "not_ready": ["registry a has not synced"],
                "degraded": ["store b failing: boom"],
            }
            reasons.clear()
            async with session.get(f"{base}/healthz/ready") as response:
                assert response.status == 200
                assert (await response.json())["degraded"] == ["store b failing: boom"]
            async with session.get(f"{base}/metrics") as response:
                text = await response.text()
            assert "meshfed_test_things_total 3.0" in text
            assert "python_info" in text  # the process-wide registry too
            async with session.get(f"{base}/debug/hello") as response:
                assert await response.json() == {"hello": "world"}
        with pytest.raises(RuntimeError, match="before the monitoring server starts"):
            server.add_routes([web.get("/late", hello)])
    finally:
        await server.stop()
    assert server.addresses == []


async def test_a_malformed_request_logs_one_line_and_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = MonitoringServer("127.0.0.1:0", name="meshfed.test")
    await server.start()
    try:
        with caplog.at_level(logging.DEBUG, logger="meshfed.test.http"):
            garbage = [
                b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
                b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
                b"GET / HTTP/9.9\r\n\r\n",
            ]
            for data in garbage:
                answer = await _raw(server.port, data)
                assert answer[:9] in (b"HTTP/1.0 ", b"HTTP/1.1 ") and answer[9:10] == b"4"
        records = [r for r in caplog.records if r.name == "meshfed.test.http"]
        assert len(records) == len(garbage)
        for record in records:
            assert record.exc_info is None and record.levelno == logging.WARNING
            assert "malformed request" in record.getMessage()
            assert len(record.getMessage()) < 400
    finally:
        await server.stop()


async def test_a_taken_port_fails_start_and_leaves_nothing_bound() -> None:
    first = MonitoringServer("127.0.0.1:0")
    await first.start()
    try:
        second = MonitoringServer(first.bound)
        with pytest.raises(OSError):
            await second.start()
        assert second.addresses == []
        await second.stop()  # a stop after a failed start is harmless
    finally:
        await first.stop()


def test_addresses_are_parsed_or_refused() -> None:
    assert split_host_port("127.0.0.1:15014") == ("127.0.0.1", 15014)
    assert split_host_port("[::1]:80") == ("::1", 80)
    for bad in ("nowhere", "1.2.3.4:99999", "host:port"):
        with pytest.raises(ValueError, match="expected host:port"):
            split_host_port(bad)
