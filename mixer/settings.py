"""The ``spec.mixer`` section of the mesh config (see :mod:`meshfed.mixer.component`).

Kept apart from the component so reading the mesh config imports no gRPC server code.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import attrs

from meshfed.core.resources import FieldReader

DEFAULT_NAMESPACE = "istio-system"  # Istio's: rules here apply to every request

SETTINGS_FIELDS = {
    "enabled",
    "listen",
    "configPaths",
    "handlerTimeout",
    "failOpen",
    "defaultConfigNamespace",
    "kubernetes",
}


@attrs.frozen
class MixerSettings:
    enabled: bool = False
    listen: str = "127.0.0.1:9091"
    config_paths: tuple[str, ...] = ()
    handler_timeout: float = 1.0
    fail_open: bool = False
    default_namespace: str = DEFAULT_NAMESPACE
    kubernetes: bool = True


def parse_settings(reader: FieldReader, base: Path | None = None) -> MixerSettings:
    """``spec.mixer`` of a MeshConfig; errors go to ``reader`` (file, field, expectation)."""
    from meshfed.mixer.expr.parser import parse_go_duration

    reader.unknown_fields(SETTINGS_FIELDS)
    defaults = MixerSettings()
    timeout = defaults.handler_timeout
    raw = reader.data.get("handlerTimeout")
    if raw is not None:
        parsed = parse_go_duration(str(raw)) if isinstance(raw, str) else None
        if parsed is None or parsed <= dt.timedelta(0):
            reader.error("handlerTimeout", f"expected a positive duration like 1s, got {raw!r}")
        else:
            timeout = parsed.total_seconds()
    listen = reader.str("listen", default=defaults.listen)
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        reader.error("listen", f"expected host:port, got {listen!r}")
    paths = []
    for p in reader.str_list("configPaths"):
        path = Path(p).expanduser()
        paths.append(str(path if path.is_absolute() or base is None else base / path))
    return MixerSettings(
        enabled=reader.bool("enabled"),
        listen=listen,
        config_paths=tuple(paths),
        handler_timeout=timeout,
        fail_open=reader.bool("failOpen"),
        default_namespace=reader.str("defaultConfigNamespace", default=defaults.default_namespace),
        kubernetes=reader.bool("kubernetes", default=True),
    )
