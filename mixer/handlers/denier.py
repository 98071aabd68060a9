"""``denier``: answers every check with one configured status, and grants no quota.

Istio 0.2's denier: a rule sends ``checknothing`` or ``listentry`` instances to it to refuse
matching requests outright (``status`` defaults to FAILED_PRECONDITION), and ``quota`` instances
to refuse every allocation. The verdict is cacheable by the client for ``validDuration`` or
``validUseCount`` uses, whichever ends first, because it never changes while the config holds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import attrs

from meshfed.core.resources import FieldReader
from meshfed.mixer.handlers import params as p
from meshfed.mixer.handlers.api import CheckResult, HandlerEnv, QuotaRequest, QuotaResult
from meshfed.mixer.templates import Instance, Quota

FAILED_PRECONDITION = 9
FIELDS = {"status", "validDuration", "validUseCount"}


@attrs.frozen
class DenierParams:
    code: int = FAILED_PRECONDITION
    message: str = ""
    valid_duration: dt.timedelta = dt.timedelta(seconds=1000)
    valid_use_count: int = 10_000


class Denier:
    def __init__(self, params: DenierParams) -> None:
        self._result = CheckResult(
            params.code, params.message, params.valid_duration, params.valid_use_count
        )
        self._quota_validity = params.valid_duration

    async def check(self, instance: Instance) -> CheckResult:
        return self._result

    async def report(self, instances: Sequence[Instance]) -> None:
        return None

    async def quota(self, instance: Quota, request: QuotaRequest) -> QuotaResult:
        return QuotaResult(0, self._quota_validity)

    async def close(self) -> None:
        return None


class DenierKind:
    name = "denier"
    templates = frozenset({"checknothing", "listentry", "quota"})

    def parse_params(self, reader: FieldReader) -> DenierParams | None:
        reader = p.message(reader)
        before = len(reader.errors)
        reader.unknown_fields(FIELDS)
        defaults = DenierParams()
        code, message = defaults.code, defaults.message
        status = p.sub_message(reader, "status")
        if status is not None:
            status.unknown_fields({"code", "message", "details"})
            code = p.rpc_code(status, "code", default=defaults.code)
            message = status.str("message")
        valid_duration = p.duration(reader, "validDuration", defaults.valid_duration)
        use_count = reader.int("validUseCount", default=defaults.valid_use_count, minimum=0)
        if len(reader.errors) > before:
            return None
        return DenierParams(code, message, valid_duration, use_count)

    async def build(self, params: DenierParams, env: HandlerEnv) -> Denier:
        return Denier(params)


KIND = DenierKind()
