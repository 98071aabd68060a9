"""The chart as ``helm`` renders it: lint-clean, ``manifests/`` is exactly its rendering, the mesh
config it writes is one the hub accepts, and its RBAC grants each component what the code reads.

No server: these run the real ``helm`` binary only. What the API server says about the same
objects is ``test_chart_install.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from integration.chart_helpers import (
    CHART,
    MANIFESTS,
    container,
    documents,
    mesh_yaml,
    of_kind,
    one,
    render,
    run_helm,
)
from meshfed.adapters.kubernetes.configstore import REGISTRY_KINDS, ROUTING_KINDS
from meshfed.adapters.static.kinds import PROTOCOL_ALIASES
from meshfed.config import load_mesh_config
from meshfed.injection.template import parse_template
from meshfed.mixer.config.kube import GROUP as MIXER_GROUP
from meshfed.mixer.config.kube import mixer_kinds, plural
from meshfed.mixer.handlers.api import load_kinds
from meshfed.pilot.config.parse import EGRESS_PROTOCOLS
from meshfed.registry.model import Protocol
from meshfed.tools.render_manifests import manifests

FEDERATED = [
    "mixer.enabled=true",
    "registries.consul.enabled=true",
    "registries.consul.addresses={10.0.0.11:8500,https://10.0.0.12:8501}",
    "registries.consul.datacenters={dc1}",
    "registries.consul.tokenSecret.name=consul-acl",
    "registries.eureka.enabled=true",
    "registries.eureka.servers={http://10.0.0.10:8761/eureka}",
    "registries.kubernetes.namespaceSelector=mesh=on",
]


def test_helm_lint_passes_with_defaults_and_with_everything_on() -> None:
    for values in ([], FEDERATED):
        argv = ["lint", str(CHART), "--strict"]
        for value in values:
            argv += ["--set", value]
        done = run_helm(*argv)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "0 chart(s) failed" in done.stdout


def test_manifests_are_the_chart_rendering() -> None:
    expected = manifests(render(values=["createNamespace=true"]))
    shipped = {
        str(p.relative_to(MANIFESTS)): p.read_text() for p in sorted(MANIFESTS.glob("*/*.yaml"))
    }
    assert sorted(shipped) == sorted(expected), "run python -m meshfed.tools.render_manifests"
    for name, text in expected.items():
        assert shipped[name] == text, f"{name}: run python -m meshfed.tools.render_manifests"
    # Each CRD file of the chart is shipped as written.
    for crd in (CHART / "crds").glob("*.yaml"):
        assert crd.read_text() in shipped[f"crds/{crd.name}"]


def _load(tmp_path: Path, text: str, name: str = "mesh.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return load_mesh_config(path)


def test_the_mesh_config_written_is_one_the_hub_accepts(tmp_path: Path) -> None:
    docs = documents(render("mesh-a", ["injector.enabled=false"]))
    mesh = _load(tmp_path, mesh_yaml(docs))
    assert mesh.system_namespace == "mesh-a"
    assert [(r.name, r.kind) for r in mesh.registries] == [("kubernetes", "kubernetes")]
    assert mesh.monitoring_address == "0.0.0.0:15014" and mesh.mixer is None

    docs = documents(render("mesh-b", [*FEDERATED, "injector.enabled=false"]))
    mesh = _load(tmp_path, mesh_yaml(docs))
    assert [(r.name, r.kind) for r in mesh.registries] == [
        ("kubernetes", "kubernetes"),
        ("consul", "consul"),
        ("eureka", "eureka"),
    ]
    kube, consul, eureka = (r.params for r in mesh.registries)
    assert kube["namespaceSelector"] == "mesh=on"
    assert consul["addresses"] == ["10.0.0.11:8500", "https://10.0.0.12:8501"]
    assert consul["datacenters"] == ["dc1"] and "token" not in consul
    assert eureka["servers"] == ["http://10.0.0.10:8761/eureka"]
    assert mesh.mixer is not None and mesh.mixer.enabled and mesh.mixer.listen == "0.0.0.0:9091"
    hub = container(docs, "meshfed-hub")
    (token,) = hub["env"]
    assert token["name"] == "CONSUL_HTTP_TOKEN"
    assert token["valueFrom"]["secretKeyRef"] == {"name": "consul-acl", "key": "token"}
    ports = {p["name"]: p["port"] for p in one(docs, "Service", "meshfed-hub")["spec"]["ports"]}
    assert ports == {"grpc-xds": 15010, "http-monitoring": 15014, "grpc-mixer": 9091}


def test_the_webhook_points_at_the_port_the_mesh_config_listens_on(tmp_path: Path) -> None:
    docs = documents(render("mesh-c", ["injector.port=15117", "injector.failurePolicy=Ignore"]))
    injection = yaml.safe_load(mesh_yaml(docs))["spec"]["injection"]
    assert injection == {
        "listen": "0.0.0.0:15117",
        "ca": {
            "address": "meshfed-ca.mesh-c.svc:15012",
            "rootFile": "/var/run/meshfed/ca-root/root-cert.pem",
            "tokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token",
        },
    }
    # The CA names the hub's Service on the hub's certificate, and publishes the bundle the
    # hub mounts to authenticate it.
    args = container(docs, "meshfed-ca")["args"]
    assert args[args.index("--hub-service-account") + 1] == "mesh-c/meshfed-hub"
    assert args[args.index("--root-configmap") + 1] == "meshfed-ca-root-cert"
    volumes = one(docs, "Deployment", "meshfed-hub")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "ca-root", "configMap": {"name": "meshfed-ca-root-cert"}} in volumes
    webhook = one(docs, "MutatingWebhookConfiguration", "meshfed-sidecar-injector")
    for entry in webhook["webhooks"]:
        assert entry["clientConfig"]["service"] == {
            "name": "meshfed-hub",
            "namespace": "mesh-c",
            "path": "/inject",
            "port": 15117,
        }
        assert entry["failurePolicy"] == "Ignore"
        assert "caBundle" not in entry["clientConfig"]  # the hub writes it
    ports = {p["name"]: p["port"] for p in one(docs, "Service", "meshfed-hub")["spec"]["ports"]}
    assert ports["https-inject"] == 15117
    # No template given: the ConfigMap has no key, so the hub injects its built-in template
    # (an empty document would be an invalid template, reported and ignored).
    template = one(docs, "ConfigMap", "meshfed-sidecar-injector")
    assert not template.get("data"), template
    # A template given as a value reaches the hub as written.
    from importlib import resources

    builtin = resources.files("meshfed.injection").joinpath("default-template.yaml").read_text()
    site = yaml.safe_load(builtin) | {"version": "site-1"}
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump({"injector": {"config": site}}))
    done = run_helm("template", "meshfed", str(CHART), "-n", "mesh-c", "-f", str(values_file))
    assert done.returncode == 0, done.stderr
    text = one(documents(done.stdout), "ConfigMap", "meshfed-sidecar-injector")["data"]["config"]
    assert parse_template(text, "chart").version == "site-1"
    off = documents(render("mesh-c", ["injector.enabled=false"]))
    assert not list(of_kind(off, "MutatingWebhookConfiguration"))
    assert "--hub-service-account" not in container(off, "meshfed-ca")["args"]
    assert "https-inject" not in str(one(off, "Service", "meshfed-hub"))


def _grants(docs, group: str, resource: str, verbs: set[str]) -> list[str]:
    """Names of the ClusterRoles whose rules give all ``verbs`` on ``group``/``resource``."""
    out = []
    for role in of_kind(docs, "ClusterRole"):
        for rule in role["rules"]:
            if (
                group in rule["apiGroups"]
                and resource in rule["resources"]
                and verbs <= set(rule["verbs"])
                and "resourceNames" not in rule
            ):
                out.append(role["metadata"]["name"])
    return out


def test_every_kind_the_hub_reads_is_granted_to_its_component() -> None:
    docs = documents(render("mesh-d", ["mixer.enabled=true"]))
    read = {"get", "list", "watch"}
    for kind in REGISTRY_KINDS:
        assert _grants(docs, kind.group, kind.plural, read) == ["meshfed-registries-mesh-d"], kind
    for kind in ROUTING_KINDS:
        assert _grants(docs, kind.group, kind.plural, read) == ["meshfed-pilot-mesh-d"], kind
    for kind in mixer_kinds(load_kinds()):
        assert _grants(docs, MIXER_GROUP, plural(kind), read) == ["meshfed-mixer-mesh-d"], kind
    # Nothing grants a write on a watched kind, nor any access to Secrets, to the hub.
    bindings = {b["roleRef"]["name"]: b["subjects"] for b in of_kind(docs, "ClusterRoleBinding")}
    for role in of_kind(docs, "ClusterRole"):
        name = role["metadata"]["name"]
        if bindings[name] != [
            {"kind": "ServiceAccount", "name": "meshfed-hub", "namespace": "mesh-d"}
        ]:
            continue
        for rule in role["rules"]:
            assert "secrets" not in rule["resources"], name
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], name
            if set(rule["verbs"]) - read:
                # Creating cannot be limited to a name by RBAC: the injector's one create is
                # of ConfigMaps (the trust bundle), every other write names its object.
                creates = rule["resources"] == ["configmaps"] and rule["verbs"] == ["create"]
                named = rule.get("resourceNames")
                assert rule["resources"] == ["events"] or named or creates, (name, rule)
    # Without Mixer, no Mixer role.
    assert not _grants(documents(render("mesh-d")), MIXER_GROUP, "rules", read)


def test_probes_ask_the_monitoring_ports_healthz() -> None:
    docs = documents(render())
    for name, port in (("meshfed-hub", 15014), ("meshfed-ca", 15016)):
        c = container(docs, name)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["http-monitoring"] == port
        assert c["readinessProbe"]["httpGet"] == {
            "path": "/healthz/ready",
            "port": "http-monitoring",
        }
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz/live", "port": "http-monitoring"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["registries.consul.enabled=true"], "registries.consul.addresses: expected at least one"),
        (["registries.eureka.enabled=true"], "registries.eureka.servers: expected at least one"),
        (["injector.failurePolicy=Sometimes"], "failurePolicy"),
        (["registries.eureka.servers={eureka:8761}"], "servers"),
    ],
)
def test_bad_values_are_refused_naming_the_value(values: list[str], message: str) -> None:
    argv = ["template", "meshfed", str(CHART)]
    for value in values:
        argv += ["--set", value]
    done = run_helm(*argv)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


# Short names of Istio's own CRDs (networking, security, telemetry, extensions): a cluster that
# runs both must resolve `kubectl get se` to one kind.
ISTIO_SHORT_NAMES = {"se", "we", "wg", "vs", "dr", "gw", "pa", "ra", "ap", "tm", "wp", "ef"}


def _crds() -> dict[str, dict]:
    out = {}
    for path in (CHART / "crds").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out[doc["metadata"]["name"]] = doc
    return out


def _schema(crd: dict) -> dict:
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]


def test_protocol_enums_are_what_the_parsers_accept() -> None:
    crds = _crds()
    entry = _schema(crds["serviceentries.networking.meshfed.io"])
    allowed = {p.value for p in Protocol} | set(PROTOCOL_ALIASES)
    enum = entry["ports"]["items"]["properties"]["protocol"]["enum"]
    assert set(enum) == allowed | {p.lower() for p in allowed}
    assert "HTTPX" not in enum
    for group in ("config.meshfed.io", "config.istio.io"):
        egress = _schema(crds[f"egressrules.{group}"])
        enum = egress["ports"]["items"]["properties"]["protocol"]["enum"]
        assert set(enum) == set(EGRESS_PROTOCOLS) | {p.lower() for p in EGRESS_PROTOCOLS}


def test_no_short_name_clashes_with_istio_or_another_meshfed_kind() -> None:
    seen: dict[str, str] = {}
    for name, crd in _crds().items():
        for short in crd["spec"]["names"].get("shortNames", []):
            assert short not in ISTIO_SHORT_NAMES, (name, short)
            assert short not in seen, (name, seen.get(short), short)
            seen[short] = name
    assert seen["mse"] == "serviceentries.networking.meshfed.io"
    assert seen["mwe"] == "workloadentries.networking.meshfed.io"
