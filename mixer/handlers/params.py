"""Field readers for the value types handler params share: durations, rpc statuses, enums.

Istio 0.2's handler params are protobuf messages written as YAML, so a field may be written in
lowerCamelCase or as its proto name (``instanceName`` or ``instance_name``; Istio's own default
config uses both), durations are written the way protobuf's JSON mapping and Go print them
(``1s``, ``500ms``, ``1m30s``, ``1.5s``), and ``google.rpc.Status`` codes may be numbers or
names (``PERMISSION_DENIED``). Every reader here
records a field-named error on the :class:`FieldReader` and returns a usable default, so one
bad field never hides the others.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from meshfed.core.resources import FieldReader

_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

# google.rpc.Code names, so users may write either form
RPC_CODES = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def message(reader: FieldReader) -> FieldReader:
    """The same fields with proto (snake_case) names read as their JSON (lowerCamel) names.

    Only for message levels: map keys (dimensions, instance names) are user data and stay as
    written. A field written both ways is an error, the camelCase one is used.
    """
    data: dict[str, Any] = {}
    for key, value in reader.data.items():
        name = _camel(key) if isinstance(key, str) and "_" in key.strip("_") else key
        if name in data:
            reader.error(str(key), f"the field is written twice (as {name} too)")
            if name != key:
                continue
        data[name] = value
    return FieldReader(reader.file, reader.obj, data, reader.path, reader.errors)


def messages(reader: FieldReader, name: str, required: bool = False) -> Iterator[FieldReader]:
    """``reader.readers(name)``, each item read by :func:`message`."""
    for item in reader.readers(name, required):
        yield message(item)


def sub_message(reader: FieldReader, name: str, required: bool = False) -> FieldReader | None:
    """``reader.reader(name)`` read by :func:`message`."""
    sub = reader.reader(name, required)
    return None if sub is None else message(sub)


def parse_duration_text(text: str) -> dt.timedelta | None:
    """``1m30s`` -> 90 s; None when ``text`` is not a duration. Bare numbers are seconds."""
    text = text.strip()
    if not text:
        return None
    try:
        return dt.timedelta(seconds=float(text))
    except (ValueError, OverflowError):
        pass
    pos, total = 0, 0.0
    for found in _PART.finditer(text):
        if found.start() != pos:
            return None
        total += float(found.group(1)) * _SECONDS[found.group(2)]
        pos = found.end()
    if pos != len(text) or pos == 0:
        return None
    try:
        return dt.timedelta(seconds=total)
    except OverflowError:
        return None


def duration(
    reader: FieldReader,
    name: str,
    default: dt.timedelta,
    minimum: dt.timedelta = dt.timedelta(0),
    required: bool = False,
) -> dt.timedelta:
    """A duration field; errors name the field and show an example of the expected form."""
    raw = reader.data.get(name)
    if raw is None:
        if required:
            reader.error(name, "is required")
        return default
    value = None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        value = parse_duration_text(str(raw))
    elif isinstance(raw, str):
        value = parse_duration_text(raw)
    if value is None:
        reader.error(name, f"expected a duration such as 500ms, 10s or 1m30s, got {raw!r}")
        return default
    if value < minimum:
        reader.error(name, f"expected a duration of at least {_show(minimum)}, got {raw!r}")
        return default
    return value


def rpc_code(reader: FieldReader, name: str, default: int) -> int:
    """A ``google.rpc.Code`` as a number (0..16) or a name."""
    raw = reader.data.get(name)
    if raw is None:
        return default
    if isinstance(raw, str) and raw.strip().upper() in RPC_CODES:
        return RPC_CODES[raw.strip().upper()]
    return reader.int(name, default=default, minimum=0, maximum=16)


E = TypeVar("E", bound=enum.Enum)


def proto_enum(
    reader: FieldReader, name: str, enum_type: type[E], default: E, numbers: Sequence[E]
) -> E:
    """An enum written by name or, as protobuf allows, by number (``numbers[i]`` is value i)."""
    raw = reader.data.get(name)
    if isinstance(raw, int) and not isinstance(raw, bool):
        if 0 <= raw < len(numbers):
            return numbers[raw]
        names = ", ".join(f"{i} ({m.value})" for i, m in enumerate(numbers))
        reader.error(name, f"expected one of {names}, got {raw}")
        return default
    return reader.enum(name, enum_type, default)


def positive_float(reader: FieldReader, name: str, default: float, maximum: float) -> float:
    """A number in (0, maximum]."""
    raw = reader.data.get(name)
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw <= maximum:
        reader.error(name, f"expected a number greater than 0 and at most {maximum}, got {raw!r}")
        return default
    return float(raw)


def _show(value: dt.timedelta) -> str:
    seconds = value.total_seconds()
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"
