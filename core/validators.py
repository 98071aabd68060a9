"""The value checks every config parser shares: names, hosts, addresses, durations, regexes.

Why one module: a value is refused by the first peer that cannot use it -- Envoy NACKs a regex its
RE2 cannot compile or a duration outside protobuf's range, the CA refuses an identity that is not
a valid SPIFFE path segment, a socket cannot bind port 70000. meshfed refuses such values at the
edge, where the error can still name the file, the object and the field; doing it in one place
gives every input (YAML files, CRDs, the mesh config) the same verdict for the same value.

Promises: each check is pure and cheap (bounded by the value's length; regexes are compiled by
RE2, which runs in linear time), returns the normalised value and raises :class:`Invalid` with a
message of the form ``expected ..., got ...`` (the value clipped by :func:`clip`). Digits are
ASCII digits only: ``"٩٠٨٠"`` is not 9080 here, whatever Python's ``int`` thinks.
"""

from __future__ import annotations

import ipaddress
import math
import re
import reprlib
from typing import Any

import re2

MAX_SHOWN = 200  # characters of an input value quoted back in an error message, at most

# protobuf's google.protobuf.Duration: +-10,000 years in seconds.
PROTO_DURATION_MAX_S = 315_576_000_000
# Envoy's RE2 refuses a regex whose compiled program is larger than this (runtime key
# re2.max_program_size.error_level, default 100): a bigger one is NACKed by every proxy.
RE2_MAX_PROGRAM_SIZE = 100

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DNS1123_LABEL = re.compile(rf"{_LABEL}\Z")
_DNS1123_SUBDOMAIN = re.compile(rf"{_LABEL}(\.{_LABEL})*\Z")
_HOST_LABEL = re.compile(r"[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?\Z")
_IDENTITY_SEGMENT = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?\Z")
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}\Z")
_ASCII_INT = re.compile(r"[+-]?[0-9]+\Z")
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|ms|s|m|h)\Z")
_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+\Z")

_repr = reprlib.Repr()
_repr.maxstring = MAX_SHOWN
_repr.maxother = MAX_SHOWN
_repr.maxlong = 60
_repr.maxlevel = 2
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 4

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # the error goes to the user, not to stderr


class Invalid(ValueError):
    """A value a check refuses; the message says what was expected and what was given."""


def clip(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` cut to ``limit`` characters (with a marker saying how much was left out)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def show(value: Any) -> str:
    """A value as an error message quotes it: its repr, bounded in length and in the work done
    (a structure built from YAML aliases may be huge when printed in full)."""
    return _repr.repr(value)


def _expect(what: str, value: Any) -> Invalid:
    return Invalid(f"expected {what}, got {show(value)}")


def ascii_int(value: Any) -> int:
    """An integer given as an int or a string of ASCII digits (never a bool or a float)."""
    if isinstance(value, bool):
        raise _expect("an integer", value)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _ASCII_INT.match(value.strip()) and len(value) < 40:
        return int(value.strip())
    raise _expect("an integer", value)


def port(value: Any) -> int:
    number = ascii_int(value)
    if not 1 <= number <= 65535:
        raise _expect("a port number 1..65535", value)
    return number


def dns1123_label(value: str, what: str = "a DNS-1123 label") -> str:
    """A Kubernetes namespace or service name: lower-case letters, digits and ``-``, at most
    63 characters, starting and ending with a letter or digit."""
    if not isinstance(value, str) or not _DNS1123_LABEL.match(value):
        raise _expect(f"{what} (lower-case letters, digits and '-', at most 63)", value)
    return value


def resource_name(value: str) -> str:
    """``metadata.name``: a DNS-1123 subdomain, as Kubernetes requires for these kinds (so no
    ``/``, no ``..``, no upper case, at most 253 characters)."""
    if not isinstance(value, str) or len(value) > 253 or not _DNS1123_SUBDOMAIN.match(value):
        raise _expect(
            "a DNS-1123 name (lower-case letters, digits, '-' and '.', at most 253)", value
        )
    return value


def hostname(value: str, wildcard: bool = False, bare_wildcard: bool = False) -> str:
    """A DNS name, lower-cased: labels of 1-63 letters, digits, ``-`` (``_`` inside, as
    registries such as Consul allow), at most 253 characters, no empty label, no port, and a
    last label that is not all digits (``999.1.1.1`` is a bad address, not a name).
    ``wildcard`` allows a leading ``*.``; ``bare_wildcard`` allows ``*`` alone."""
    if not isinstance(value, str):
        raise _expect("a DNS name", value)
    host = value.lower()
    if host == "*" and bare_wildcard:
        return host
    name = host[2:] if wildcard and host.startswith("*.") else host
    what = "a DNS name such as svc.example.com" + (" or *.example.com" if wildcard else "")
    if not name or len(host) > 253:
        raise _expect(what, value)
    labels = name.split(".")
    if not all(_HOST_LABEL.match(label) for label in labels) or labels[-1].isdigit():
        raise _expect(what, value)
    return host


def ip_address(value: str) -> str:
    """An IPv4 or IPv6 address (no port, no prefix), in its canonical form."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise _expect("an IP address", value) from None


def host_or_ip(value: str) -> str:
    """An IP address or a DNS name."""
    try:
        return ip_address(value)
    except Invalid:
        pass
    try:
        return hostname(value)
    except Invalid:
        raise _expect("an IP address or a DNS name", value) from None


def cidr(value: str) -> str:
    """An address block such as ``10.0.0.0/8`` (a bare address is its own /32 or /128)."""
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except (ValueError, TypeError):
        raise _expect("a CIDR such as 10.0.0.0/8", value) from None


def host_port(value: str, allow_zero: bool = False, hostnames: bool = True) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6): an IP address or DNS name and a port 1..65535
    (0 too with ``allow_zero``: "any free port", for listen addresses)."""
    if not isinstance(value, str):
        raise _expect("host:port", value)
    host, sep, raw_port = value.rpartition(":")
    what = "host:port with a port 1..65535" if not allow_zero else "host:port"
    if not sep or not host:
        raise _expect(what, value)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            raise _expect(what, value)
    elif ":" in host:
        raise _expect(f"{what} (an IPv6 address in brackets)", value)
    try:
        number = ascii_int(raw_port)
    except Invalid:
        raise _expect(what, value) from None
    if not (1 <= number <= 65535 or (allow_zero and number == 0)):
        raise _expect(what, value)
    try:
        host = host_or_ip(host) if hostnames else ip_address(host)
    except Invalid:
        raise _expect(
            f"{what} with a valid {'host' if hostnames else 'IP address'}", value
        ) from None
    return host, number


def identity_segment(value: str) -> str:
    """A service account as it appears in a SPIFFE ID (``.../sa/<segment>``): a Kubernetes
    service-account name (DNS-1123 subdomain characters), so it never carries ``/``, ``..``,
    spaces or percent-encoding the CA or a SAN matcher would read differently."""
    if (
        not isinstance(value, str)
        or not _IDENTITY_SEGMENT.match(value)
        or ".." in value
        or value in (".", "..")
    ):
        raise _expect(
            "a service-account name (lower-case letters, digits, '-' and '.', at most 253)", value
        )
    return value


def trust_domain(value: str) -> str:
    """A SPIFFE trust domain: lower-case letters, digits, ``.``, ``-`` and ``_``."""
    if not isinstance(value, str) or not _TRUST_DOMAIN.match(value) or value.strip(".") != value:
        raise _expect("a trust domain such as cluster.local (a-z, 0-9, '.', '-', '_')", value)
    return value


def duration(value: Any, minimum: float = 0.0, maximum: float = PROTO_DURATION_MAX_S) -> float:
    """A protobuf-style duration (``250ms``, ``1.5s``, ``2m``, ``1h``) in seconds, within
    ``minimum``..``maximum`` (by default what a protobuf Duration can hold)."""
    if not isinstance(value, str) or len(value) > 40:
        raise _expect("a duration such as 250ms, 1.5s or 2m", value)
    found = _DURATION.match(value.strip())
    if not found:
        raise _expect("a duration such as 250ms, 1.5s or 2m", value)
    seconds = float(found.group(1)) * _UNITS[found.group(2)]
    if not math.isfinite(seconds) or not minimum <= seconds <= maximum:
        raise _expect(f"a duration from {_seconds(minimum)} to {_seconds(maximum)}", value)
    return seconds


def _seconds(value: float) -> str:
    return f"{value:.0f}s" if value == int(value) else f"{value:g}s"


def positive_duration(value: Any, maximum: float = PROTO_DURATION_MAX_S) -> float:
    """A duration of at least one millisecond (Envoy refuses a zero connect timeout, and a
    timeout that rounds to zero means "none" where it is accepted)."""
    seconds = duration(value, 0.0, maximum)
    if seconds < 1e-3:
        raise _expect("a duration of at least 1ms", value)
    return seconds


def re2_regex(value: str) -> str:
    """A regular expression Envoy's RE2 compiles and accepts: RE2 syntax (no backreferences,
    lookaround, possessive or atomic groups; ``\\p{Greek}`` is fine) and a compiled program no
    bigger than Envoy's default limit."""
    if not isinstance(value, str) or not value:
        raise _expect("a regular expression", value)
    try:
        compiled = re2.compile(value, options=_RE2_OPTIONS)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        raise Invalid(
            f"expected an RE2 regular expression (what Envoy runs): {clip(str(detail))}"
        ) from None
    if compiled.programsize > RE2_MAX_PROGRAM_SIZE:
        raise Invalid(
            f"expected a regular expression with an RE2 program size of at most "
            f"{RE2_MAX_PROGRAM_SIZE} (Envoy's limit), got one of {compiled.programsize}"
        )
    return value


def http_token(value: str) -> str:
    """An RFC 9110 token as written, e.g. an HTTP method (case matters there)."""
    if not isinstance(value, str) or not _HEADER_NAME.match(value.lower()):
        raise _expect("an HTTP token such as GET", value)
    return value


def header_name(value: str) -> str:
    """An HTTP header name (RFC 9110 token), lower-cased."""
    name = value.lower() if isinstance(value, str) else value
    if not isinstance(name, str) or not _HEADER_NAME.match(name):
        raise _expect("an HTTP header name", value)
    return name


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_PORT_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?\Z")


def non_empty_header_value(value: str) -> str:
    """:func:`header_value`, not empty (Envoy's prefix matchers need at least one byte)."""
    if value == "":
        raise _expect("a non-empty string", value)
    return header_value(value)


def header_value(value: str) -> str:
    """Text Envoy puts in a header or matches against one: no NUL, CR, LF or other control
    characters (Envoy's HTTP_HEADER_VALUE rule refuses them)."""
    if not isinstance(value, str) or _CONTROL.search(value) or len(value) > 8192:
        raise _expect("text without control characters (at most 8192)", value)
    return value


def url_path(value: str) -> str:
    """A URL path: starts with ``/``, no whitespace or control characters."""
    if not isinstance(value, str) or not value.startswith("/") or re.search(r"\s", value):
        raise _expect("a path starting with / (no spaces)", value)
    return header_value(value)


def authority(value: str) -> str:
    """An HTTP authority: a host, or ``host:port``."""
    if isinstance(value, str) and ":" in value and not value.startswith("["):
        host, number = host_port(value)
        return f"{host}:{number}"
    if isinstance(value, str) and value.startswith("["):
        host, number = host_port(value)
        return f"[{host}]:{number}"
    return host_or_ip(value)


def port_name(value: str) -> str:
    """A port's name (it becomes part of Envoy cluster and listener names): letters, digits,
    ``-``, ``_`` and ``.``, at most 63 characters."""
    if not isinstance(value, str) or not _PORT_NAME.match(value):
        raise _expect("a port name (letters, digits, '-', '_', '.', at most 63)", value)
    return value


def port_or_name(value: Any) -> int | str:
    """A port given by number (1..65535, an int or ASCII digits) or by name."""
    if isinstance(value, int) and not isinstance(value, bool):
        return port(value)
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return port(value)
    if isinstance(value, str) and value:
        return port_name(value)
    raise _expect("a port number 1..65535 or a port name", value)


_LABEL_NAME = re.compile(r"([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)\Z")


def label_key(value: str) -> str:
    """A Kubernetes label key: ``name`` or ``prefix/name``, the name at most 63 letters,
    digits, ``-``, ``_``, ``.``, the prefix a DNS name. Labels become subset cluster names
    (``k=v`` joined by ``,``), so a ``,``, ``=`` or ``|`` in one would make two subsets one."""
    if not isinstance(value, str):
        raise _expect("a label key", value)
    prefix, _, name = value.rpartition("/")
    if not _LABEL_NAME.match(name) or (prefix and not _DNS1123_SUBDOMAIN.match(prefix)):
        raise _expect("a label key such as app or example.com/tier", value)
    return value


def label_value(value: str) -> str:
    """A Kubernetes label value: empty, or at most 63 letters, digits, ``-``, ``_``, ``.``,
    starting and ending with a letter or digit."""
    if not isinstance(value, str) or (value and not _LABEL_NAME.match(value)):
        raise _expect("a label value (letters, digits, '-', '_', '.', at most 63)", value)
    return value


def listen_address(value: str) -> tuple[str, int]:
    """``ip:port`` (``[v6]:port``, or ``localhost:port``) to bind; port 0: any free port."""
    host, number = host_port(value, allow_zero=True)
    if host != "localhost":
        try:
            ip_address(host)
        except Invalid:
            raise _expect("ip:port to listen on, such as 127.0.0.1:15014", value) from None
    return host, number
