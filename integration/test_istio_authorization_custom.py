"""AuthorizationPolicy ``action: CUSTOM`` (provider ``mixer``) through real Envoy and real Mixer.

The real hub (static registry and Pilot's config from one folder, Pilot's authorization and
Mixer plugins, Mixer with a ``denier`` on web), a web sidecar with its node-local Mixer client,
a client sidecar, a real backend. On web: a CUSTOM policy for ``/admin*`` and an ALLOW policy
that admits everyone. Asserted over repeated requests, each on a new connection:

- data path off: ``/admin`` gets 403 with Mixer's message, one Check per request; ``/public``
  (not matched by CUSTOM) gets 200 and no Check leaves the sidecar; the ALLOW that admits
  ``/public`` does not admit ``/admin`` (CUSTOM beats ALLOW); Mixer allowing (the denier gone)
  gives 200, still checked;
- data path on: every request has exactly one Check, from the CUSTOM filter for ``/admin``
  (Envoy's ``ext_authz.custom`` counters) and from the data path's for the rest;
- a web sidecar without a client: ``/admin`` is refused (fail closed), ``/public`` served, and
  ``proxy-status`` names the problem;
- Mixer stopped, the data path failing open: ``/public`` is served, ``/admin`` refused (503):
  CUSTOM fails closed.

Hosts: 127.0.137.x.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from integration.mixer_datapath_helpers import (
    DENY_WEB,
    WEB_HOST,
    DataPathMesh,
    call,
    datapath_mesh,
    eventually,
    workload,
)
from meshfed.mixer.settings import DataPathSettings
from meshfed.proxy import EnvoyProcess

pytestmark = pytest.mark.timeout(150)

CLIENT_IP, WEB_IP = "127.0.137.2", "127.0.137.11"
SERVICES = workload("client", "client.default.svc.cluster.local", CLIENT_IP, 9080) + workload(
    "web", WEB_HOST, WEB_IP, 9080
)
POLICIES = """---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: admin-ext, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  action: CUSTOM
  provider: {name: mixer}
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: everyone, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules: [{}]
"""
MIXER_SAYS = "web is closed today"
N = 10
OFF = DataPathSettings(enabled=False)
# Envoy's per-connection-manager ext_authz counters (not the cluster.* ones it also charges)
CUSTOM_DENIED = r"^http\..*\.ext_authz\.custom\.denied$"
DATA_DENIED = r"^http\..*\.ext_authz\.denied$"
CUSTOM_OK = r"^http\..*\.ext_authz\.custom\.ok$"


async def _mesh_with_policies(mesh: DataPathMesh) -> None:
    (mesh.folder / "registry" / "authz.yaml").write_text(POLICIES)


async def _served(sidecar: str, path: str) -> set[tuple[int, str]]:
    return {await call(sidecar, WEB_HOST, path) for _ in range(N)}


async def _stat(envoy: EnvoyProcess, pattern: str) -> int:
    """The sum of the Envoy counters whose names match ``pattern``."""
    status, body = await envoy.admin("/stats")
    assert status == 200, body
    total = 0
    for line in body.splitlines():
        name, _, value = line.partition(": ")
        if re.search(pattern, name) and value.strip().isdigit():
            total += int(value)
    return total


async def _until(sidecar: str, path: str, want: int, contains: str = "") -> None:
    async def probe() -> bool:
        status, body = await call(sidecar, WEB_HOST, path)
        return status == want and contains in body

    await eventually(probe, 30, f"{path} to answer {want} {contains!r}".strip(), every=0.2)


async def test_custom_sends_only_its_requests_to_mixer_and_beats_allow(tmp_path: Path) -> None:
    async with datapath_mesh(tmp_path, SERVICES, DENY_WEB, OFF, cache_entries=0) as mesh:
        await _mesh_with_policies(mesh)
        await mesh.backend("web", WEB_IP, 8080)
        web = await mesh.proxy(WEB_IP, "web", "9080:8080")
        await mesh.proxy(CLIENT_IP, "client", mixer_client=False)
        (client,) = mesh.clients
        sidecar = f"http://{CLIENT_IP}:15001"
        await _until(sidecar, "/admin", 403, MIXER_SAYS)
        assert await mesh.problems(web) == []
        # Not matched by CUSTOM: admitted by ALLOW, and never sent to Mixer.
        before = client.checks
        assert await _served(sidecar, "/public") == {(200, "web")}
        assert await _served(sidecar, "/") == {(200, "web")}
        assert client.checks == before
        # Matched by CUSTOM: Mixer's denier answers, with its message, one Check each; the
        # ALLOW policy that admitted /public does not admit it (CUSTOM beats ALLOW).
        for path in ("/admin", "/admin/users"):
            answers = await _served(sidecar, path)
            assert {s for s, _ in answers} == {403}, answers
            assert all(MIXER_SAYS in body for _, body in answers), answers
        assert client.checks == before + 2 * N
        assert await _stat(web, CUSTOM_DENIED) == 2 * N + 1
        # Mixer allowing: the same requests pass, still checked by Mixer.
        mesh.write_policy("")
        await _until(sidecar, "/admin", 200, "web")
        before = client.checks
        assert await _served(sidecar, "/admin/users") == {(200, "web")}
        assert client.checks == before + N
        assert await _served(sidecar, "/public") == {(200, "web")}
        assert client.checks == before + N


async def test_with_the_data_path_every_request_is_checked_once(tmp_path: Path) -> None:
    async with datapath_mesh(tmp_path, SERVICES, DENY_WEB, cache_entries=0) as mesh:
        await _mesh_with_policies(mesh)
        await mesh.backend("web", WEB_IP, 8080)
        web = await mesh.proxy(WEB_IP, "web", "9080:8080")
        await mesh.proxy(CLIENT_IP, "client", mixer_client=False)
        (client,) = mesh.clients
        sidecar = f"http://{CLIENT_IP}:15001"
        # The data path's denier refuses / too; the CUSTOM filter is in once /admin is
        # counted by it.
        await _until(sidecar, "/", 403, MIXER_SAYS)

        async def custom_in_force() -> bool:
            seen = await _stat(web, CUSTOM_DENIED)
            await call(sidecar, WEB_HOST, "/admin")
            return await _stat(web, CUSTOM_DENIED) > seen

        await eventually(custom_in_force, 30, "the CUSTOM filter to check /admin", every=0.2)
        custom = await _stat(web, CUSTOM_DENIED)
        data = await _stat(web, DATA_DENIED)
        before = client.checks
        for path in ("/admin", "/public"):
            answers = await _served(sidecar, path)
            assert {s for s, _ in answers} == {403} and all(MIXER_SAYS in b for _, b in answers)
        assert client.checks == before + 2 * N  # one Check per request, not two
        assert await _stat(web, CUSTOM_DENIED) == custom + N  # /admin
        assert await _stat(web, DATA_DENIED) == data + N  # /public
        mesh.write_policy("")
        await _until(sidecar, "/admin", 200, "web")
        await _until(sidecar, "/public", 200, "web")
        before = client.checks
        assert await _served(sidecar, "/admin") == {(200, "web")}
        assert await _served(sidecar, "/public") == {(200, "web")}
        assert client.checks == before + 2 * N


async def test_a_sidecar_without_a_client_refuses_what_custom_matches(tmp_path: Path) -> None:
    async with datapath_mesh(tmp_path, SERVICES, DENY_WEB, OFF) as mesh:
        await _mesh_with_policies(mesh)
        await mesh.backend("web", WEB_IP, 8080)
        web = await mesh.proxy(WEB_IP, "web", "9080:8080", mixer_client=False)
        await mesh.proxy(CLIENT_IP, "client", mixer_client=False)
        sidecar = f"http://{CLIENT_IP}:15001"
        await _until(sidecar, "/admin", 403)
        answers = await _served(sidecar, "/admin")
        assert {s for s, _ in answers} == {403} and not any(MIXER_SAYS in b for _, b in answers)
        assert await _served(sidecar, "/public") == {(200, "web")}  # the listener works

        async def reported() -> bool:
            return any("CUSTOM" in p and "default/admin-ext" in p for p in await mesh.problems(web))

        await eventually(reported, 15, "proxy-status to name the CUSTOM problem")


async def test_custom_fails_closed_where_the_data_path_fails_open(tmp_path: Path) -> None:
    async with datapath_mesh(tmp_path, SERVICES, "", cache_entries=0) as mesh:
        await _mesh_with_policies(mesh)
        await mesh.backend("web", WEB_IP, 8080)
        web = await mesh.proxy(WEB_IP, "web", "9080:8080")
        await mesh.proxy(CLIENT_IP, "client", mixer_client=False)
        sidecar = f"http://{CLIENT_IP}:15001"

        async def custom_in_force() -> bool:
            seen = await _stat(web, CUSTOM_OK)
            status, _ = await call(sidecar, WEB_HOST, "/admin")
            return status == 200 and await _stat(web, CUSTOM_OK) > seen

        await eventually(custom_in_force, 30, "the CUSTOM filter to pass /admin", every=0.2)
        await mesh.mixer.stop()  # the hub's Mixer is gone; the clients stay
        # dataPath.failOpen (true) serves the rest of web; CUSTOM's Check refuses.
        await _until(sidecar, "/admin", 503, "mixer unavailable")
        assert await _served(sidecar, "/public") == {(200, "web")}
        answers = await _served(sidecar, "/admin/users")
        assert {s for s, _ in answers} == {503}, answers
