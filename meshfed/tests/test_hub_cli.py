"""The hub's debug endpoints and the CLI that reads them, on a real monitoring port."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from meshfed.cli import main
from meshfed.config import MeshConfig, RegistryConfig, load_mesh_config
from meshfed.core.resources import ConfigErrors
from meshfed.hub import Hub

HOST = "web.default.svc.cluster.local"


def write_services(path: Path, port: int = 80, protocol: str = "HTTP") -> None:
    path.write_text(
        textwrap.dedent(
            f"""
            apiVersion: networking.meshfed.io/v1alpha1
            kind: ServiceEntry
            metadata: {{name: web}}
            spec:
              hosts: [{HOST}]
              location: MESH_INTERNAL
              ports: [{{number: {port}, name: http, protocol: {protocol}}}]
              endpoints:
                - {{address: 127.0.0.2, labels: {{version: v1}}, serviceAccount: web}}
            """
        )
    )


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
async def hub(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_services(tmp_path / "a" / "web.yaml")
    write_services(tmp_path / "b" / "web.yaml", protocol="TCP")
    mesh = MeshConfig(
        monitoring_address="127.0.0.1:0",
        registries=(
            RegistryConfig("primary", "static", {"paths": [str(tmp_path / "a")]}),
            RegistryConfig("vms", "static", {"paths": [str(tmp_path / "b")]}),
        ),
    )
    hub = Hub(mesh)
    await hub.start()
    for _ in range(100):
        if hub.aggregate.synced:
            break
        await asyncio.sleep(0.05)
    yield hub, f"http://127.0.0.1:{hub.monitoring_port}"
    await hub.stop()


async def test_registryz_ready_and_metrics(hub):
    _, url = hub
    status, body = await asyncio.to_thread(get, f"{url}/healthz/ready")
    assert status == 200 and json.loads(body)["ready"] is True
    status, body = await asyncio.to_thread(get, f"{url}/debug/registryz")
    view = json.loads(body)
    (svc,) = view["services"]
    assert svc["hostname"] == HOST and svc["registries"] == ["primary", "vms"]
    assert sorted(e["registry"] for e in svc["endpoints"]) == ["primary", "vms"]
    assert svc["endpoints"][0]["identity"] == "spiffe://cluster.local/ns/default/sa/web"
    (conflict,) = view["conflicts"]
    assert conflict["field"] == "port http" and conflict["winner"] == "primary"
    status, body = await asyncio.to_thread(get, f"{url}/metrics")
    text = body.decode()
    assert "meshfed_registry_conflicts 1.0" in text
    assert 'meshfed_registry_synced{kind="static",registry="vms"} 1.0' in text


async def test_cli_registry_list_and_get(hub, capsys):
    _, url = hub
    assert await asyncio.to_thread(main, ["registry", "list", "--hub", url]) == 0
    out, err = capsys.readouterr()
    assert HOST in out and "primary,vms" in out and "80/HTTP" in out and "2/2" in out
    assert "conflict:" in err and "primary wins by precedence" in err
    assert await asyncio.to_thread(main, ["registry", "get", HOST, "--hub", url]) == 0
    out, _ = capsys.readouterr()
    assert "127.0.0.2" in out and "spiffe://cluster.local/ns/default/sa/web" in out
    assert await asyncio.to_thread(main, ["registry", "get", "nope.local", "--hub", url]) == 1


def test_validate_exit_codes(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    write_services(good)
    assert main(["validate", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("HTTP", "HTTPX") + "---\nkind: Gizmo\n")
    assert main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}: ServiceEntry default/web: spec.ports[0].protocol: expected one of" in err
    assert "document 2: apiVersion: is required" in err or "Gizmo" in err


def test_mesh_config_file_and_errors(tmp_path):
    path = tmp_path / "mesh.yaml"
    path.write_text(
        textwrap.dedent(
            """
            apiVersion: meshfed.io/v1alpha1
            kind: MeshConfig
            metadata: {name: mesh}
            spec:
              trustDomain: example.org
              listen: {monitoring: "127.0.0.1:0"}
              registries:
                - {name: vms, kind: static, paths: [services]}
            """
        )
    )
    mesh = load_mesh_config(path)
    assert mesh.trust_domain == "example.org"
    assert mesh.registries[0].params["paths"] == [str(tmp_path / "services")]
    path.write_text(path.read_text().replace('"127.0.0.1:0"', "nowhere"))
    with pytest.raises(ConfigErrors, match=r"spec\.listen\.monitoring: expected host:port"):
        load_mesh_config(path)


def test_meshfed_up_console_script_serves_the_embedded_default(tmp_path):
    """What a new user runs first: `meshfed up` with no config at all."""
    port = 15400 + os.getpid() % 500
    config = tmp_path / "mesh.yaml"
    config.write_text(
        "apiVersion: meshfed.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: m}\n"
        f"spec:\n  listen: {{monitoring: '127.0.0.1:{port}'}}\n  registries:\n"
        "    - {name: static, kind: static, paths: ["
        + str(Path(__file__).parents[1] / "defaults" / "services.yaml")
        + "]}\n"
    )
    meshfed = Path(sys.executable).parent / "meshfed"
    proc = subprocess.Popen(
        [str(meshfed), "up", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        status = 0
        while time.monotonic() < deadline:
            try:
                status, _ = get(f"http://127.0.0.1:{port}/healthz/ready")
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        assert status == 200, proc.stdout.read1().decode() if proc.poll() is not None else ""
        out = subprocess.run(
            [str(meshfed), "registry", "list", "--config", str(config)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "reviews.default.svc.cluster.local" in out and "2/2" in out
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


async def test_bad_registry_entry_is_named_not_a_traceback():
    from meshfed.hub import RegistryConfigError

    mesh = MeshConfig(
        monitoring_address="127.0.0.1:0",
        registries=(RegistryConfig("legacy", "zookeeper", {}),),
        source="mesh.yaml",
    )
    hub = Hub(mesh)
    with pytest.raises(RegistryConfigError) as caught:
        await hub.start()
    assert str(caught.value).startswith(
        "mesh.yaml: MeshConfig: spec.registries[0] (legacy, kind zookeeper): unknown registry kind"
    )
    await hub.stop()


def test_each_bad_registry_parameter_is_its_own_line_naming_the_entry(tmp_path, capsys):
    """Several problems in one Consul or Eureka entry: one line each (no escaped line
    break), each naming the file, the entry and the key, in `validate` and in `up`."""
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(
        textwrap.dedent(
            """
            apiVersion: meshfed.io/v1alpha1
            kind: MeshConfig
            metadata: {name: mesh}
            spec:
              listen: {monitoring: "127.0.0.1:0", discovery: "127.0.0.1:0"}
              registries:
                - {name: dc1, kind: consul, adress: "127.0.0.1:8500", wait: 20m}
                - {name: eu, kind: eureka, servers: ["ftp://x"], colour: red}
            """
        )
    )
    for argv in (["validate", str(mesh)], ["up", "--config", str(mesh)]):
        assert main(argv) == 1
        lines = [line for line in capsys.readouterr().err.splitlines() if "registries[" in line]
        assert "\\n" not in "".join(lines)
        wanted = [
            ("(dc1, kind consul)", "adress: unknown key"),
            ("(dc1, kind consul)", "wait: expected at most 10m"),
            ("(eu, kind eureka)", "colour: unknown field"),
            ("(eu, kind eureka)", "servers[0]: expected an http(s) URL"),
        ]
        for entry, problem in wanted:
            assert [x for x in lines if entry in x and problem in x and "mesh.yaml" in x], (
                argv,
                problem,
                lines,
            )


def test_validate_checks_registry_parameters_as_the_hub_would(tmp_path, capsys):
    """`meshfed validate` constructs each registry's adapter (no I/O), so a typo in a Consul
    or Eureka entry fails here, before `meshfed up` would refuse it."""
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(
        textwrap.dedent(
            """
            apiVersion: meshfed.io/v1alpha1
            kind: MeshConfig
            metadata: {name: mesh}
            spec:
              registries:
                - {name: vms, kind: static, paths: [services]}
                - {name: dc1, kind: consul, adress: "127.0.0.1:8500"}
                - {name: eu, kind: eureka}
                - {name: zk, kind: zookeeper}
            """
        )
    )
    assert main(["validate", str(mesh)]) == 1
    err = capsys.readouterr().err
    assert "spec.registries[1] (dc1, kind consul): registries[dc1].adress: unknown key" in err
    assert "spec.registries[2] (eu, kind eureka)" in err and "servers: is required" in err
    assert "spec.registries[3] (zk, kind zookeeper): unknown registry kind 'zookeeper'" in err
    assert "registries[0]" not in err  # the static entry is fine
    fixed = [
        line.replace("adress", "address").replace(
            "kind: eureka}", "kind: eureka, servers: [http://127.0.0.1:8761/eureka]}"
        )
        for line in mesh.read_text().splitlines()
        if "zookeeper" not in line
    ]
    mesh.write_text("\n".join(fixed) + "\n")
    assert main(["validate", str(mesh)]) == 0, capsys.readouterr().err


def test_proxy_refuses_a_bad_trace_collector_before_starting(capsys):
    import pytest

    with pytest.raises(SystemExit) as exited:
        main(["proxy", "--mixer", "127.0.0.1:9091", "--mixer-trace-collector", "no-port"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--mixer-trace-collector" in err and "host:port" in err and "Traceback" not in err
