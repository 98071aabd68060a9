"""The mesh config: trust domain, listen addresses and the registries to federate.

One YAML document of kind ``MeshConfig``; without a file, a built-in default runs the embedded
static registry (the packaged ``defaults/services.yaml``), so ``meshfed up`` works out of the box.
Relative paths in a config file are resolved against the file's folder. Each registry entry has a
``name`` (unique; its position in the list is its merge precedence, first wins), a ``kind`` (an
entry point of group ``meshfed.registries``: ``static``, ``consul``, ``eureka``, ``kubernetes``)
and the kind's own parameters, passed through as given.

``initialSyncTimeout`` (a duration, default 30s; ``0s`` waits for every registry forever) bounds
how long the hub waits for a registry's first sync before it serves what the others hold,
listing the late one as degraded until it arrives.

``tracing`` (``enabled``, ``collector``: an OTLP/gRPC ``host:port``, ``sampling``: percent) turns
on Envoy's OpenTelemetry tracer in every sidecar and gateway, and Mixer's Check/Report spans;
``zipkin`` (a ``host:port``) makes Envoy trace with its Zipkin tracer and B3 headers instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import attrs

from meshfed.core import validators
from meshfed.core.resources import ConfigError, ConfigErrors, FieldReader, load_documents
from meshfed.core.tracing import DISABLED, TracingSettings, parse_tracing

MESH_API_VERSIONS = frozenset({"meshfed.io/v1alpha1"})
DEFAULT_SERVICES = "services.yaml"
DEFAULT_INITIAL_SYNC_TIMEOUT = 30.0
MAX_INITIAL_SYNC_TIMEOUT = 3600.0


def default_services_path() -> Path:
    return Path(str(resources.files("meshfed").joinpath("defaults", DEFAULT_SERVICES)))


@attrs.frozen(slots=True)
class RegistryConfig:
    name: str
    kind: str
    params: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen(slots=True)
class MeshConfig:
    trust_domain: str = "cluster.local"
    system_namespace: str = "meshfed-system"
    monitoring_address: str = "127.0.0.1:15014"
    discovery_address: str = "127.0.0.1:15010"
    registries: tuple[RegistryConfig, ...] = ()
    config_paths: tuple[str, ...] = ()  # where routing rules and other config kinds live
    pilot: Mapping[str, Any] = attrs.field(factory=dict)
    mixer: Any = None  # meshfed.mixer.settings.MixerSettings (spec.mixer); None: not enabled
    # meshfed.injection.settings.InjectionSettings (spec.injection); None: no webhook
    injection: Any = None
    # Seconds the hub waits for a registry's first sync before serving without it; 0: forever.
    initial_sync_timeout: float = DEFAULT_INITIAL_SYNC_TIMEOUT
    tracing: TracingSettings = DISABLED  # spec.tracing: Envoy's and Mixer's spans
    source: str = "<built-in default>"


def default_mesh_config() -> MeshConfig:
    services = str(default_services_path())
    return MeshConfig(
        registries=(RegistryConfig("static", "static", {"paths": [services]}),),
        config_paths=(services,),
    )


def _resolve(base: Path, value: str) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path))


def load_mesh_config(path: Path | str | None) -> MeshConfig:
    """Read a MeshConfig file (or the built-in default when ``path`` is None).

    Raises ConfigErrors naming the file, field and what was expected.
    """
    if path is None:
        return default_mesh_config()
    path = Path(path)
    docs, errors = load_documents(path)
    if errors:
        raise ConfigErrors(errors)
    mesh_docs = [d for d in docs if d.kind == "MeshConfig"]
    if len(mesh_docs) != 1:
        raise ConfigErrors(
            [ConfigError(str(path), "file", "kind", "expected exactly one MeshConfig document")]
        )
    doc = mesh_docs[0]
    reader = FieldReader(doc.file, doc.ref, doc.spec, "spec")
    if doc.api_version not in MESH_API_VERSIONS:
        reader.errors.append(
            ConfigError(doc.file, doc.ref, "apiVersion", "expected meshfed.io/v1alpha1")
        )
    reader.unknown_fields(
        {
            "trustDomain",
            "systemNamespace",
            "listen",
            "registries",
            "configPaths",
            "pilot",
            "mixer",
            "injection",
            "initialSyncTimeout",
            "tracing",
            "extensionProviders",
        }
    )
    if "extensionProviders" in reader.data:
        reader.error(
            "extensionProviders",
            "not supported by meshfed (CUSTOM AuthorizationPolicies name the built-in "
            "provider 'mixer': Mixer, through each proxy's node-local client); remove it",
        )
    defaults = MeshConfig()
    listen = reader.reader("listen")
    if listen is not None:
        listen.unknown_fields({"monitoring", "discovery"})
    base = path.parent
    registries = []
    names: set[str] = set()
    for reg in reader.readers("registries"):
        # The name labels metrics and endpoints' source registry; the kind is an entry point.
        name = reg.checked("name", validators.dns1123_label, required=True)
        kind = reg.checked("kind", validators.dns1123_label, required=True)
        if name in names:
            reg.error("name", f"expected a unique registry name, {name!r} is used twice")
        names.add(name)
        params = {k: v for k, v in reg.data.items() if k not in ("name", "kind")}
        if "paths" in params:
            paths = reg.str_list("paths")
            params["paths"] = [_resolve(base, p) for p in paths]
        for file_key in ("kubeconfig", "caFile", "certFile", "keyFile"):
            if params.get(file_key):
                params[file_key] = _resolve(base, reg.str(file_key))
        registries.append(RegistryConfig(name, kind, params))
    pilot_reader = reader.reader("pilot")
    if pilot_reader is not None:
        # Checked here so a typo stops `meshfed up` (and fails `meshfed validate`) with the
        # field named, instead of Pilot logging it and quietly running with a default.
        from meshfed.pilot.settings import check_pilot_section  # Pilot owns their meaning

        check_pilot_section(pilot_reader)
    # Listen addresses are bound as given: ip:port, port 0 meaning any free port.
    listen_address = validators.listen_address
    monitoring = listen.checked("monitoring", listen_address, default=None) if listen else None
    discovery = listen.checked("discovery", listen_address, default=None) if listen else None
    mixer_reader = reader.reader("mixer")
    mixer = None
    if mixer_reader is not None:
        from meshfed.mixer.settings import parse_settings  # Mixer owns its settings' meaning

        mixer = parse_settings(mixer_reader, base)
    injection_reader = reader.reader("injection")
    injection = None
    if injection_reader is not None:
        from meshfed.injection.settings import parse_settings as parse_injection

        entries = [{"kind": r.kind, **r.params} for r in registries]
        injection = parse_injection(injection_reader, base, entries)
    config = MeshConfig(
        trust_domain=reader.checked(
            "trustDomain", validators.trust_domain, default=defaults.trust_domain
        ),
        system_namespace=reader.checked(
            "systemNamespace", validators.dns1123_label, default=defaults.system_namespace
        ),
        monitoring_address=_address(monitoring) if monitoring else defaults.monitoring_address,
        discovery_address=_address(discovery) if discovery else defaults.discovery_address,
        registries=tuple(registries),
        config_paths=tuple(_resolve(base, p) for p in reader.str_list("configPaths")),
        pilot=dict(pilot_reader.data) if pilot_reader else {},
        mixer=mixer,
        injection=injection,
        initial_sync_timeout=reader.checked(
            "initialSyncTimeout",
            lambda v: validators.duration(v, 0.0, MAX_INITIAL_SYNC_TIMEOUT),
            default=defaults.initial_sync_timeout,
        ),
        tracing=parse_tracing(reader.reader("tracing")),
        source=str(path),
    )
    if reader.errors:
        raise ConfigErrors(reader.errors)
    return config


def _address(host_port: tuple[str, int]) -> str:
    host, port = host_port
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)
