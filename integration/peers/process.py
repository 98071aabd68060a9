"""Start a real server as a child process, wait until it is really ready, and stop it.

Each peer runs in its own process group (``start_new_session``) so that stopping it
kills everything it spawned, even when a test fails halfway. Its output goes to a log
file in the test's temporary directory; every readiness timeout or early exit raises
:class:`PeerError` carrying the last lines of that log, because "timed out" alone
never says why a server did not come up.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

LOG_TAIL_LINES = 40

# Every started peer, so that an interpreter exiting without fixture teardown (an
# interrupted run) still kills them: they run in their own sessions, so nothing else would.
_live: set[PeerProcess] = set()


@atexit.register
def _kill_leftovers() -> None:
    for peer in list(_live):
        peer.kill()


class PeerError(RuntimeError):
    """A peer failed to start, exited early, or did not become ready in time."""


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file (empty string when there is none)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class PeerProcess:
    """One server process with its log file; start, readiness wait and group kill."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        log_path: Path,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        self.cwd = cwd
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PeerProcess:
        """Launch the process in its own session, output appended to the log file."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"$ {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env={**os.environ, **(self.env or {})},
                start_new_session=True,
            )
        _live.add(self)
        return self

    @property
    def pid(self) -> int | None:
        """The process id, or None when never started."""
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """Last lines of this peer's log."""
        return tail(self.log_path, lines)

    def error(self, message: str) -> PeerError:
        """A :class:`PeerError` that carries the log tail."""
        return PeerError(
            f"{self.name}: {message}\n--- last lines of {self.log_path} ---\n{self.log_tail()}"
        )

    def wait_until(
        self,
        check: Callable[[], bool],
        what: str,
        timeout: float,
        interval: float = 0.2,
    ) -> None:
        """Poll ``check`` until it is true; raise with the log tail on timeout or exit.

        Exceptions from ``check`` count as "not yet" (the server is still starting);
        the last one is included in the timeout error.
        """
        deadline = time.monotonic() + timeout
        last_exc: BaseException | None = None
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise self.error(f"exited with code {self.proc.returncode} while waiting {what}")
            try:
                if check():
                    return
                last_exc = None
            except Exception as exc:
                last_exc = exc
            if time.monotonic() >= deadline:
                detail = f" (last error: {last_exc!r})" if last_exc else ""
                raise self.error(f"not ready after {timeout:.0f}s waiting {what}{detail}")
            time.sleep(interval)

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
        """Signal the whole process group, then SIGKILL it if it outlives ``timeout``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        # Always sweep the group: children may outlive their parent.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        _live.discard(self)

    def kill(self) -> None:
        """Hard-kill the process group at once (a crash, as a test sees it)."""
        self.stop(timeout=5.0, sig=signal.SIGKILL)
