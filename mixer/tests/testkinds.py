"""Tiny handler kinds for Mixer's own tests (real implementations of the HandlerKind contract,
not stand-ins for anything external): ``testdeny`` denies with configured status, ``testrecord``
records what it receives and answers quota from a fixed budget, ``testfail`` raises or hangs."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from typing import Any

import attrs

from meshfed.core.resources import FieldReader
from meshfed.mixer.handlers.api import CheckResult, HandlerEnv, QuotaRequest, QuotaResult
from meshfed.mixer.templates import Instance, Quota


@attrs.frozen
class DenyParams:
    code: int
    message: str
    valid_seconds: int


class DenyHandler:
    def __init__(self, params: DenyParams) -> None:
        self.params = params
        self.closed = False

    async def check(self, instance: Instance) -> CheckResult:
        return CheckResult(
            self.params.code,
            self.params.message,
            dt.timedelta(seconds=self.params.valid_seconds),
            1000,
        )

    async def report(self, instances: Sequence[Instance]) -> None:
        raise AssertionError("not a report kind")

    async def quota(self, instance: Quota, request: QuotaRequest) -> QuotaResult:
        raise AssertionError("not a quota kind")

    async def close(self) -> None:
        self.closed = True


@attrs.frozen
class DenyKind:
    name: str = "testdeny"
    templates: frozenset[str] = frozenset({"checknothing", "listentry"})
    built: list[Any] = attrs.field(factory=list, eq=False)

    def parse_params(self, reader: FieldReader) -> DenyParams | None:
        status = reader.reader("status")
        code = status.int("code", default=7) if status else 7
        message = status.str("message") if status else ""
        params = DenyParams(code, message, reader.int("validSeconds", default=5))
        return None if reader.errors else params

    async def build(self, params: DenyParams, env: HandlerEnv) -> DenyHandler:
        handler = DenyHandler(params)
        self.built.append(handler)
        return handler


class RecordHandler:
    def __init__(self, budget: int) -> None:
        self.checks: list[Instance] = []
        self.reports: list[list[Instance]] = []
        self.quotas: list[tuple[Quota, QuotaRequest]] = []
        self.budget = budget
        self.closed = False

    async def check(self, instance: Instance) -> CheckResult:
        self.checks.append(instance)
        return CheckResult()

    async def report(self, instances: Sequence[Instance]) -> None:
        self.reports.append(list(instances))

    async def quota(self, instance: Quota, request: QuotaRequest) -> QuotaResult:
        self.quotas.append((instance, request))
        granted = min(request.amount, self.budget)
        if granted < request.amount and not request.best_effort:
            granted = 0
        self.budget -= granted
        return QuotaResult(granted, dt.timedelta(seconds=1))

    async def close(self) -> None:
        self.closed = True


@attrs.frozen
class RecordKind:
    name: str = "testrecord"
    templates: frozenset[str] = frozenset(
        {"checknothing", "listentry", "logentry", "metric", "quota", "reportnothing"}
    )
    built: list[RecordHandler] = attrs.field(factory=list, eq=False)

    def parse_params(self, reader: FieldReader) -> int | None:
        budget = reader.int("budget", default=1_000_000)
        return None if reader.errors else budget

    async def build(self, params: int, env: HandlerEnv) -> RecordHandler:
        handler = RecordHandler(params)
        self.built.append(handler)
        return handler


class FailHandler(RecordHandler):
    def __init__(self, mode: str) -> None:
        super().__init__(0)
        self.mode = mode

    async def check(self, instance: Instance) -> CheckResult:
        if self.mode == "hang":
            await asyncio.sleep(3600)
        raise RuntimeError("backend down")

    async def report(self, instances: Sequence[Instance]) -> None:
        await self.check(instances[0])


@attrs.frozen
class FailKind:
    name: str = "testfail"
    templates: frozenset[str] = frozenset({"checknothing", "metric", "logentry"})

    def parse_params(self, reader: FieldReader) -> str | None:
        return reader.str("mode", default="raise")

    async def build(self, params: str, env: HandlerEnv) -> FailHandler:
        return FailHandler(params)


def kinds() -> dict[str, Any]:
    return {"testdeny": DenyKind(), "testrecord": RecordKind(), "testfail": FailKind()}
