"""``meshfed analyze --hub``: the running hub's own config checked against its federated catalog.

One hub in this process (no peers): two static registries that both supply one host, and a
config folder with a rule for a service no registry has, a policy subset no endpoint carries and
a gateway whose backend does not exist. The same findings come from ``/debug/analyze`` and from
the CLI, which exits 1 on errors. Hosts: 127.0.0.1 only (no proxy connects).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from meshfed.config import MeshConfig, RegistryConfig
from meshfed.hub import Hub, default_components

ROOT = Path(__file__).resolve().parents[1]
SHARED = "shared.default.svc.cluster.local"


def entry(name: str, port: int, ip: str, version: str) -> str:
    return f"""apiVersion: networking.meshfed.io/v1alpha1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{SHARED}]
  resolution: STATIC
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  endpoints: [{{address: {ip}, ports: {{http: 9080}}, labels: {{version: {version}}}}}]
"""


RULES = """apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata: {name: lost, namespace: default}
spec:
  destination: {name: nowhere}
  route: [{labels: {version: v1}}]
---
apiVersion: config.istio.io/v1alpha2
kind: DestinationPolicy
metadata: {name: shared-v7, namespace: default}
spec:
  destination: {name: shared, labels: {version: v7}}
  loadBalancing: {name: RANDOM}
---
apiVersion: config.meshfed.io/v1alpha1
kind: Gateway
metadata: {name: front, namespace: default}
spec:
  rules:
  - http:
      paths: [{path: /, backend: {serviceName: cart, servicePort: 80}}]
"""


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshfed.cli", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_analyze_reads_the_live_hub(tmp_path: Path) -> None:
    for folder, text in (("a", entry("s1", 80, "127.0.0.5", "v1")),
                         ("b", entry("s2", 81, "127.0.0.6", "v2")), ("rules", RULES)):  # fmt: skip
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.yaml").write_text(text)
    config = MeshConfig(
        monitoring_address="127.0.0.1:0",
        discovery_address="127.0.0.1:0",
        registries=(
            RegistryConfig("consul-like", "static", {"paths": [str(tmp_path / "a")]}),
            RegistryConfig("vms", "static", {"paths": [str(tmp_path / "b")]}),
        ),
        config_paths=(str(tmp_path / "rules"),),
    )
    hub = Hub(config, default_components(config))
    await hub.start()
    try:
        url = f"http://127.0.0.1:{hub.monitoring_port}"
        code, out, err = await run_cli("analyze", "--hub", url, "-o", "json")
        assert code == 1, out + err
        found = {(f["code"], f["severity"], f["object"]) for f in json.loads(out)["findings"]}
        assert found == {
            ("MF0101", "error", "RouteRule default/lost"),
            ("MF0103", "warning", "DestinationPolicy default/shared-v7"),
            ("MF0104", "warning", f"host {SHARED}"),
            ("MF0105", "error", "Gateway default/front"),
            ("MF0106", "error", "Gateway default/front"),
        }, found
        code, out, _ = await run_cli("analyze", "--hub", url)
        assert code == 1 and out.splitlines()[0].split()[:3] == ["CODE", "SEVERITY", "OBJECT"]
        assert "consul-like, vms" in out, out

        # A file checked against the live catalog before it is applied: `shared` exists there
        # (no such service in the file), its v2 subset is carried by an endpoint, v9 by none.
        proposed = tmp_path / "proposed.yaml"
        proposed.write_text(
            "apiVersion: config.istio.io/v1alpha2\nkind: RouteRule\n"
            "metadata: {name: try, namespace: default}\n"
            "spec: {destination: {name: shared}, route: [{labels: {version: v2}, weight: 90},"
            " {labels: {version: v9}, weight: 10}]}\n"
        )
        code, out, err = await run_cli("analyze", str(proposed), "--hub", url, "-o", "json")
        found = {(f["code"], f["object"]) for f in json.loads(out)["findings"]}
        assert code == 0 and found == {
            ("MF0103", "RouteRule default/try"),
            ("MF0104", f"host {SHARED}"),
        }, out + err
        code, out, _ = await run_cli("analyze", str(proposed), "-o", "json")  # no hub: no shared
        assert code == 1 and ("MF0101", "RouteRule default/try") in {
            (f["code"], f["object"]) for f in json.loads(out)["findings"]
        }, out

        # Fixed config: only the overlap (a warning) is left, and the exit code is 0.
        (tmp_path / "rules" / "x.yaml").write_text("")
        for _ in range(100):
            code, out, _ = await run_cli("analyze", "--hub", url, "-o", "json")
            if code == 0:
                break
            await asyncio.sleep(0.1)
        assert [f["code"] for f in json.loads(out)["findings"]] == ["MF0104"], out
    finally:
        await hub.stop()
