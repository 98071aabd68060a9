"""Shared by the handler tests: a FieldReader over a spec, a HandlerEnv with its own registry."""

from __future__ import annotations

import logging
from typing import Any

import prometheus_client

from meshfed.core.resources import ConfigError, FieldReader
from meshfed.mixer.handlers.api import HandlerEnv, HandlerKind

FILE = "mixer/handlers.yaml"


def reader(spec: dict[str, Any], kind: str = "test") -> FieldReader:
    return FieldReader(FILE, f"{kind} istio-system/handler", spec)


def parse(kind: HandlerKind, spec: dict[str, Any]) -> tuple[Any, list[ConfigError]]:
    r = reader(spec, kind.name)
    return kind.parse_params(r), r.errors


def parse_ok(kind: HandlerKind, spec: dict[str, Any]) -> Any:
    params, errors = parse(kind, spec)
    assert not errors, [str(e) for e in errors]
    assert params is not None
    return params


def field_errors(kind: HandlerKind, spec: dict[str, Any]) -> dict[str, str]:
    params, errors = parse(kind, spec)
    assert params is None, "bad params must not parse"
    assert errors
    for e in errors:
        assert e.file == FILE and e.obj == f"{kind.name} istio-system/handler"
    return {e.field: e.message for e in errors}


def env(name: str = "handler.test.istio-system") -> HandlerEnv:
    return HandlerEnv(
        name, logging.getLogger(f"test.{name}"), prometheus_client.CollectorRegistry()
    )
