"""Mixer's policy on the caller's mutual-TLS identity (``source.user``), through real Envoy.

A real hub with Pilot in STRICT mutual TLS and Mixer; a real CA; each sidecar is run by a real
node agent (its certificate as secret files) and has its node-local Mixer client. ``b``'s sidecar
checks every request with a ``listchecker`` whitelist of SPIFFE IDs on ``source.user``, which
the client reads from the peer certificate Envoy verified: the sidecar of service account
``friend`` is served, the one of ``stranger`` is refused with the list's message.

Hosts: 127.0.132.x.
"""

from __future__ import annotations

from contextlib import AsyncExitStack, ExitStack
from pathlib import Path

import pytest

from integration.mixer_datapath_helpers import DataPathMesh, call, eventually
from integration.security_helpers import TRUST_DOMAIN, agent_config, http_echo
from meshfed.mixer.settings import DataPathSettings
from meshfed.nodeagent.agent import NodeAgent
from meshfed.nodeagent.mixerclient.server import MixerClient
from meshfed.proxy import ProxySpec
from meshfed.proxy import bootstrap as pilot_bootstrap
from meshfed.registry.model import spiffe_id
from meshfed.security.ca import CertificateAuthority
from meshfed.security.service import CAServer, SigningService
from meshfed.security.storage import FileStorage
from meshfed.security.tokens import JoinTokenStore

pytestmark = pytest.mark.timeout(180)

FRIEND_IP, STRANGER_IP, B_IP = "127.0.132.2", "127.0.132.3", "127.0.132.11"
B = "b.default.svc.cluster.local"
FRIEND = spiffe_id(TRUST_DOMAIN, "default", "friend")


def entry(name: str, ip: str, port: int = 9080) -> str:
    return f"""---
apiVersion: networking.meshfed.io/v1alpha1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{name}.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  workloadSelector: {{labels: {{app: {name}}}}}
---
apiVersion: networking.meshfed.io/v1alpha1
kind: WorkloadEntry
metadata: {{name: {name}-vm, namespace: default}}
spec:
  address: {ip}
  ports: {{http: {port}}}
  labels: {{app: {name}, security.meshfed.io/tlsMode: mtls}}
  serviceAccount: {name}
"""


SERVICES = entry("friend", FRIEND_IP) + entry("stranger", STRANGER_IP) + entry("b", B_IP)

POLICY = f"""
apiVersion: config.istio.io/v1alpha2
kind: listchecker
metadata: {{name: callers, namespace: istio-system}}
spec:
  overrides: ["{FRIEND}"]
  blacklist: false
---
apiVersion: config.istio.io/v1alpha2
kind: listentry
metadata: {{name: caller, namespace: istio-system}}
spec:
  value: source.user | "nobody"
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {{name: only-friends-to-b, namespace: istio-system}}
spec:
  match: destination.service == "{B}"
  actions:
  - handler: callers.listchecker
    instances: [caller.listentry]
"""


async def test_listchecker_on_the_mtls_identity(tmp_path: Path) -> None:
    mesh = DataPathMesh(
        tmp_path, SERVICES, POLICY, DataPathSettings(), pilot={"mtls": {"mode": "STRICT"}}
    )
    ca = CertificateAuthority.load_or_create(FileStorage(tmp_path / "ca"), TRUST_DOMAIN)
    tokens = JoinTokenStore(tmp_path / "ca" / "tokens.json")
    ca_server = CAServer(SigningService(ca, tokens), "127.0.0.1:0", "127.0.0.1:0")
    with ExitStack() as apps:
        apps.enter_context(http_echo(B_IP, 8080))
        async with AsyncExitStack() as stack:
            await mesh.start()
            stack.push_async_callback(mesh.stop)
            await ca_server.start()
            stack.push_async_callback(ca_server.stop)

            async def sidecar(ip: str, account: str, app_ports: str = "") -> None:
                socket = tmp_path / f"mixer-{account}" / "mixer.sock"
                client = MixerClient(socket, f"127.0.0.1:{mesh.mixer.port}")
                await client.start()
                stack.push_async_callback(client.stop)
                spec = ProxySpec(
                    ip=ip,
                    workload=account,
                    identity=spiffe_id(TRUST_DOMAIN, "default", account),
                    app_ports=app_ports,
                    pilot=f"127.0.0.1:{mesh.pilot.port}",
                    mixer_socket=str(socket),
                )
                config = agent_config(
                    tmp_path, ca_server, tokens, "default", account, bootstrap=pilot_bootstrap(spec)
                )
                agent = NodeAgent(config)
                await agent.start()
                stack.push_async_callback(agent.stop)

            await sidecar(B_IP, "b", "9080:8080")
            await sidecar(FRIEND_IP, "friend")
            await sidecar(STRANGER_IP, "stranger")

            async def friend_served() -> bool:
                return (await call(f"http://{FRIEND_IP}:15001", B))[0] == 200

            await eventually(friend_served, 30, "the friend's request over mutual TLS served")

            async def stranger_answered() -> bool:  # its sidecar may still be starting
                return (await call(f"http://{STRANGER_IP}:15001", B))[0] != 503

            await eventually(stranger_answered, 30, "the stranger's sidecar to answer")
            status, body = await call(f"http://{STRANGER_IP}:15001", B)
            assert status == 404, (status, body)  # Mixer's NOT_FOUND, as Istio mapped it
            assert f"spiffe://{TRUST_DOMAIN}/ns/default/sa/stranger is not whitelisted" in body
            status, body = await call(f"http://{FRIEND_IP}:15001", B)
            assert status == 200, (status, body)
