"""What an operator reads off a running hub and a real Envoy sidecar, under Istio's names.

One hub (two static registries) and one real Envoy with an inbound port. Checked: Pilot's
metrics under Istio's names next to meshfed's, ``build_info``, the registry label on registry
events and no ``_created`` series; the ``/debug`` index, ``adsz``, ``endpointz``,
``push_status`` and ``/version``; ``proxy-status`` by short name and IP with the hub's version;
``proxy-config`` tables read from Envoy's admin port with their filters, and ``--source pilot``.
Hosts: 127.<run>.120.x.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from integration.pilot_helpers import addr
from meshfed.config import MeshConfig, RegistryConfig
from meshfed.hub import Hub, default_components
from meshfed.pilot.server import PilotServer
from meshfed.proxy import EnvoyProcess, ProxySpec, wait_ready

ROOT = Path(__file__).resolve().parents[1]
WEB_IP = addr(120, 2)
API_IP = addr(120, 3)
API = "api.default.svc.cluster.local"
WEB = "web.default.svc.cluster.local"
NODE_ID = f"sidecar~{WEB_IP}~web.default~default.svc.cluster.local"


def services(host: str, ip: str, port: int, name: str) -> str:
    return f"""apiVersion: networking.meshfed.io/v1alpha1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{host}]
  resolution: STATIC
  ports:
    - {{number: {port}, name: http, protocol: HTTP}}
  endpoints:
    - {{address: {ip}, ports: {{http: 9080}}, labels: {{version: v1}}}}
"""


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meshfed.cli",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


@pytest.fixture
def info_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="meshfed")
    return caplog


@pytest.fixture
async def mesh(tmp_path: Path, info_logs: pytest.LogCaptureFixture):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "api.yaml").write_text(services(API, API_IP, 80, "api"))
    (tmp_path / "b" / "web.yaml").write_text(services(WEB, WEB_IP, 9080, "web"))
    config = MeshConfig(
        monitoring_address="127.0.0.1:0",
        discovery_address="127.0.0.1:0",
        registries=(
            RegistryConfig("files", "static", {"paths": [str(tmp_path / "a")]}),
            RegistryConfig("vms", "static", {"paths": [str(tmp_path / "b")]}),
        ),
    )
    hub = Hub(config, default_components(config))
    await hub.start()
    pilot = next(c for c in hub.components if isinstance(c, PilotServer))
    hub_url = f"http://127.0.0.1:{hub.monitoring_port}"
    envoy = EnvoyProcess(
        ProxySpec(ip=WEB_IP, workload="web", app_ports="9080:8080", pilot=f"127.0.0.1:{pilot.port}")
    )
    try:
        await envoy.start()
        await wait_ready(envoy, hub_url, timeout=30)
        yield hub, hub_url, tmp_path
    finally:
        await envoy.stop()
        await hub.stop()


def sample(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else r"(\{[^}]*\})?")
    found = re.search(rf"^{pattern} ([0-9.e+]+)$", text, re.M)
    assert found, f"no {name}{{{labels}}} in /metrics"
    return float(found.group(found.lastindex or 1))


async def test_metrics_and_debug_endpoints_as_istio_names_them(mesh) -> None:
    _hub, url, tmp_path = mesh
    _, text = await get(f"{url}/metrics")
    for short in ("cds", "eds", "lds", "rds"):
        assert sample(text, "pilot_xds_pushes", f'type="{short}"') >= 1
        assert sample(text, "pilot_xds_config_size_bytes_count", f'type="{short}"') >= 1
        assert sample(text, "meshfed_pilot_xds_pushes_total", f'type="{short}"') >= 1
    assert sample(text, "pilot_xds", 'version="meshfed"') == 1
    assert sample(text, "pilot_proxy_convergence_time_count") >= 0
    assert sample(text, "pilot_services") == 2
    assert sample(text, "meshfed_build_info") == 1
    assert re.search(r'^istio_build\{component="pilot",tag="[^"]+"\} 1.0$', text, re.M)
    assert sample(text, "pilot_conflict_outbound_listener_tcp_over_current_tcp") == 0
    assert sample(text, "meshfed_registry_events_total", 'registry="vms"') >= 1
    assert sample(text, "meshfed_registry_events_total", 'registry="files"') >= 1
    assert "_created" not in text

    # A registry change: an endpoint trigger, a push, ACKed (convergence observed).
    before = (
        sample(text, "pilot_push_triggers", 'type="endpoint"')
        if "pilot_push_triggers{" in text
        else 0
    )
    (tmp_path / "a" / "api.yaml").write_text(
        services(API, API_IP, 80, "api").replace("version: v1", "version: v2")
    )
    for _ in range(100):
        _, text = await get(f"{url}/metrics")
        if (
            'pilot_push_triggers{type="endpoint"}' in text
            and sample(text, "pilot_push_triggers", 'type="endpoint"') > before
            and sample(text, "pilot_proxy_convergence_time_count") >= 1
        ):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"no endpoint push trigger counted:\n{text}")

    status, body = await get(f"{url}/debug")
    assert status == 200
    paths = {e["path"]: e["help"] for e in json.loads(body)["endpoints"]}
    for path in ("/debug/adsz", "/debug/endpointz", "/debug/push_status", "/debug/syncz",
                 "/debug/registryz", "/debug/configz", "/version", "/metrics"):  # fmt: skip
        assert path in paths, paths
    assert paths["/debug/adsz"]

    _, body = await get(f"{url}/debug/adsz")
    ads = json.loads(body)
    assert ads["totalClients"] == 1
    (client,) = ads["clients"]
    assert client["proxy"] == NODE_ID and client["metadata"]["ip"] == WEB_IP
    eds = client["watches"]["type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"]
    assert f"outbound|80||{API}" in eds

    _, body = await get(f"{url}/debug/endpointz?service={API}")
    (instance,) = json.loads(body)
    assert instance["endpoint"]["address"] == API_IP and instance["endpoint"]["port"] == 9080
    assert instance["endpoint"]["registry"] == "files"
    assert instance["endpoint"]["labels"] == {"version": "v2"}

    # The trigger is counted when the event arrives; its push follows after the debounce.
    for _ in range(100):
        _, body = await get(f"{url}/debug/push_status")
        push = json.loads(body)
        if push["Pushes"] >= 1 and push["End"] >= push["Start"] > 0:
            break
        await asyncio.sleep(0.1)
    assert push["Pushes"] >= 1 and push["End"] >= push["Start"] > 0, push
    assert push["Triggers"].get("registry", 0) >= 1 and push["Responses"] >= 1
    assert f"outbound|80||{API}" in push["EndpointsChanged"]

    _, body = await get(f"{url}/version")
    assert json.loads(body)["version"] not in ("", "unknown")


async def test_proxy_status_and_config_by_short_name(mesh, info_logs) -> None:
    _, url, _ = mesh
    # The sidecar's connection is logged with its node id as a field (``--log-format json``).
    records = [*info_logs.get_records("setup"), *info_logs.records]  # it connected in setup
    connected = [r for r in records if r.getMessage().startswith("proxy ")]
    assert any(getattr(r, "proxy", None) == NODE_ID for r in connected), records
    for name in ("web.default", WEB_IP, NODE_ID):
        code, out, err = await run_cli("proxy-status", name, "--hub", url, "--no-envoy")
        assert code == 0, out + err
        header, row = out.splitlines()[:2]
        assert "HUB VERSION" in header and row.startswith(NODE_ID), out
        assert row.split()[2:7] == ["SYNCED", "SYNCED", "SYNCED", "SYNCED", "yes"], out
    code, out, _ = await run_cli("proxy-status", "--hub", url, "-o", "yaml")
    doc = yaml.safe_load(out)
    assert code == 0 and doc["hub"]["version"] != "unknown" and len(doc["proxies"]) == 1
    code, _, err = await run_cli("proxy-status", "nope.default", "--hub", url)
    assert code == 1 and "not connected" in err

    code, out, err = await run_cli("proxy-config", "cluster", "web.default", "--hub", url)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["SERVICE", "FQDN", "PORT"]
    assert any(line.split()[:4] == [API, "80", "-", "outbound"] for line in lines), out
    assert any(line.split()[:2] == ["-", "9080"] or "inbound" in line for line in lines), out
    code, out, _ = await run_cli(
        "proxy-config", "cluster", WEB_IP, "--hub", url, "--direction", "inbound"
    )
    assert "inbound" in out and API not in out, out
    code, out, _ = await run_cli("proxy-config", "cluster", WEB_IP, "--hub", url, "--fqdn", "api")
    assert API in out and "inbound" not in out, out

    code, out, _ = await run_cli("proxy-config", "listener", "web.default", "--hub", url)
    assert "outbound_http" in out and f"inbound|{WEB_IP}:9080" in out, out
    code, out, _ = await run_cli(
        "proxy-config", "listener", "web.default", "--hub", url, "--port", "9080"
    )
    assert "outbound_http" not in out and "9080" in out, out

    code, out, _ = await run_cli("proxy-config", "route", "web.default", "--hub", url)
    assert code == 0 and "outbound_http" in out and f"outbound|80||{API}" in out, out
    code, out, _ = await run_cli("proxy-config", "endpoint", "web.default", "--hub", url)
    assert code == 0 and f"{API_IP}:9080" in out and "HEALTHY" in out, out
    code, out, _ = await run_cli(
        "proxy-config", "endpoint", "web.default", "--hub", url, "--fqdn", WEB
    )
    assert f"{API_IP}:9080" not in out, out

    code, out, _ = await run_cli("proxy-config", "bootstrap", "web.default", "--hub", url)
    assert code == 0 and NODE_ID in out, out
    code, out, _ = await run_cli(
        "proxy-config", "bootstrap", "web.default", "--hub", url, "-o", "json"
    )
    assert json.loads(out)["node"]["id"] == NODE_ID
    code, out, _ = await run_cli("proxy-config", "secret", "web.default", "--hub", url)
    assert code == 0 and out.splitlines()[0].startswith("RESOURCE NAME"), out
    code, out, _ = await run_cli("proxy-config", "all", "web.default", "--hub", url)
    for title in ("Clusters", "Listeners", "Routes", "Endpoints", "Secrets", "Bootstrap"):
        assert f"{title} ({NODE_ID}):" in out, out

    # What Pilot sent, as before: the same cluster names as Envoy holds (dynamic ones).
    code, out, _ = await run_cli(
        "proxy-config", "cluster", "web.default", "--hub", url, "--source", "pilot", "-o", "json"
    )
    sent = {c["name"] for c in json.loads(out)}
    code, out, _ = await run_cli(
        "proxy-config", "cluster", "web.default", "--hub", url, "-o", "json"
    )
    held = {c["name"] for c in json.loads(out)}
    assert f"outbound|80||{API}" in sent and sent <= held, (sent, held)
