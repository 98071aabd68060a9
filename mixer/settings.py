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
    "dataPath",
}

DATA_PATH_FIELDS = {
    "enabled",
    "failOpen",
    "check",
    "report",
    "disabledServices",
    "disabledRoutes",
    "quotas",
}
DISABLED_ROUTE_FIELDS = {"service", "pathPrefix"}


@attrs.frozen
class DataPathSettings:
    """``spec.mixer.dataPath``: how proxies reach Mixer (through their node-local client).

    ``fail_open`` is the *network* fail policy, Istio's ``network_fail_policy``: when Mixer
    cannot be reached, requests pass (true, the default) or are answered 503. It is distinct
    from :attr:`MixerSettings.fail_open`, which decides what a failing *handler* means.
    """

    enabled: bool = True
    fail_open: bool = True
    check: bool = True
    report: bool = True
    disabled_services: tuple[str, ...] = ()  # destination hostnames without Mixer filters
    # (destination hostname, path prefix) pairs whose requests are reported but not checked
    disabled_routes: tuple[tuple[str, str], ...] = ()
    quotas: tuple[str, ...] = ()  # quota names every Check asks one unit of


@attrs.frozen
class MixerSettings:
    enabled: bool = False
    listen: str = "127.0.0.1:9091"
    config_paths: tuple[str, ...] = ()
    handler_timeout: float = 1.0
    fail_open: bool = False
    default_namespace: str = DEFAULT_NAMESPACE
    kubernetes: bool = True
    data_path: DataPathSettings = attrs.field(factory=DataPathSettings)


def parse_data_path(reader: FieldReader | None) -> DataPathSettings:
    defaults = DataPathSettings()
    if reader is None:
        return defaults
    reader.unknown_fields(DATA_PATH_FIELDS)
    return DataPathSettings(
        enabled=reader.bool("enabled", default=defaults.enabled),
        fail_open=reader.bool("failOpen", default=defaults.fail_open),
        check=reader.bool("check", default=defaults.check),
        report=reader.bool("report", default=defaults.report),
        disabled_services=tuple(reader.str_list("disabledServices")),
        disabled_routes=_disabled_routes(reader),
        quotas=tuple(reader.str_list("quotas")),
    )


def _disabled_routes(reader: FieldReader) -> tuple[tuple[str, str], ...]:
    """``disabledRoutes: [{service: HOST, pathPrefix: /PATH}]``; bad entries are reported
    (with their index) and left out."""
    routes = []
    for entry in reader.readers("disabledRoutes"):
        entry.unknown_fields(DISABLED_ROUTE_FIELDS)
        service = entry.str("service", required=True)
        prefix = entry.str("pathPrefix", required=True)
        if prefix and not prefix.startswith("/"):
            entry.error("pathPrefix", f"expected a path starting with '/', got {prefix!r}")
            continue
        if service and prefix:
            routes.append((service, prefix))
    return tuple(routes)


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
        data_path=parse_data_path(reader.reader("dataPath")),
    )
