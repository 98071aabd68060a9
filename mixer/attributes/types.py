"""Attribute value types (Istio 0.2's ``ValueType``) and the Python values that carry them.

A bag maps attribute names to plain Python values; this module says which Python value a type
has, so the expression checker, the codec and the instance builders agree:

==============  ==========================================================
STRING          ``str`` (EMAIL_ADDRESS, URI and DNS_NAME are strings too)
INT64           ``int``
DOUBLE          ``float``
BOOL            ``bool``
TIMESTAMP       ``datetime.datetime`` (timezone-aware, UTC)
DURATION        ``datetime.timedelta``
IP_ADDRESS      ``ipaddress.IPv4Address | IPv6Address`` (4 or 16 bytes on the wire)
STRING_MAP      ``Mapping[str, str]``
BYTES           ``bytes``
==============  ==========================================================
"""

from __future__ import annotations

import enum
import ipaddress
from typing import Any


class ValueType(enum.Enum):
    STRING = "STRING"
    INT64 = "INT64"
    DOUBLE = "DOUBLE"
    BOOL = "BOOL"
    TIMESTAMP = "TIMESTAMP"
    IP_ADDRESS = "IP_ADDRESS"
    EMAIL_ADDRESS = "EMAIL_ADDRESS"
    URI = "URI"
    DNS_NAME = "DNS_NAME"
    DURATION = "DURATION"
    STRING_MAP = "STRING_MAP"
    BYTES = "BYTES"

    @property
    def stringlike(self) -> bool:
        return self in STRINGLIKE


STRINGLIKE = frozenset(
    {ValueType.STRING, ValueType.EMAIL_ADDRESS, ValueType.URI, ValueType.DNS_NAME}
)


def compatible(a: ValueType, b: ValueType) -> bool:
    """Whether values of the two types may be compared or substituted for each other."""
    return a == b or (a.stringlike and b.stringlike)


def as_ip(value: Any) -> Any:
    """An IP_ADDRESS value from its wire form (4 or 16 bytes) or a string; others unchanged."""
    if isinstance(value, bytes | str):
        try:
            return ipaddress.ip_address(value)
        except ValueError:
            return value
    return value
