"""``prefixdenier``: deny a ``listentry`` value that starts with one of the configured prefixes.

The example of docs/mixer-adapters.md, installed by the out-of-tree adapter test.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import attrs

from meshfed.core.resources import FieldReader
from meshfed.mixer.handlers.api import (
    PERMISSION_DENIED,
    CheckResult,
    HandlerEnv,
)
from meshfed.mixer.handlers.params import duration, rpc_code
from meshfed.mixer.templates import Instance, ListEntry


@attrs.frozen
class Params:
    prefixes: tuple[str, ...]
    code: int
    valid_duration: dt.timedelta


class PrefixDenier:
    def __init__(self, params: Params, env: HandlerEnv) -> None:
        self._params = params
        self._log = env.logger

    async def check(self, instance: Instance) -> CheckResult:
        assert isinstance(instance, ListEntry)  # the only template this kind declares
        p = self._params
        for prefix in p.prefixes:
            if instance.value.startswith(prefix):
                return CheckResult(
                    p.code, f"{instance.value} starts with {prefix}", p.valid_duration
                )
        return CheckResult(valid_duration=p.valid_duration)

    async def report(self, instances: Sequence[Instance]) -> None:
        return None

    async def close(self) -> None:
        return None


class PrefixDenierKind:
    name = "prefixdenier"
    templates = frozenset({"listentry"})

    def parse_params(self, reader: FieldReader) -> Params | None:
        before = len(reader.errors)
        reader.unknown_fields({"prefixes", "code", "validDuration"})
        prefixes = reader.str_list("prefixes", required=True)
        code = rpc_code(reader, "code", default=PERMISSION_DENIED)
        if code == 0:
            reader.error("code", "a denier must not answer OK")
        valid = duration(reader, "validDuration", dt.timedelta(seconds=10))
        if len(reader.errors) > before:
            return None
        return Params(tuple(prefixes), code, valid)

    async def build(self, params: Params, env: HandlerEnv) -> PrefixDenier:
        return PrefixDenier(params, env)


KIND = PrefixDenierKind()
