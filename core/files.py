"""The one way meshfed reads a config file a user points it at.

Config paths come from users and folders they share with other tools, so a path may name anything:
a FIFO (opening one for reading blocks until a writer appears), a device (``/dev/zero`` never
ends), a socket, a directory, or a file far larger than any config. Every reader of user config
(the mesh config, the static registry, Pilot's rule files, ``meshfed validate``) goes through
:func:`read_config_file`, which promises:

- only regular files are read (symlinks to regular files are fine: Kubernetes ConfigMap volumes
  are made of them); anything else is refused with "not a regular file" naming what it is. The
  check never blocks: the path is stat'ed first, then opened with ``O_NONBLOCK`` and checked again
  on the open descriptor (the path may have been swapped in between);
- at most :data:`MAX_CONFIG_BYTES` are read, whatever the file claims its size is;
- every failure is a :class:`FileRefused` carrying the path and a one-line reason, never a
  traceback.

It still blocks on a slow disk like any read: callers on an event loop run it in a worker thread.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

MAX_CONFIG_BYTES = 8 * 1024 * 1024
_CHUNK = 1024 * 1024

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class FileRefused(Exception):
    """A config file that cannot be used; ``reason`` is one line for a user."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _describe_mode(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a file"


def _check_regular(path: Path | str, mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise FileRefused(
            path, f"not a regular file ({_describe_mode(mode)}); only regular files are read"
        )


def _too_large(path: Path | str, limit: int) -> FileRefused:
    return FileRefused(path, f"larger than the {_size(limit)} limit for a config file")


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n % (1024 * 1024) == 0 else f"{n} bytes"


def read_config_file(path: Path | str, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """The bytes of the regular file at ``path``, at most ``limit``; raises :class:`FileRefused`."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise FileRefused(path, f"cannot read: {exc.strerror or exc}") from None
    _check_regular(path, info.st_mode)
    if info.st_size > limit:
        raise _too_large(path, limit)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise FileRefused(path, f"cannot read: {exc.strerror or exc}") from None
    try:
        _check_regular(path, os.fstat(fd).st_mode)
        chunks: list[bytes] = []
        total = 0
        while True:
            # One byte past the limit tells "exactly at the limit" from "over it" without
            # trusting st_size (files in /proc and some FUSE mounts report 0).
            chunk = os.read(fd, min(_CHUNK, limit + 1 - total))
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > limit:
                raise _too_large(path, limit)
            chunks.append(chunk)
    except OSError as exc:
        raise FileRefused(path, f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def decode_config(path: Path | str, data: bytes) -> str:
    """``data`` as text; a file that is not UTF-8 is refused with where the bad byte is."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise FileRefused(path, f"not valid UTF-8 at byte {exc.start} (line {line})") from None


def read_config_text(path: Path | str, limit: int = MAX_CONFIG_BYTES) -> str:
    """:func:`read_config_file` decoded as UTF-8."""
    return decode_config(path, read_config_file(path, limit))
