"""``meshfed demo``: one command that shows a federated mesh with real Envoy sidecars.

It starts the hub (aggregate, Pilot, the dashboard) on ephemeral ports with two registries
from ``meshfed/defaults``, ``vms`` (``services.yaml``) and ``dc2`` (``dc2.yaml``, another
datacenter's inventory), and the hub's own ``workloads`` registry, which a VM joins the way
``meshfed nodeagent`` does it: a registration signed with the VM's SVID (issued here by a
throw-away CA whose root the hub trusts for the demo's lifetime). It prints the merged
catalog, each endpoint with its source registry, and the conflict ``vms`` and ``dc2`` have on
purpose (``mongodb``'s port protocol, won by ``vms``, the first). Then it starts the demo apps
(``reviews`` v1 and v2 and ``ratings`` v1 from ``vms``, ``ratings`` v2 from ``dc2``,
``ratings`` v3 the joined VM) each on its own 127.0.0.x address behind a real Envoy sidecar,
and a client sidecar (``productpage``, 127.0.0.10). Every ``interval`` seconds
the client asks for ``reviews`` through its sidecar; ``reviews`` calls ``ratings`` through its
own sidecar, so each line shows two mesh hops and which instance answered, from either
registry. It runs until Ctrl-C or ``--duration`` and then stops every process it started
(sidecars are killed by process group).

An endpoint ``127.0.0.11:9080`` is the sidecar's inbound port, which forwards to the app on
``127.0.0.11:8080``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from meshfed.config import MeshConfig, RegistryConfig, default_services_path
from meshfed.pilot.server import PilotServer
from meshfed.proxy import EnvoyProcess, ProxySpec, wait_ready
from meshfed.registryview import registry_view

CLIENT_IP = "127.0.0.10"
APP_PORT = 8080
INBOUND_PORT = 9080
# (workload, address, service it answers for); matches meshfed/defaults/{services,dc2}.yaml.
APPS = (
    ("reviews-v1", "127.0.0.11", "reviews"),
    ("reviews-v2", "127.0.0.12", "reviews"),
    ("ratings-v1", "127.0.0.13", "ratings"),
    ("ratings-v2", "127.0.0.15", "ratings"),
    ("ratings-v3", "127.0.0.17", "ratings"),  # the VM that joins through registration
)
JOINING_VM = APPS[-1]
SYNC_TIMEOUT_S = 10.0


def demo_mesh_config() -> MeshConfig:
    services = str(default_services_path())
    dc2 = str(default_services_path().with_name("dc2.yaml"))
    return MeshConfig(
        monitoring_address="127.0.0.1:0",
        discovery_address="127.0.0.1:0",
        registries=(
            RegistryConfig("vms", "static", {"paths": [services]}),
            RegistryConfig("dc2", "static", {"paths": [dc2]}),
        ),
        config_paths=(services,),
        pilot={"debounceQuiet": 0.05, "debounceMax": 0.5},
        source="<meshfed demo>",
    )


def catalog_lines(view: Mapping[str, Any]) -> list[str]:
    """The merged catalog of ``registry_view`` as the demo prints it: registries in precedence
    order, every service with its endpoints and each endpoint's source registry, then the
    conflicts with who won."""
    members = view["members"]
    lines = [
        "registries (first wins a conflict): "
        + ", ".join(f"{m['name']} ({m['kind']})" for m in members)
    ]
    for service in view["services"]:
        ports = ", ".join(f"{p['number']}/{p['protocol']}" for p in service["ports"])
        lines.append(f"  {service['hostname']}  {ports}  from {', '.join(service['registries'])}")
        for e in service["endpoints"]:
            labels = ",".join(f"{k}={v}" for k, v in sorted(e["labels"].items()))
            health = "" if e["healthy"] else "  unhealthy"
            lines.append(f"    {e['address']:<15} {e['registry']:<10} {labels}{health}".rstrip())
        if not service["endpoints"]:
            lines.append("    (no endpoints)")
    lines += [f"conflict: {c['message']}" for c in view["conflicts"]]
    return lines


def _demo_ca(folder: str) -> tuple[Any, Path]:
    """A throw-away CA in ``folder`` (its root is the trust bundle the hub reads), and the
    Path of that bundle."""
    from meshfed.security.ca import CertificateAuthority
    from meshfed.security.storage import FileStorage

    ca = CertificateAuthority.load_or_create(FileStorage(Path(folder) / "ca"), "cluster.local")
    bundle = Path(folder) / "root-cert.pem"
    bundle.write_bytes(ca.root_pem)
    return ca, bundle


async def _join_vm(hub_url: str, ca: Any) -> None:
    """Register the joining VM as its node agent would: signed with its own SVID."""
    from meshfed.nodeagent import registration
    from meshfed.nodeagent.keys import generate_key, make_csr
    from meshfed.registry.model import Workload
    from meshfed.security import identity

    workload, ip, service = JOINING_VM
    key = generate_key()
    spiffe_id = f"spiffe://cluster.local/ns/default/sa/{service}"
    issued = await asyncio.to_thread(ca.sign, identity.load_csr(make_csr(key)), spiffe_id)
    vm = Workload(
        workload, "default", ip, {"http": INBOUND_PORT}, {"app": service, "version": "v3"}, service
    )
    body = registration.registration_body(vm, [f"{service}.default.svc.cluster.local"])
    await registration.register(hub_url, body, key, issued.chain_pem)


async def _synced(hub: Any) -> None:
    deadline = time.monotonic() + SYNC_TIMEOUT_S
    while not hub.aggregate.synced and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def _start_app(workload: str, ip: str, service: str) -> web.AppRunner:
    async def handle(request: web.Request) -> web.Response:
        if service != "reviews":
            return web.json_response({"app": workload})
        # reviews asks ratings through its own sidecar: the second hop of every demo request.
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session,
                session.get(
                    f"http://{ip}:15001/ratings", headers={"Host": "ratings:9080"}
                ) as response,
            ):
                ratings = (
                    (await response.json())["app"]
                    if response.status == 200
                    else (f"HTTP {response.status}")
                )
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            ratings = f"error {exc}"
        return web.json_response({"app": workload, "ratings": ratings})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, ip, APP_PORT).start()
    return runner


async def run_demo(duration: float | None = None, interval: float = 1.0) -> int:
    """Run the demo; returns 0 when at least one request went through the mesh."""
    from meshfed.adapters.workloads.server import WorkloadRegistration
    from meshfed.hub import Hub, default_components

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    mesh = demo_mesh_config()
    scratch = tempfile.TemporaryDirectory(prefix="meshfed-demo-")
    ca, bundle = await asyncio.to_thread(_demo_ca, scratch.name)
    components = [
        WorkloadRegistration(bundle) if isinstance(c, WorkloadRegistration) else c
        for c in default_components(mesh)
    ]
    hub = Hub(mesh, components)
    runners: list[web.AppRunner] = []
    envoys: list[EnvoyProcess] = []
    ok = 0
    started = time.monotonic()
    try:
        await hub.start()
        pilot = next(c for c in hub.components if isinstance(c, PilotServer))
        hub_url = f"http://127.0.0.1:{hub.monitoring_port}"
        print(f"hub: monitoring {hub_url}, Pilot ADS on 127.0.0.1:{pilot.port}", flush=True)
        print(f"dashboard: {hub_url}/dashboard", flush=True)
        await _join_vm(hub_url, ca)
        await _synced(hub)
        print("\n".join(catalog_lines(registry_view(hub.aggregate))), flush=True)
        for workload, ip, service in APPS:
            runners.append(await _start_app(workload, ip, service))
        specs = [ProxySpec(ip=CLIENT_IP, workload="productpage", pilot=f"127.0.0.1:{pilot.port}")]
        specs += [
            ProxySpec(
                ip=ip,
                workload=workload,
                app_ports=f"{INBOUND_PORT}:{APP_PORT}",
                pilot=f"127.0.0.1:{pilot.port}",
            )
            for workload, ip, _ in APPS
        ]
        envoys = [EnvoyProcess(spec) for spec in specs]
        for envoy in envoys:
            await envoy.start()
        await asyncio.gather(*(wait_ready(e, hub_url, timeout=30) for e in envoys))
        print(
            f"{len(envoys)} Envoy sidecars ready in {time.monotonic() - started:.1f}s "
            f"(see: meshfed proxy-status --hub {hub_url})",
            flush=True,
        )
        client = envoys[0]
        deadline = None if duration is None else time.monotonic() + duration
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            n = 0
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                n += 1
                t0 = time.perf_counter()
                try:
                    async with session.get(
                        "http://reviews.default.svc.cluster.local:9080/reviews",
                        proxy=client.outbound_url,
                    ) as response:
                        ms = (time.perf_counter() - t0) * 1000
                        if response.status == 200:
                            body = await response.json()
                            ok += 1
                            print(
                                f"#{n} productpage -> reviews: {body['app']}"
                                f" -> ratings: {body['ratings']} ({ms:.0f} ms)",
                                flush=True,
                            )
                        else:
                            print(f"#{n} productpage -> reviews: HTTP {response.status}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    print(f"#{n} productpage -> reviews failed: {exc}", flush=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=interval)
    finally:
        for envoy in envoys:
            with contextlib.suppress(Exception):
                await envoy.stop()
        for runner in runners:
            with contextlib.suppress(Exception):
                await runner.cleanup()
        with contextlib.suppress(Exception):
            await hub.stop()
        scratch.cleanup()
        print(f"stopped {len(envoys)} sidecars and {len(runners)} apps; {ok} requests answered")
    return 0 if ok else 1
