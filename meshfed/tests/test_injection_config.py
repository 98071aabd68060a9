"""``spec.injection`` of the mesh config: defaults, the kubeconfig taken from the Kubernetes
registry, paths resolved, errors named, and the hub runs the webhook only when enabled."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshfed.config import load_mesh_config
from meshfed.core.resources import ConfigErrors
from meshfed.hub import default_components


def write(tmp_path: Path, injection: str, registries: str = "") -> Path:
    path = tmp_path / "mesh.yaml"
    path.write_text(
        "apiVersion: meshfed.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\n"
        f"spec:\n{registries}  injection:\n{injection}"
    )
    return path


def _webhooks(mesh):
    return [c for c in default_components(mesh) if type(c).__name__ == "InjectionWebhook"]


def test_injection_settings_and_defaults(tmp_path):
    registries = "  registries:\n  - {name: k, kind: kubernetes, kubeconfig: kube/config}\n"
    mesh = load_mesh_config(
        write(
            tmp_path,
            "    listen: 127.0.0.5:8443\n    dnsNames: [hub.example]\n"
            "    ipAddresses: [127.0.0.6]\n    ca: {stateDir: state/ca}\n"
            "    templateRefresh: 2s\n",
            registries,
        )
    )
    s = mesh.injection
    assert s.enabled and s.listen == ("127.0.0.5", 8443)
    assert s.kubeconfig == str(tmp_path / "kube" / "config")  # the registry's, resolved
    assert s.dns_names == ("hub.example",) and s.ip_addresses == ("127.0.0.6",)
    assert s.ca_storage == "file" and s.ca_state_dir == str(tmp_path / "state" / "ca")
    assert s.template_refresh == 2.0 and s.audit_interval == 10.0
    assert s.webhook_configuration == "meshfed-sidecar-injector"
    (webhook,) = _webhooks(mesh)
    assert webhook.settings is s


def test_injection_defaults_to_the_contract(tmp_path):
    mesh = load_mesh_config(write(tmp_path, "    ca: {storage: kubernetes}\n"))
    assert mesh.injection.listen == ("0.0.0.0", 15017)
    assert mesh.injection.ca_storage == "kubernetes" and mesh.injection.ca_secret == "meshfed-ca"


def test_injection_disabled_or_absent_runs_no_webhook(tmp_path):
    assert not _webhooks(load_mesh_config(write(tmp_path, "    enabled: false\n")))
    assert load_mesh_config(None).injection is None


def test_injection_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigErrors) as err:
        load_mesh_config(
            write(
                tmp_path,
                "    listen: nowhere\n    ca: {storage: vault}\n    ipAddresses: [x.y]\n"
                "    auditInterval: 0s\n    colour: blue\n",
            )
        )
    text = str(err.value)
    for field in ("listen", "ca.storage", "ipAddresses[0]", "auditInterval", "colour"):
        assert f"spec.injection.{field}" in text, (field, text)
    assert "expected file or kubernetes" in text


def test_injection_from_the_running_ca(tmp_path):
    mesh = load_mesh_config(
        write(
            tmp_path,
            "    ca: {address: 'meshfed-ca.meshfed-system.svc:15012', rootFile: ca/root.pem,\n"
            "         tokenFile: /var/run/secrets/tokens/hub}\n",
        )
    )
    s = mesh.injection
    assert s.ca_address == "meshfed-ca.meshfed-system.svc:15012"
    assert s.ca_root_file == str(tmp_path / "ca" / "root.pem")
    assert s.ca_token_file == "/var/run/secrets/tokens/hub"


def test_running_ca_needs_its_files_and_excludes_storage(tmp_path):
    with pytest.raises(ConfigErrors) as err:
        load_mesh_config(write(tmp_path, "    ca: {address: 'ca:15012', storage: kubernetes}\n"))
    text = str(err.value)
    assert "injection.ca.storage" in text and "either address" in text
    assert "injection.ca.rootFile" in text and "injection.ca.tokenFile" in text
