"""``spec.mixer`` of the mesh config: parsed with paths resolved, errors named, and the hub
runs Mixer only when it is enabled."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshfed.config import load_mesh_config
from meshfed.core.resources import ConfigErrors
from meshfed.hub import default_components


def write(tmp_path: Path, mixer: str) -> Path:
    path = tmp_path / "mesh.yaml"
    path.write_text(
        "apiVersion: meshfed.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\n"
        f"spec:\n  mixer:\n{mixer}"
    )
    return path


def test_mixer_settings(tmp_path):
    mesh = load_mesh_config(
        write(
            tmp_path,
            "    enabled: true\n    listen: 127.0.0.1:9191\n    configPaths: [policy]\n"
            "    handlerTimeout: 250ms\n    failOpen: true\n",
        )
    )
    assert mesh.mixer.enabled and mesh.mixer.listen == "127.0.0.1:9191"
    assert mesh.mixer.config_paths == (str(tmp_path / "policy"),)
    assert mesh.mixer.handler_timeout == 0.25 and mesh.mixer.fail_open
    assert any(type(c).__name__ == "Mixer" for c in default_components(mesh))


def test_mixer_disabled_is_not_run(tmp_path):
    mesh = load_mesh_config(write(tmp_path, "    enabled: false\n"))
    assert not any(type(c).__name__ == "Mixer" for c in default_components(mesh))


def test_mixer_setting_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigErrors) as err:
        load_mesh_config(write(tmp_path, "    enabled: yes-please\n    handlerTimeout: soon\n"))
    text = str(err.value)
    assert "spec.mixer.enabled: expected true or false" in text
    assert "spec.mixer.handlerTimeout: expected a positive duration" in text


def test_validate_compiles_mixer_documents(tmp_path):
    from meshfed.validate import validate_files

    path = tmp_path / "policy.yaml"
    path.write_text(
        "apiVersion: config.istio.io/v1alpha2\nkind: checknothing\n"
        "metadata: {name: x, namespace: istio-system}\nspec:\n---\n"
        "apiVersion: config.istio.io/v1alpha2\nkind: rule\n"
        "metadata: {name: r, namespace: istio-system}\n"
        'spec:\n  match: source.lables["app"] == 3\n'
        "  actions:\n  - {handler: nope.denier, instances: [x.checknothing]}\n"
    )
    count, errors, _ = validate_files([path])
    text = [str(e) for e in errors]
    assert count == 2
    assert any(
        f"{path}: rule istio-system/r: spec.match:" in t and "source.lables" in t for t in text
    ), text
    assert any("spec.actions[0].handler: no handler nope.denier.istio-system" in t for t in text)


def test_mixer_data_path_reaches_pilots_plugin(tmp_path):
    from meshfed.pilot.mixer_plugin import MixerPlugin

    mesh = load_mesh_config(
        write(
            tmp_path,
            "    enabled: true\n    dataPath:\n      failOpen: false\n      report: false\n"
            "      disabledServices: [db.default.svc.cluster.local]\n"
            "      quotas: [requestcount]\n",
        )
    )
    data = mesh.mixer.data_path
    assert (data.enabled, data.fail_open, data.check, data.report) == (True, False, True, False)
    (pilot,) = [c for c in default_components(mesh) if type(c).__name__ == "PilotServer"]
    (plugin,) = [p for p in pilot.plugins if isinstance(p, MixerPlugin)]
    assert plugin.config.enabled and not plugin.config.fail_open and not plugin.config.report
    assert plugin.config.disabled_services == {"db.default.svc.cluster.local"}
    assert plugin.config.quotas == ("requestcount",)


def test_mixer_data_path_is_off_without_mixer(tmp_path):
    from meshfed.pilot.mixer_plugin import MixerPlugin

    for mixer in ("    enabled: false\n    dataPath: {enabled: true}\n", None):
        mesh = load_mesh_config(write(tmp_path, mixer)) if mixer else default_mesh()
        (pilot,) = [c for c in default_components(mesh) if type(c).__name__ == "PilotServer"]
        (plugin,) = [p for p in pilot.plugins if isinstance(p, MixerPlugin)]
        assert not plugin.config.enabled


def default_mesh():
    return load_mesh_config(None)


def test_mixer_data_path_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigErrors) as err:
        load_mesh_config(write(tmp_path, "    enabled: true\n    dataPath: {failOpen: 1, x: 2}\n"))
    text = str(err.value)
    assert "spec.mixer.dataPath.failOpen: expected true or false" in text
    assert "spec.mixer.dataPath" in text and "x" in text


def test_disabled_routes_reach_pilots_plugin_and_bad_ones_are_named(tmp_path):
    from meshfed.pilot.mixer_plugin import MixerPlugin

    mesh = load_mesh_config(
        write(
            tmp_path,
            "    enabled: true\n    dataPath:\n      disabledRoutes:\n"
            "      - {service: web.default.svc.cluster.local, pathPrefix: /healthz}\n",
        )
    )
    (pilot,) = [c for c in default_components(mesh) if type(c).__name__ == "PilotServer"]
    (plugin,) = [p for p in pilot.plugins if isinstance(p, MixerPlugin)]
    assert plugin.config.disabled_routes == (("web.default.svc.cluster.local", "/healthz"),)
    with pytest.raises(ConfigErrors) as err:
        load_mesh_config(
            write(
                tmp_path,
                "    enabled: true\n    dataPath:\n      disabledRoutes:\n"
                "      - {service: web, pathPrefix: healthz}\n      - {pathPrefix: /x}\n",
            )
        )
    text = str(err.value)
    assert "spec.mixer.dataPath.disabledRoutes[0].pathPrefix: expected a path starting" in text
    assert "spec.mixer.dataPath.disabledRoutes[1].service" in text
