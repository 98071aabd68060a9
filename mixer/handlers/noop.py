"""``noop``: accepts every template and does nothing, always successfully.

Istio 0.2 ships it to wire up rules (and measure Mixer's own overhead) without any backend:
checks pass, quotas grant what was asked, reports are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

from meshfed.core.resources import FieldReader
from meshfed.mixer.handlers.api import CheckResult, HandlerEnv, QuotaRequest, QuotaResult
from meshfed.mixer.templates import TEMPLATES, Instance, Quota


class Noop:
    async def check(self, instance: Instance) -> CheckResult:
        return CheckResult()

    async def report(self, instances: Sequence[Instance]) -> None:
        return None

    async def quota(self, instance: Quota, request: QuotaRequest) -> QuotaResult:
        return QuotaResult(request.amount)

    async def close(self) -> None:
        return None


class NoopKind:
    name = "noop"
    templates = frozenset(TEMPLATES)

    def parse_params(self, reader: FieldReader) -> dict[str, object] | None:
        before = len(reader.errors)
        for key in reader.data:
            reader.error(str(key), "unknown field (noop takes no params)")
        return None if len(reader.errors) > before else {}

    async def build(self, params: object, env: HandlerEnv) -> Noop:
        return Noop()


KIND = NoopKind()
