"""Pilot inside the real hub process (``meshfed up``), killed with SIGKILL and restarted.

Envoy keeps serving its last config while the hub is gone, reconnects to the new process,
and converges to a static-file edit made while the hub was down; Envoy itself is never
restarted (same pid, hot-restart epoch 0). The hub's ``/metrics`` shows Pilot's metrics.
Hosts: 127.<run>.87.x.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp

from integration.pilot_helpers import Backend, addr, eventually, spread, uptime_and_epoch
from integration.routing_helpers import free_port, hub_ready, kill, start_hub
from meshfed.proxy import EnvoyProcess, ProxySpec, pilot_sync_state, wait_ready

A_IP, B1, B2 = addr(87, 2), addr(87, 3), addr(87, 4)
HOST = "b.default.svc.cluster.local"


def services_yaml(address: str) -> str:
    return f"""apiVersion: networking.meshfed.io/v1alpha1
kind: ServiceEntry
metadata: {{name: b, namespace: default}}
spec:
  hosts: [{HOST}]
  resolution: STATIC
  ports:
    - {{number: 80, name: http, protocol: HTTP}}
  endpoints:
    - {{address: {address}, ports: {{http: 9080}}}}
"""


async def test_hub_sigkill_and_restart_envoy_serves_then_converges(tmp_path: Path) -> None:
    services = tmp_path / "services.yaml"
    services.write_text(services_yaml(B1))
    monitoring, discovery = free_port(), free_port()
    config = tmp_path / "mesh.yaml"
    config.write_text(
        f"""apiVersion: meshfed.io/v1alpha1
kind: MeshConfig
metadata: {{name: test}}
spec:
  listen: {{monitoring: "127.0.0.1:{monitoring}", discovery: "127.0.0.1:{discovery}"}}
  pilot: {{debounceQuiet: 0.02, debounceMax: 0.2}}
  registries:
    - {{name: static, kind: static, paths: [{services}]}}
"""
    )
    hub_url = f"http://127.0.0.1:{monitoring}"
    log = tmp_path / "hub.log"
    backends = [Backend("b1", B1, 9080), Backend("b2", B2, 9080)]
    envoy = EnvoyProcess(ProxySpec(ip=A_IP, workload="a", pilot=f"127.0.0.1:{discovery}"))
    hub = await start_hub(config, log)
    try:
        for b in backends:
            await b.start()
        await eventually(lambda: hub_ready(hub_url), 30, f"hub ready ({log.read_text()[-800:]})")
        await envoy.start()
        await wait_ready(envoy, hub_url, timeout=30)
        url = envoy.outbound_url + "/"
        async with aiohttp.ClientSession() as session:
            assert await spread(session, url, HOST, 3) == {"b1": 3}
            async with session.get(hub_url + "/metrics") as response:
                metrics = await response.text()
            assert 'meshfed_pilot_xds_connected_proxies{protocol="sotw"} 1.0' in metrics
            assert "meshfed_pilot_xds_pushes_total" in metrics
            pid = envoy.proc.pid  # type: ignore[union-attr]

            await kill(hub)
            assert await spread(session, url, HOST, 5) == {"b1": 5}
            services.write_text(services_yaml(B2))
            assert await spread(session, url, HOST, 3) == {"b1": 3}

            hub = await start_hub(config, log)

            async def converged() -> bool:
                state = await pilot_sync_state(hub_url, envoy.spec.node_id)
                if not (state and state["ready"]):
                    return False
                return await spread(session, url, HOST, 3) == {"b2": 3}

            await eventually(converged, 40, "Envoy to reconnect to the new hub and converge")
            assert envoy.proc.pid == pid and envoy.running  # type: ignore[union-attr]
            _, epoch = await uptime_and_epoch(envoy)
            assert epoch == 0
    finally:
        await envoy.stop()
        await kill(hub)
        for b in backends:
            await b.stop()
