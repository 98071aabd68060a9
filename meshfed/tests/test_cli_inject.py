"""``meshfed kube-inject`` from a file and from stdin, with the built-in and a custom template;
``meshfed iptables --dry-run``; bad input is one error line, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from meshfed.cli import main
from meshfed.injection import annotations as A
from meshfed.injection.inject import inject_pod
from meshfed.injection.template import default_template

DEPLOYMENT = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{port: 80, name: http}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      serviceAccountName: web
      containers:
      - {name: app, image: "app:1", ports: [{containerPort: 8080}]}
"""


def test_kube_inject_file(tmp_path: Path, capsys) -> None:
    src = tmp_path / "web.yaml"
    src.write_text(DEPLOYMENT)
    assert main(["kube-inject", "-f", str(src)]) == 0
    service, deployment = yaml.safe_load_all(capsys.readouterr().out)
    assert service["kind"] == "Service" and "template" not in service["spec"]
    pod_template = deployment["spec"]["template"]
    names = [c["name"] for c in pod_template["spec"]["containers"]]
    assert names == ["app", "meshfed-proxy"]
    assert A.STATUS in pod_template["metadata"]["annotations"]
    # The same as the webhook's pure function gives for that template in namespace shop.
    expected = inject_pod(
        list(yaml.safe_load_all(DEPLOYMENT))[1]["spec"]["template"],
        default_template(),
        "shop",
        {"istio-injection": "enabled"},
    ).pod
    assert pod_template == expected
    # Re-injecting the output changes nothing.
    out = tmp_path / "once.yaml"
    assert main(["kube-inject", "-f", str(src), "-o", str(out)]) == 0
    again = tmp_path / "twice.yaml"
    assert main(["kube-inject", "-f", str(out), "-o", str(again)]) == 0
    assert list(yaml.safe_load_all(again.read_text())) == list(yaml.safe_load_all(out.read_text()))


def test_kube_inject_stdin_with_a_configmap_template(tmp_path: Path) -> None:
    template = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "meshfed-sidecar-injector", "namespace": "meshfed-system"},
        "data": {
            "config": "version: t-1\ncontainers:\n- name: side\n  image: 'side:{{namespace}}'\n"
        },
    }
    cm = tmp_path / "cm.yaml"
    cm.write_text(yaml.safe_dump(template))
    done = subprocess.run(
        [sys.executable, "-m", "meshfed.cli", "kube-inject", "-f", "-", "--template", str(cm)],
        input=DEPLOYMENT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    deployment = list(yaml.safe_load_all(done.stdout))[1]
    spec = deployment["spec"]["template"]["spec"]
    assert spec["containers"][1] == {"name": "side", "image": "side:shop"}
    status = json.loads(deployment["spec"]["template"]["metadata"]["annotations"][A.STATUS])
    assert status["version"] == "t-1"


def test_kube_inject_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEPLOYMENT.replace("containerPort: 8080", "containerPort: http"))
    done = subprocess.run(
        [sys.executable, "-m", "meshfed.cli", "kube-inject", "-f", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        f"error: {bad}: Deployment shop/web: spec.template.spec.containers[0].ports[0]"
        ".containerPort: expected a port number 1..65535"
    )
    missing = subprocess.run(
        [sys.executable, "-m", "meshfed.cli", "kube-inject", "-f", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "nope.yaml: cannot read" in missing.stderr
    template = tmp_path / "t.yaml"
    template.write_text("version: v\ncontainers: [{name: s, image: '{{nope}}'}]\n")
    broken = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshfed.cli",
            "kube-inject",
            "-f",
            str(bad),
            "--template",
            str(template),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert broken.returncode == 1 and "placeholder {{nope}} has no value" in broken.stderr


def test_iptables_dry_run(capsys) -> None:
    assert main(["iptables", "--dry-run", "--include-outbound-ip-ranges", "10.96.0.0/12"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "iptables -t nat -A MESHFED_OUTPUT -d 10.96.0.0/12 -j MESHFED_REDIRECT" in lines
    assert main(["iptables", "--dry-run", "--include-outbound-ip-ranges", "everything"]) == 1
