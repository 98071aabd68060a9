"""What ``memquota`` and ``redisquota`` share: quota limits, their overrides, and the key.

Both kinds take Istio's ``quotas`` list: a quota instance name, its ``maxAmount`` per
``validDuration`` and ``overrides`` whose ``dimensions`` pick out requests that get a different
limit (the first override all of whose dimensions equal the instance's wins). Every distinct set
of dimension values counts separately, under a key built from the quota name and the dimensions.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping

import attrs

from meshfed.core.resources import FieldReader
from meshfed.mixer.handlers import params as p
from meshfed.mixer.templates import Value


class UnknownQuota(LookupError):
    """A quota instance the handler has no limit for: a config mistake, surfaced per call.

    Istio refused such a handler at build, knowing the instances it would receive; here the
    handler learns them per call, so the call fails (counted and logged by the runtime, the
    rule's fail policy applies) rather than letting the quota pass unlimited.
    """

    def __init__(self, handler: str, quota: str, known: list[str]) -> None:
        super().__init__(
            f"handler {handler} has no limit for quota {quota!r} "
            f"(its quotas: {', '.join(sorted(known)) or 'none'})"
        )


class Algorithm(enum.Enum):
    FIXED_WINDOW = "FIXED_WINDOW"
    ROLLING_WINDOW = "ROLLING_WINDOW"


@attrs.frozen
class Override:
    dimensions: Mapping[str, str]
    max_amount: int
    valid_duration: dt.timedelta


@attrs.frozen
class QuotaSpec:
    name: str
    max_amount: int
    valid_duration: dt.timedelta
    overrides: tuple[Override, ...] = ()
    bucket_duration: dt.timedelta = dt.timedelta(0)
    algorithm: Algorithm = Algorithm.FIXED_WINDOW

    def limit(self, dimensions: Mapping[str, Value]) -> tuple[int, dt.timedelta]:
        """(maxAmount, validDuration) for an instance's dimensions."""
        for o in self.overrides:
            if all(dimension_text(dimensions.get(k)) == v for k, v in o.dimensions.items()):
                return o.max_amount, o.valid_duration
        return self.max_amount, self.valid_duration


def dimension_text(value: Value | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return ",".join(f"{k}={value[k]}" for k in sorted(value))
    return str(value)


def quota_key(name: str, dimensions: Mapping[str, Value]) -> str:
    """One counter per quota and distinct dimension values; unambiguous (lengths prefixed)."""
    parts = [name]
    for k in sorted(dimensions):
        v = dimension_text(dimensions[k]) or ""
        parts.append(f"{len(k)}:{k}={len(v)}:{v}")
    return ";".join(parts)


def parse_quotas(
    reader: FieldReader, *, rate_only: bool, with_algorithm: bool
) -> tuple[QuotaSpec, ...]:
    """The ``quotas`` list. ``rate_only``: validDuration must be > 0 (Redis keys must expire)."""
    specs: list[QuotaSpec] = []
    seen: set[str] = set()
    fields = {"name", "maxAmount", "validDuration", "overrides"}
    if with_algorithm:
        fields |= {"bucketDuration", "rateLimitAlgorithm"}
    minimum = dt.timedelta(milliseconds=1) if rate_only else dt.timedelta(0)
    for q in p.messages(reader, "quotas"):
        q.unknown_fields(fields)
        name = q.str("name", required=True)
        if name in seen:
            q.error("name", f"quota {name!r} is listed twice")
        seen.add(name)
        max_amount = q.int("maxAmount", required=True, minimum=0)
        valid = p.duration(q, "validDuration", dt.timedelta(0), minimum, required=rate_only)
        algorithm, bucket = Algorithm.FIXED_WINDOW, dt.timedelta(0)
        if with_algorithm:
            algorithm = p.proto_enum(
                q, "rateLimitAlgorithm", Algorithm, Algorithm.FIXED_WINDOW, list(Algorithm)
            )
            bucket = p.duration(q, "bucketDuration", dt.timedelta(0))
            if algorithm is Algorithm.ROLLING_WINDOW:
                if bucket <= dt.timedelta(0):
                    q.error("bucketDuration", "is required (> 0) for ROLLING_WINDOW")
                elif bucket > valid:
                    q.error("bucketDuration", f"expected at most validDuration ({valid})")
        overrides: list[Override] = []
        for o in p.messages(q, "overrides"):
            o.unknown_fields({"dimensions", "maxAmount", "validDuration"})
            dims = o.str_map("dimensions")
            if not dims and not o.data.get("dimensions"):
                o.error("dimensions", "expected at least one dimension to match")
            amount = o.int("maxAmount", required=True, minimum=0)
            o_valid = p.duration(o, "validDuration", valid, minimum)
            if with_algorithm and algorithm is Algorithm.ROLLING_WINDOW and bucket > o_valid:
                o.error("validDuration", f"expected at least bucketDuration ({bucket})")
            overrides.append(Override(dims, amount, o_valid))
        specs.append(QuotaSpec(name, max_amount, valid, tuple(overrides), bucket, algorithm))
    return tuple(specs)
