"""``statsd``: ``metric`` instances sent as statsd lines over UDP.

Istio 0.2's statsd adapter. ``metrics`` maps an instance name to its statsd ``type`` (COUNTER
``|c``, GAUGE ``|g``, DISTRIBUTION a timing ``|ms``, durations in milliseconds) and an optional
``nameTemplate`` filled from the instance's dimensions (Go template syntax as Istio's users wrote
it, limited to ``{{.dimension}}``; without one the instance name is used); ``prefix`` goes in
front of every name. Lines are buffered into packets of at most ``flushBytes`` and sent when full
or every ``flushDuration`` (``flushBytes`` <= 0 sends each line alone). With ``samplingRate`` < 1
only that fraction of samples is sent, marked ``|@rate`` so the server scales counts back up.

UDP is fire and forget: the socket is an asyncio datagram transport (never blocking the loop)
and a missing server only loses samples.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import random
import re
from collections.abc import Callable, Mapping, Sequence

import attrs

from meshfed.core.resources import FieldReader
from meshfed.mixer.handlers import params as p
from meshfed.mixer.handlers.api import CheckResult, HandlerEnv
from meshfed.mixer.handlers.names import InstanceIndex
from meshfed.mixer.handlers.quotas import dimension_text
from meshfed.mixer.templates import Instance, Metric, Value

_TEMPLATE_PART = re.compile(r"\{\{\s*\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_UNSAFE = re.compile(r"[\s:|@]")  # would break the line format
MAX_PACKET = 65_000


class Type(enum.Enum):
    COUNTER = "c"
    GAUGE = "g"
    DISTRIBUTION = "ms"


_TYPE_NAMES = {t.name: t for t in Type}


@attrs.frozen
class NameTemplate:
    """``{{.a}}-{{.b}}`` as alternating literal text and dimension names."""

    parts: tuple[str, ...]  # even indices: literal text, odd: dimension names

    @classmethod
    def parse(cls, text: str) -> NameTemplate:
        parts: list[str] = []
        pos = 0
        for found in _TEMPLATE_PART.finditer(text):
            parts += [text[pos : found.start()], found.group(1)]
            pos = found.end()
        parts.append(text[pos:])
        for literal in parts[::2]:
            if "{{" in literal or "}}" in literal:
                raise ValueError(
                    f"only {{{{.dimension}}}} may appear inside {{{{ }}}}, got {text!r}"
                )
        return cls(tuple(parts))

    def render(self, dimensions: Mapping[str, Value]) -> str:
        out = []
        for i, part in enumerate(self.parts):
            out.append(part if i % 2 == 0 else dimension_text(dimensions.get(part)) or "")
        return "".join(out)


@attrs.frozen
class MetricInfo:
    type: Type
    template: NameTemplate | None = None


@attrs.frozen
class StatsdParams:
    host: str = "localhost"
    port: int = 8125
    prefix: str = ""
    flush_duration: dt.timedelta = dt.timedelta(milliseconds=300)
    flush_bytes: int = 512
    sampling_rate: float = 1.0
    metrics: Mapping[str, MetricInfo] = attrs.field(factory=dict)


def _number(value: Value) -> float | None:
    if isinstance(value, dt.timedelta):
        return value.total_seconds() * 1000.0
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _fmt(number: float) -> str:
    return str(int(number)) if number.is_integer() else repr(number)


class _Protocol(asyncio.DatagramProtocol):
    def error_received(self, exc: Exception) -> None:
        pass  # ICMP port unreachable while the server is down: samples are lost, by design


class Statsd:
    def __init__(
        self,
        params: StatsdParams,
        env: HandlerEnv,
        transport: asyncio.DatagramTransport,
        sample: Callable[[], float] = random.random,
    ) -> None:
        self._params = params
        self._env = env
        self._transport = transport
        self._sample = sample
        self._index = InstanceIndex(params.metrics.items())
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._flusher = asyncio.create_task(self._flush_loop(), name=f"statsd {env.name}")
        self.sent_packets = 0

    def line(self, instance: Metric) -> bytes | None:
        info = self._index.get(instance.name)
        if info is None:
            return None
        number = _number(instance.value)
        if number is None:
            return None
        name = info.template.render(instance.dimensions) if info.template else instance.name
        name = _UNSAFE.sub("_", self._params.prefix + name)
        rate = self._params.sampling_rate
        suffix = f"|@{rate:g}" if rate < 1.0 else ""
        return f"{name}:{_fmt(number)}|{info.type.value}{suffix}".encode()

    async def check(self, instance: Instance) -> CheckResult:
        return CheckResult()

    async def report(self, instances: Sequence[Instance]) -> None:
        rate = self._params.sampling_rate
        limit = self._params.flush_bytes
        for instance in instances:
            if not isinstance(instance, Metric):
                continue
            if rate < 1.0 and self._sample() >= rate:
                continue
            line = self.line(instance)
            if line is None:
                continue
            if limit <= 0:
                self._send(line)
                continue
            if self._buffer and self._buffered + 1 + len(line) > limit:
                self.flush()
            self._buffer.append(line)
            self._buffered += len(line) + (1 if len(self._buffer) > 1 else 0)

    def flush(self) -> None:
        if self._buffer:
            self._send(b"\n".join(self._buffer))
            self._buffer.clear()
            self._buffered = 0

    def _send(self, packet: bytes) -> None:
        if not self._transport.is_closing():
            self._transport.sendto(packet[:MAX_PACKET])
            self.sent_packets += 1

    async def _flush_loop(self) -> None:
        interval = max(self._params.flush_duration.total_seconds(), 0.001)
        while True:
            await asyncio.sleep(interval)
            self.flush()

    async def close(self) -> None:
        self._flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._flusher
        self.flush()
        self._transport.close()


def _address(reader: FieldReader) -> tuple[str, int]:
    raw = reader.str("address", default="localhost:8125").strip()
    host, sep, port = raw.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        reader.error("address", f"expected host:port, got {raw!r}")
        return "localhost", 8125
    return host, int(port)


class StatsdKind:
    name = "statsd"
    templates = frozenset({"metric"})

    def __init__(self, sample: Callable[[], float] = random.random) -> None:
        self._sample = sample

    def parse_params(self, reader: FieldReader) -> StatsdParams | None:
        reader = p.message(reader)
        before = len(reader.errors)
        reader.unknown_fields(
            {"address", "prefix", "flushDuration", "flushBytes", "samplingRate", "metrics"}
        )
        d = StatsdParams()
        host, port = _address(reader)
        prefix = reader.str("prefix")
        flush_duration = p.duration(
            reader, "flushDuration", d.flush_duration, minimum=dt.timedelta(milliseconds=1)
        )
        flush_bytes = reader.int("flushBytes", default=d.flush_bytes, maximum=MAX_PACKET)
        rate = p.positive_float(reader, "samplingRate", d.sampling_rate, maximum=1.0)
        metrics: dict[str, MetricInfo] = {}
        m = reader.reader("metrics")
        if m is not None:
            for instance_name in m.data:
                info = p.sub_message(m, str(instance_name), required=True)
                if info is None:
                    continue
                info.unknown_fields({"type", "nameTemplate"})
                raw_type = info.str("type", required=True).strip().upper()
                kind = _TYPE_NAMES.get(raw_type)
                if kind is None and raw_type:
                    info.error("type", f"expected COUNTER, GAUGE or DISTRIBUTION, got {raw_type!r}")
                template = None
                text = info.str("nameTemplate")
                if text:
                    try:
                        template = NameTemplate.parse(text)
                    except ValueError as exc:
                        info.error("nameTemplate", str(exc))
                if kind is not None:
                    metrics[str(instance_name)] = MetricInfo(kind, template)
        if len(reader.errors) > before:
            return None
        return StatsdParams(host, port, prefix, flush_duration, flush_bytes, rate, metrics)

    async def build(self, params: StatsdParams, env: HandlerEnv) -> Statsd:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            _Protocol, remote_addr=(params.host, params.port)
        )
        return Statsd(params, env, transport, self._sample)


KIND = StatsdKind()
