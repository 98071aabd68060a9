"""The typed instances handlers receive: one class per Istio 0.2 template.

A template is the shape of the data a rule hands a handler. An instance config (for example a
``metric`` named ``requestcount``) says how to compute each field from the request's attributes
with expressions; at request time the runtime evaluates those (precompiled) expressions and builds
one of the frozen instances below. Handlers never see attributes or expressions, only these.

Field names follow Istio 0.2's templates (``mixer/template/*/template.proto``); values are plain
Python values of the attribute types: ``str``, ``int``, ``float``, ``bool``, ``bytes``,
``datetime``, ``timedelta``, ``ipaddress`` addresses and ``Mapping[str, str]``.
"""

from __future__ import annotations

import datetime as dt
import enum
import ipaddress
from collections.abc import Mapping
from typing import TypeAlias

import attrs

Value: TypeAlias = (
    str
    | int
    | float
    | bool
    | bytes
    | dt.datetime
    | dt.timedelta
    | ipaddress.IPv4Address
    | ipaddress.IPv6Address
    | Mapping[str, str]
)


class Variety(enum.Enum):
    """Which Mixer call a template serves (Istio's ``TEMPLATE_VARIETY_*``)."""

    CHECK = "check"
    REPORT = "report"
    QUOTA = "quota"


@attrs.frozen(slots=True)
class CheckNothing:
    """``checknothing``: a check that carries no data (e.g. for ``denier``)."""

    name: str


@attrs.frozen(slots=True)
class ListEntry:
    """``listentry``: one value to look up in a list (``listchecker``)."""

    name: str
    value: str


@attrs.frozen(slots=True)
class LogEntry:
    """``logentry``: one log line (``stdio``)."""

    name: str
    variables: Mapping[str, Value]
    timestamp: dt.datetime
    severity: str = "INFO"
    monitored_resource_type: str = ""


@attrs.frozen(slots=True)
class Metric:
    """``metric``: one measurement with its dimensions (``prometheus``, ``statsd``)."""

    name: str
    value: Value
    dimensions: Mapping[str, Value]
    monitored_resource_type: str = ""


@attrs.frozen(slots=True)
class Quota:
    """``quota``: the dimensions one quota allocation is counted under (``memquota``...)."""

    name: str
    dimensions: Mapping[str, Value]


@attrs.frozen(slots=True)
class ReportNothing:
    """``reportnothing``: a report that carries no data (``noop``)."""

    name: str


Instance: TypeAlias = CheckNothing | ListEntry | LogEntry | Metric | Quota | ReportNothing

# template kind (as written in config) -> (instance class, the call it serves)
TEMPLATES: Mapping[str, tuple[type, Variety]] = {
    "checknothing": (CheckNothing, Variety.CHECK),
    "listentry": (ListEntry, Variety.CHECK),
    "logentry": (LogEntry, Variety.REPORT),
    "metric": (Metric, Variety.REPORT),
    "quota": (Quota, Variety.QUOTA),
    "reportnothing": (ReportNothing, Variety.REPORT),
}
