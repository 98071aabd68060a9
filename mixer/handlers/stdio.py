"""``stdio``: log entries and metrics as lines on stdout, stderr or in a file.

Istio 0.2's stdio adapter, whose JSON lines (``outputAsJson``, the default) carry ``level``,
``time`` (RFC 3339, UTC), ``instance`` (the instance's name) and then the entry's variables (a
metric's ``value`` and dimensions); the console form is the same fields tab-separated. A log
entry's ``severity`` text is mapped to a level by ``severityLevels`` (by default a severity that
is itself a level name keeps it, anything else is INFO); metrics are logged at ``metricLevel``.

``logStream`` is ``STDOUT``, ``STDERR`` (the default) or ``FILE`` with ``outputPath`` (a path
alone is taken as ``FILE`` too). Lines are written by one thread of the handler's own, never on
the event loop; a report returns once its lines are queued. When the disk cannot keep up and
the queue is full, lines are dropped and counted in the log rather than stalling Mixer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import enum
import ipaddress
import json
import queue
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import attrs

from meshfed.core.resources import FieldReader
from meshfed.mixer.handlers import params as p
from meshfed.mixer.handlers.api import CheckResult, HandlerEnv
from meshfed.mixer.templates import Instance, LogEntry, Metric, Value

QUEUE_CHUNKS = 10_000  # queued report batches before lines are dropped


class Level(enum.Enum):
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class Stream(enum.Enum):
    STDOUT = "STDOUT"
    STDERR = "STDERR"
    FILE = "FILE"


LEVEL_NUMBERS = (Level.INFO, Level.WARNING, Level.ERROR)  # the proto's enum values
STREAM_NUMBERS = (Stream.STDOUT, Stream.STDERR, Stream.FILE)


@attrs.frozen
class StdioParams:
    stream: Stream = Stream.STDERR
    output_path: str = ""
    severity_levels: Mapping[str, Level] = attrs.field(factory=dict)
    metric_level: Level = Level.INFO
    as_json: bool = True


def plain(value: Value | Any) -> Any:
    """A JSON-ready form of an attribute value."""
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.timedelta):
        return f"{value.total_seconds():g}s"
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if isinstance(value, bytes):
        if len(value) in (4, 16):
            return str(ipaddress.ip_address(value))
        return base64.b64encode(value).decode()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    return str(value)


class Stdio:
    def __init__(
        self,
        params: StdioParams,
        env: HandlerEnv,
        out: IO[str],
        owned: bool,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._params = params
        self._env = env
        self._out = out
        self._owned = owned
        self._now = now
        self._queue: queue.Queue[str | threading.Event | None] = queue.Queue(QUEUE_CHUNKS)
        self._dropped = 0
        self._failed = 0
        self._thread = threading.Thread(target=self._write, name=f"stdio {env.name}", daemon=True)
        self._thread.start()

    def _level(self, severity: str) -> Level:
        found = self._params.severity_levels.get(severity)
        if found is None:
            found = self._params.severity_levels.get(severity.upper())
        if found is None:
            found = Level.__members__.get(severity.upper(), Level.INFO)
        return found

    def format(self, instance: Instance) -> str | None:
        if isinstance(instance, LogEntry):
            ts = instance.timestamp
            if ts.tzinfo is None:
                ts = ts.replace(tzinfo=dt.UTC)
            fields = dict(instance.variables)
            level = self._level(instance.severity)
        elif isinstance(instance, Metric):
            ts = self._now()
            fields = {**instance.dimensions, "value": instance.value}
            level = self._params.metric_level
        else:
            return None
        head = {"level": level.value.lower(), "time": plain(ts), "instance": instance.name}
        body = {k: plain(v) for k, v in fields.items() if k not in head}
        if self._params.as_json:
            return json.dumps({**head, **body}, separators=(",", ":"), sort_keys=False)
        rest = " ".join(
            f"{k}={json.dumps(v) if isinstance(v, dict) else v}" for k, v in sorted(body.items())
        )
        return f"{head['time']}\t{level.value}\t{instance.name}\t{rest}"

    async def check(self, instance: Instance) -> CheckResult:
        return CheckResult()

    async def report(self, instances: Sequence[Instance]) -> None:
        lines = [line for line in map(self.format, instances) if line is not None]
        if not lines:
            return
        try:
            self._queue.put_nowait("\n".join(lines) + "\n")
        except queue.Full:
            self._dropped += len(lines)
            if self._dropped == len(lines) or self._dropped % 10_000 < len(lines):
                self._env.logger.warning(
                    "stdio %s: output cannot keep up, %d lines dropped",
                    self._env.name,
                    self._dropped,
                )

    async def flush(self) -> None:
        """Wait until everything reported so far has been written."""
        done = threading.Event()
        await asyncio.to_thread(self._queue.put, done)
        await asyncio.to_thread(done.wait)

    def _write(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                with contextlib.suppress(OSError, ValueError):
                    self._out.flush()
                item.set()
                continue
            try:
                self._out.write(item)
                if self._queue.empty():
                    self._out.flush()
            except (OSError, ValueError) as exc:  # disk full, closed pipe: keep serving
                self._failed += 1
                if self._failed == 1 or self._failed % 1000 == 0:
                    self._env.logger.error("stdio %s: write failed: %s", self._env.name, exc)

    async def close(self) -> None:
        await asyncio.to_thread(self._queue.put, None)
        await asyncio.to_thread(self._thread.join)
        if self._owned:
            await asyncio.to_thread(self._out.close)


def _open(path: str) -> IO[str]:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return open(target, "a", encoding="utf-8")


class StdioKind:
    name = "stdio"
    templates = frozenset({"logentry", "metric"})

    def parse_params(self, reader: FieldReader) -> StdioParams | None:
        reader = p.message(reader)
        before = len(reader.errors)
        reader.unknown_fields(
            {"logStream", "outputPath", "severityLevels", "metricLevel", "outputAsJson"}
        )
        raw_stream = reader.data.get("logStream")
        path = reader.str("outputPath").strip()
        stream = Stream.STDERR
        if isinstance(raw_stream, int) and not isinstance(raw_stream, bool):
            stream = p.proto_enum(reader, "logStream", Stream, Stream.STDERR, STREAM_NUMBERS)
        elif raw_stream is not None:
            text = reader.str("logStream").strip()  # records its own error for a non-string
            if text.upper() in Stream.__members__:
                stream = Stream(text.upper())
            elif "/" in text or text.endswith(".log"):
                stream, path = Stream.FILE, text
            elif isinstance(raw_stream, str):
                reader.error("logStream", f"expected STDOUT, STDERR, FILE or a path, got {text!r}")
        if stream is Stream.FILE and not path:
            reader.error("outputPath", "is required when logStream is FILE")
        levels: dict[str, Level] = {}
        raw_levels = reader.data.get("severityLevels")
        if raw_levels is not None and not isinstance(raw_levels, Mapping):
            reader.error("severityLevels", "expected a mapping of severity to INFO/WARNING/ERROR")
        elif raw_levels:
            sub = reader.reader("severityLevels")
            assert sub is not None
            for key in raw_levels:
                levels[str(key)] = p.proto_enum(sub, str(key), Level, Level.INFO, LEVEL_NUMBERS)
        metric_level = p.proto_enum(reader, "metricLevel", Level, Level.INFO, LEVEL_NUMBERS)
        as_json = reader.bool("outputAsJson", default=True)
        if len(reader.errors) > before:
            return None
        return StdioParams(stream, path, levels, metric_level, as_json)

    async def build(self, params: StdioParams, env: HandlerEnv) -> Stdio:
        if params.stream is Stream.FILE:
            out = await asyncio.to_thread(_open, params.output_path)
            return Stdio(params, env, out, owned=True)
        out = sys.stdout if params.stream is Stream.STDOUT else sys.stderr
        return Stdio(params, env, out, owned=False)


KIND = StdioKind()
