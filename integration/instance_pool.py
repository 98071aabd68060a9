"""Service instances as real processes that can be killed outright, many per second.

Why: "an instance dies without draining" means its process is gone: the kernel closes its
listening socket and resets its connections, mid-request or idle. An in-process server that is
asked to stop is a different (gentler) event. Starting a Python interpreter per instance costs
a few hundred milliseconds of CPU, too much for one death every 200 ms, so one *pool* process
imports aiohttp once and forks each instance from itself (a fork is a millisecond).

The pool speaks lines on stdin/stdout: ``spawn <address> <port> <name>`` answers
``spawned <pid>`` once the instance listens; ``kill <pid>`` sends SIGKILL, reaps the process
(its sockets are closed by then) and answers ``killed <pid>``. EOF on stdin kills every
instance and ends the pool; every instance also dies with the pool (``PR_SET_PDEATHSIG``), and
the pool with the test process, so nothing outlives a failed test.

Each instance answers every HTTP request with its own name, like ``pilot_helpers.Backend``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_PR_SET_PDEATHSIG = 1


def _die_with_parent(sig: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)


# -- inside the pool process --------------------------------------------------------------------
def _serve(address: str, port: int, name: str, ready_fd: int) -> None:
    from aiohttp import web

    async def main() -> None:
        async def handle(request: web.Request) -> web.Response:
            return web.Response(text=name, headers={"x-backend": name})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, address, port, reuse_address=True).start()
        os.write(ready_fd, b"ok\n")
        os.close(ready_fd)
        await asyncio.Event().wait()

    asyncio.run(main())


def _spawn(address: str, port: int, name: str) -> str:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the instance
        try:
            os.close(read_fd)
            _die_with_parent(signal.SIGKILL)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1):
                os.dup2(devnull, fd)
            _serve(address, port, name, write_fd)
        except BaseException as exc:  # reported to the pool; the instance is gone either way
            with contextlib.suppress(OSError):
                os.write(write_fd, f"error {exc!r}\n".encode())
        finally:
            os._exit(1)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as ready:
        answer = ready.readline().decode().strip()
    if answer != "ok":
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        return f"error {answer or 'instance exited before listening'}"
    return f"spawned {pid}"


def _kill(pid: int) -> str:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    return f"killed {pid}"


def pool_main() -> None:
    import aiohttp.web  # noqa: F401 - imported once here, shared by every forked instance

    _die_with_parent(signal.SIGTERM)
    children: set[int] = set()
    try:
        for line in sys.stdin:
            command, *args = line.split()
            if command == "spawn":
                answer = _spawn(args[0], int(args[1]), args[2])
                if answer.startswith("spawned"):
                    children.add(int(answer.split()[1]))
            elif command == "kill":
                answer = _kill(int(args[0]))
                children.discard(int(args[0]))
            else:
                answer = f"error unknown command {command!r}"
            sys.stdout.write(answer + "\n")
            sys.stdout.flush()
    finally:
        for pid in children:
            _kill(pid)


# -- in the test process ------------------------------------------------------------------------
class InstancePool:
    """The test's handle on a pool process (one command at a time)."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self.spawned = 0
        self.killed = 0

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "integration.instance_pool",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=str(REPO),
            start_new_session=True,
        )

    async def _ask(self, line: str) -> str:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        async with self._lock:
            self.proc.stdin.write(line.encode() + b"\n")
            await self.proc.stdin.drain()
            answer = (await asyncio.wait_for(self.proc.stdout.readline(), 10)).decode().strip()
        if not answer or answer.startswith("error"):
            raise RuntimeError(f"instance pool: {line!r} -> {answer or 'pool exited'}")
        return answer

    async def spawn(self, address: str, port: int, name: str) -> int:
        """Start an instance; returns its pid once it listens."""
        pid = int((await self._ask(f"spawn {address} {port} {name}")).split()[1])
        self.spawned += 1
        return pid

    async def kill(self, pid: int) -> None:
        """SIGKILL the instance and wait until it is gone (its sockets closed)."""
        await self._ask(f"kill {pid}")
        self.killed += 1

    async def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        self.proc = None


if __name__ == "__main__":
    pool_main()
