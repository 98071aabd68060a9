"""Filesystem faults under a live hub (``meshfed up`` as a real process).

One folder is both the static registry's path and Pilot's ``configPaths``. Each test breaks it the
way an operator or another tool might (a FIFO or a device link named ``*.yaml``, a socket, a file
replaced by a directory, an unreadable file, the folder deleted and re-created) and asserts that
the hub keeps its last good services and rules, that ``/healthz/ready`` and ``/debug/registryz``
answer within 1 s throughout, that edits made after the fault apply, and that SIGTERM stops the
hub promptly. Hosts: 127.0.93.x (data only).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from pathlib import Path

import pytest

from integration.files_helpers import HOST, RULES, LiveHub, service_entry

RESPONSE_BOUND_S = 1.0
STOP_BOUND_S = 5.0
RSS_BOUND_MB = 400


@pytest.fixture
async def hub(tmp_path: Path):
    h = LiveHub(tmp_path)
    h.folder.mkdir()
    (h.folder / "services.yaml").write_text(service_entry("web", HOST, ["127.0.93.2"]))
    (h.folder / "rules.yaml").write_text(RULES)
    try:
        yield h
    finally:
        h.kill()
        if h.proc is not None:
            await h.proc.wait()


async def assert_last_good_kept(hub: LiveHub, errors_about: str) -> None:
    await hub.eventually(
        lambda: _has_error(hub, errors_about), f"an error naming {errors_about}", 10
    )
    assert await hub.addresses() == ["127.0.93.2"]
    assert await hub.rules() == ["RouteRule default/web-default"]


async def _has_error(hub: LiveHub, text: str) -> bool:
    return any(text in e for e in await hub.errors())


async def assert_edits_apply(hub: LiveHub, name: str = "extra.yaml") -> None:
    (hub.folder / name).write_text(service_entry("api", "api.files.test", ["127.0.93.9"]))

    async def applied() -> bool:
        return await hub.addresses("api.files.test") == ["127.0.93.9"]

    await hub.eventually(applied, "an edit after the fault applied")


async def finish(hub: LiveHub) -> None:
    assert hub.probe_failures == []
    assert hub.worst < RESPONSE_BOUND_S, f"a probe took {hub.worst:.2f}s"
    took = await hub.terminate()
    assert hub.proc is not None and hub.proc.returncode == 0, hub.log.read_text()[-2000:]
    assert took < STOP_BOUND_S, f"SIGTERM took {took:.1f}s"


async def test_fifo_named_yaml_in_the_folder(hub: LiveHub) -> None:
    await hub.start()
    fifo = hub.folder / "x.yaml"
    os.mkfifo(fifo)
    await assert_last_good_kept(hub, f"{fifo}: file: not a regular file (a FIFO)")
    await assert_edits_apply(hub)
    await finish(hub)


async def test_faults_present_at_start(hub: LiveHub) -> None:
    os.mkfifo(hub.folder / "x.yaml")
    (hub.folder / "z.yaml").symlink_to("/dev/zero")
    await hub.start()  # the first read, before any watch, must not block either
    assert await hub.addresses() == ["127.0.93.2"]
    errors = await hub.errors()
    assert any("x.yaml: file: not a regular file (a FIFO)" in e for e in errors), errors
    assert any("z.yaml: file: not a regular file (a character device)" in e for e in errors)
    await assert_edits_apply(hub)
    await finish(hub)


async def test_symlink_to_dev_zero(hub: LiveHub) -> None:
    await hub.start()
    link = hub.folder / "zero.yaml"
    link.symlink_to("/dev/zero")
    await assert_last_good_kept(hub, f"{link}: file: not a regular file (a character device)")
    await assert_edits_apply(hub)
    assert hub.rss_mb() < RSS_BOUND_MB
    await finish(hub)


async def test_socket_named_yaml_in_the_folder(hub: LiveHub) -> None:
    await hub.start()
    path = hub.folder / "s.yaml"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        await assert_last_good_kept(hub, f"{path}: file: not a regular file (a socket)")
        await assert_edits_apply(hub)
    await finish(hub)


async def test_file_replaced_by_a_directory(hub: LiveHub) -> None:
    await hub.start()
    services = hub.folder / "services.yaml"
    services.unlink()
    services.mkdir()
    await assert_last_good_kept(hub, f"{services}: file: not a regular file (a directory)")
    await assert_edits_apply(hub)
    services.rmdir()
    services.write_text(service_entry("web", HOST, ["127.0.93.3"]))

    async def restored() -> bool:
        return await hub.addresses() == ["127.0.93.3"]

    await hub.eventually(restored, "the file back in place applied")
    await finish(hub)


async def test_unreadable_file(hub: LiveHub) -> None:
    await hub.start()
    services = hub.folder / "services.yaml"
    services.chmod(0)
    await assert_last_good_kept(hub, f"{services}: file: cannot read: Permission denied")
    await assert_edits_apply(hub)
    services.write_text(service_entry("web", HOST, ["127.0.93.4"]))
    services.chmod(0o644)

    async def readable_again() -> bool:
        return await hub.addresses() == ["127.0.93.4"]

    await hub.eventually(readable_again, "the file readable again applied")
    await finish(hub)


async def test_symlink_loop(hub: LiveHub) -> None:
    await hub.start()
    loop = hub.folder / "loop.yaml"
    loop.symlink_to(loop)
    await assert_last_good_kept(hub, f"{loop}: file: cannot read: Too many levels of symbolic")
    await assert_edits_apply(hub)
    await finish(hub)


async def test_watched_folder_deleted_and_recreated(hub: LiveHub) -> None:
    await hub.start()
    shutil.rmtree(hub.folder)
    await assert_last_good_kept(hub, f"{hub.folder}: path: not found (keeping its last good")
    await asyncio.sleep(1)  # long enough for a dead watcher to have dropped everything
    assert await hub.addresses() == ["127.0.93.2"]
    hub.folder.mkdir()
    (hub.folder / "services.yaml").write_text(service_entry("web", HOST, ["127.0.93.5"]))

    async def recreated() -> bool:
        return await hub.addresses() == ["127.0.93.5"] and not await hub.errors()

    await hub.eventually(recreated, "the re-created folder read")
    assert await hub.rules() == []  # rules.yaml was deleted with the folder and not re-created
    (hub.folder / "rules.yaml").write_text(RULES)
    await assert_edits_apply(hub)

    async def rules_back() -> bool:
        return await hub.rules() == ["RouteRule default/web-default"]

    await hub.eventually(rules_back, "rules in the re-created folder applied")
    await finish(hub)
