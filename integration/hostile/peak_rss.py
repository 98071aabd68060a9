"""Run a command and write its own peak RSS (bytes) to a file: ``peak_rss.py REPORT -- CMD...``.

Linux carries a process's peak RSS across fork and exec, so a child started straight from the
test process reports at least the test process's own peak (hundreds of MiB late in a run). This
wrapper is a fresh, small interpreter: the command it starts inherits only the wrapper's few
MiB, and ``wait4`` on it gives the command's peak. Exit code, stdout and stderr are the
command's; the wrapper stays in the command's process group, so killing the group kills both.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    report, sep, *command = argv
    if sep != "--" or not command:
        print("usage: peak_rss.py REPORT -- COMMAND...", file=sys.stderr)
        return 2
    proc = subprocess.Popen(command)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    Path(report).write_text(str(usage.ru_maxrss * 1024), encoding="utf-8")
    return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
