"""Properties of every parser under malformed input, generated with hypothesis (no peers).

For each kind meshfed reads (the seeds in :mod:`integration.hostile.seeds`), a field is
replaced by a hostile value, removed, or joined by an unknown one, and the document is written
to a file. Then, whatever the document:

- ``meshfed validate``'s checker and the hub's own parser for that kind (the static registry's
  ``parse_file``, Pilot's ``parse_config_file``, the mesh config loader) raise nothing and give
  the same errors, word for word;
- every error is one line of bounded length that names the file and, when the document was
  refused for a field, a field related to the one changed;
- a mesh config that is accepted is one the hub can use as written: its listen addresses bind,
  and Pilot's start-time readers take its ``pilot`` section without falling back.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from integration.hostile.seeds import (
    HOSTILE_VALUES,
    SEEDS,
    added,
    field_name,
    mapping_paths,
    mutable_paths,
    related,
    removed,
    replaced,
)
from meshfed.adapters.static.registry import parse_file as static_parse_file
from meshfed.config import load_mesh_config, split_address
from meshfed.core.resources import ConfigError, ConfigErrors
from meshfed.pilot.config.parse import IngressSelection, routing_parsers
from meshfed.pilot.config.store import parse_config_file
from meshfed.pilot.server import debounce_settings
from meshfed.pilot.translate.egress import dns_cache
from meshfed.pilot.translate.traffic import TrafficOptions
from meshfed.security import mtls
from meshfed.validate import registry_errors, validate_files

STATIC_KINDS = {"ServiceEntry", "WorkloadEntry"}
# CI runs a fixed set of examples (a red CI must be reproducible); a developer's run explores.
CI = bool(os.environ.get("CI"))
MAX_ERROR_LINE = 1200

scalars = st.one_of(
    st.sampled_from(HOSTILE_VALUES),
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=1, max_size=6),
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def mutations(draw: st.DrawFn) -> tuple[str, str, dict[str, Any]]:
    """(kind, changed field as errors name it, document)."""
    kind = draw(st.sampled_from(sorted(SEEDS)))
    path = draw(st.sampled_from(mutable_paths(kind)))
    how = draw(st.sampled_from(["replace", "replace", "replace", "remove", "unknown"]))
    if how == "remove":
        return kind, field_name(path), removed(kind, path)
    if how == "unknown":
        parent = draw(st.sampled_from(mapping_paths(kind)))
        key = draw(st.text(min_size=1, max_size=12))
        # An unknown field is named by its parent's path and the key as YAML read it back.
        return kind, field_name(parent), added(kind, parent, key, draw(values))
    return kind, field_name(path), replaced(kind, path, draw(values))


def hub_errors(kind: str, path: Path) -> list[ConfigError]:
    """What the hub's own reader for this kind reports for the file."""
    if kind in STATIC_KINDS:
        return static_parse_file(path)[1]
    if kind == "MeshConfig":
        try:
            mesh = load_mesh_config(path)
        except ConfigErrors as exc:
            return exc.errors
        from meshfed.core.resources import load_documents

        (doc,) = load_documents(path)[0]
        return registry_errors(mesh, doc)
    selection = IngressSelection()
    return parse_config_file(path, routing_parsers(selection))[1]


def assert_usable_mesh(path: Path) -> None:
    mesh = load_mesh_config(path)
    for address in (mesh.monitoring_address, mesh.discovery_address):
        host, port = split_address(address)
        assert host and 0 <= port <= 65535
    quiet, max_delay = debounce_settings(mesh.pilot)
    assert quiet >= 0 and max_delay >= 0 and math.isfinite(quiet + max_delay)
    section = mesh.pilot.get("mtls")
    if section is not None:
        assert mtls.policy_from_config(mesh.pilot) == mtls.Policy.from_dict(section)
    dns_cache(TrafficOptions.from_pilot_config(mesh.pilot))  # builds the resolver protos
    IngressSelection.from_pilot_config(mesh.pilot)


@settings(
    max_examples=400,
    deadline=None,
    derandomize=CI,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mutations())
def test_validate_and_hub_agree_on_malformed_documents(case: tuple[str, str, dict[str, Any]]):
    kind, field, doc = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "doc.yaml"
        path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
        logging.disable(logging.CRITICAL)
        try:
            _, checked, _ = validate_files([path])
            from_hub = hub_errors(kind, path)
        finally:
            logging.disable(logging.NOTSET)
        assert sorted(map(str, checked)) == sorted(map(str, from_hub)), (kind, field)
        event(f"{kind}: {'refused' if checked else 'accepted'}")
        for error in checked:
            line = str(error)
            assert "\n" not in line and len(line) <= MAX_ERROR_LINE, line
            assert line.startswith(str(path)), line
            assert "Traceback" not in line
        if checked:
            assert any(related(e, field) for e in checked), (field, [str(e) for e in checked])
        elif kind == "MeshConfig":
            assert_usable_mesh(path)


def test_every_seed_is_valid():
    """The seeds themselves pass, so every error above comes from the change made."""
    with tempfile.TemporaryDirectory() as tmp:
        for kind, doc in SEEDS.items():
            path = Path(tmp) / f"{kind}.yaml"
            path.write_text(yaml.safe_dump(doc), encoding="utf-8")
            count, errors, _ = validate_files([path])
            assert count == 1 and not errors, (kind, [str(e) for e in errors])
            assert not hub_errors(doc["kind"], path), kind


def _mesh_registry() -> Any:
    """The services the seeds refer to, with endpoints of two versions."""
    from meshfed.registry.aggregate import AggregateRegistry
    from meshfed.registry.model import Endpoint, Port, Protocol, Service

    agg = AggregateRegistry()
    member = agg.add_member("props")
    for name, port, protocol in (
        ("reviews", 9080, Protocol.HTTP),
        ("productpage", 9080, Protocol.HTTP),
        ("mongodb", 27017, Protocol.TCP),
        ("cart", 80, Protocol.HTTP),
        ("greeter", 9090, Protocol.GRPC),
    ):
        host = f"{name}.default.svc.cluster.local"
        endpoints = [
            Endpoint(f"10.1.{port % 250}.{i}", labels={"version": f"v{i}"}) for i in (1, 2, 3)
        ]
        member.put_service(Service(host, ports=(Port(port, "p", protocol),)), endpoints)
    member.mark_synced()
    return agg


@settings(
    max_examples=150,
    deadline=None,
    derandomize=CI,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mutations())
def test_what_validate_accepts_pilot_translates(case: tuple[str, str, dict[str, Any]]):
    """An accepted document never makes Pilot's translation fail: values that would overflow a
    protobuf field or break a resource name were refused at the edge."""

    kind, _, doc = case
    if _translate_if_accepted(kind, doc):
        event(f"{kind}: translated")


def test_every_palette_value_accepted_is_translated():
    """The same, over every field of every seed and every value of the hostile palette."""
    translated = 0
    for kind in SEEDS:
        for path in mutable_paths(kind):
            for value in HOSTILE_VALUES:
                translated += _translate_if_accepted(kind, replaced(kind, path, value))
    assert translated > 500  # the palette holds values valid somewhere


def _translate_if_accepted(kind: str, doc: dict[str, Any]) -> bool:
    from meshfed.adapters.static.translate import translate
    from meshfed.pilot.cache import ConfigCache
    from meshfed.pilot.config.store import ConfigSnapshot
    from meshfed.pilot.node import ProxyNode

    if kind == "MeshConfig":
        return False
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "doc.yaml"
        path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
        logging.disable(logging.CRITICAL)
        try:
            if validate_files([path])[1]:
                return False
            agg = _mesh_registry()
            if kind in STATIC_KINDS:
                state, _ = static_parse_file(path)
                assert state is not None
                services, endpoints, _ = translate(
                    state.entries, state.workloads, "cluster.local", "files"
                )
                member = agg.add_member("files")
                for service in services:
                    member.put_service(service, endpoints.get(service.hostname, []))
                member.mark_synced()
                snapshot = ConfigSnapshot()
            else:
                objects, _ = parse_config_file(path, routing_parsers(IngressSelection()))
                snapshot = ConfigSnapshot.of(objects or ())
            cache = ConfigCache(agg)
            cache.rebuild()
            cache.set_config(snapshot, TrafficOptions(dns_resolvers=("127.0.0.53:5353",)))
            for node in (
                ProxyNode(id="sidecar~10.1.80.1~a.default~default", ip="10.1.80.1"),
                ProxyNode(id="router~10.9.9.9~gw.default~default", ip="10.9.9.9"),
            ):
                for table in cache.view(node).resources.values():
                    for resource in table.values():
                        resource.body.SerializeToString()
        finally:
            logging.disable(logging.NOTSET)
    return True
