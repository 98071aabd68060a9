"""``meshfed validate`` and ``meshfed up`` refuse the same mesh configs, naming the field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from meshfed.cli import main
from meshfed.validate import validate_files

MESH = {
    "apiVersion": "meshfed.io/v1alpha1",
    "kind": "MeshConfig",
    "metadata": {"name": "mesh"},
    "spec": {
        "listen": {"monitoring": "127.0.0.1:0", "discovery": "127.0.0.1:0"},
        "registries": [{"name": "files", "kind": "static", "paths": ["."]}],
    },
}


def _with(path: tuple, value: object) -> dict:
    doc = copy.deepcopy(MESH)
    target = doc
    for step in path[:-1]:
        target = target.setdefault(step, {})
    target[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("spec", "listen", "monitoring"), "999.1.1.1:15014", "spec.listen.monitoring"),
        (("spec", "listen", "monitoring"), "127.0.0.1:99999", "spec.listen.monitoring"),
        (("spec", "listen", "discovery"), "127.0.0.1:70000", "spec.listen.discovery"),
        (("spec", "pilot", "mtls"), {"mode": "BOGUS"}, "spec.pilot.mtls.mode"),
        (("spec", "pilot", "debounceQiet"), 1, "spec.pilot.debounceQiet"),
        (
            ("spec", "pilot", "egressDnsResolvers"),
            ["not-an-ip"],
            "spec.pilot.egressDnsResolvers[0]",
        ),
        (("spec", "trustDomain"), "my domain", "spec.trustDomain"),
        (("spec", "initialSyncTimeout"), "30", "spec.initialSyncTimeout"),
        (("spec", "initialSyncTimeout"), "-5s", "spec.initialSyncTimeout"),
        (("spec", "initialSyncTimeout"), "2h", "spec.initialSyncTimeout"),
        (("spec", "initialSyncTimeout"), 30, "spec.initialSyncTimeout"),
        (("spec", "tracing"), {"sampling": 5}, "spec.tracing.collector"),
        (("spec", "tracing"), {"collector": "127.0.0.1"}, "spec.tracing.collector"),
        (
            ("spec", "tracing"),
            {"collector": "127.0.0.1:4317", "sampling": 101},
            "spec.tracing.sampling",
        ),
        (("spec", "tracing"), {"collector": "127.0.0.1:4317", "sample": 1}, "spec.tracing.sample"),
        (
            ("spec", "registries"),
            [{"name": "files", "kind": "static", "path": ["."]}],
            "spec.registries[0]",
        ),
        (
            ("spec", "extensionProviders"),
            [{"name": "opa", "envoyExtAuthzGrpc": {"service": "opa", "port": 9191}}],
            "spec.extensionProviders",
        ),
    ],
)
def test_validate_and_up_refuse_the_same_mesh_config(tmp_path: Path, capsys, path, value, field):
    file = tmp_path / "mesh.yaml"
    file.write_text(yaml.safe_dump(_with(path, value)))
    _, errors, _ = validate_files([file])
    assert any(e.field.startswith(field) for e in errors), [str(e) for e in errors]
    capsys.readouterr()
    assert main(["up", "-c", str(file)]) == 1  # refused before anything starts
    err = capsys.readouterr().err
    assert field.split("[")[0] in err and "Traceback" not in err


def test_duplicate_hosts_are_reported_by_validate_as_the_static_registry_does(tmp_path: Path):
    from meshfed.adapters.static.registry import StaticRegistry
    from meshfed.registry.aggregate import AggregateRegistry

    entry = {
        "apiVersion": "networking.meshfed.io/v1alpha1",
        "kind": "ServiceEntry",
        "metadata": {"name": "a"},
        "spec": {"hosts": ["api.example.com"], "ports": [{"number": 80, "name": "http"}]},
    }
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(entry))
    entry["metadata"]["name"] = "b"
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(entry))
    files = sorted(tmp_path.glob("*.yaml"))
    _, errors, _ = validate_files(files)
    registry = StaticRegistry(AggregateRegistry().add_member("files"), [tmp_path], "cluster.local")
    hub_errors = registry.reload()
    assert [str(e) for e in errors] == [str(e) for e in hub_errors]
    assert len(errors) == 1 and "already declared" in str(errors[0])


@pytest.mark.parametrize(
    ("value", "seconds"), [(None, 30.0), ("5s", 5.0), ("0s", 0.0), ("2m", 120.0)]
)
def test_initial_sync_timeout_is_read_as_a_duration(tmp_path: Path, value, seconds):
    from meshfed.config import load_mesh_config

    file = tmp_path / "mesh.yaml"
    doc = _with(("spec", "initialSyncTimeout"), value) if value else MESH
    file.write_text(yaml.safe_dump(doc))
    assert validate_files([file])[1] == []
    assert load_mesh_config(file).initial_sync_timeout == seconds


def test_tracing_is_read_with_istio_style_sampling_percent(tmp_path: Path):
    from meshfed.config import load_mesh_config

    file = tmp_path / "mesh.yaml"
    file.write_text(yaml.safe_dump(MESH))
    assert not load_mesh_config(file).tracing.enabled
    doc = _with(("spec", "tracing"), {"collector": "127.0.0.1:4317", "sampling": 12.5})
    file.write_text(yaml.safe_dump(doc))
    assert validate_files([file])[1] == []
    tracing = load_mesh_config(file).tracing
    assert (tracing.enabled, tracing.collector, tracing.sampling) == (True, "127.0.0.1:4317", 12.5)
    off = _with(("spec", "tracing"), {"enabled": False})
    file.write_text(yaml.safe_dump(off))
    assert not load_mesh_config(file).tracing.enabled
