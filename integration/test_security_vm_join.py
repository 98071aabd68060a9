"""One command joins a VM to the mesh: ``meshfed nodeagent --pilot ... --hub ...``.

The hub runs Pilot and the workload-registration component; the CA runs from the CLI. The VM's
agent (a real process) obtains its identity with a join token, registers the VM's workload and
service with the hub, and starts a Pilot-driven sidecar. A meshed client on another host then
reaches the VM's app by service name, over mutual TLS (mesh config ``pilot: {mtls: {mode:
STRICT}}``, applied by Pilot through the :mod:`security.mtls` hook). When the agent stops, the VM
leaves the registry and the client's route to it disappears.

Hosts 127.0.92.x.
"""

from __future__ import annotations

import json
import os
import signal
from contextlib import ExitStack
from pathlib import Path

import pytest

from integration.peers.http import get, get_json
from integration.peers.ports import free_ports
from integration.peers.process import PeerProcess
from integration.security_helpers import (
    MESHFED,
    TRUST_DOMAIN,
    BackgroundLoop,
    ca_process,
    create_token,
    http_echo,
    json_line,
    secret_file,
    wait_for,
)
from meshfed.adapters.workloads.server import WorkloadRegistration
from meshfed.config import MeshConfig
from meshfed.hub import Hub
from meshfed.nodeagent.agent import AgentConfig, NodeAgent
from meshfed.pilot.server import PilotServer
from meshfed.proxy import ProxySpec
from meshfed.proxy import bootstrap as pilot_bootstrap
from meshfed.registry.model import spiffe_id

pytestmark = pytest.mark.timeout(240)

HUB_IP, VM_IP, A_IP = "127.0.92.2", "127.0.92.3", "127.0.92.4"
SERVICE = "ratings.default.svc.cluster.local"


def _status(url: str, host: str) -> int | None:
    try:
        return get(url, headers={"Host": host}, timeout=3)[0]
    except OSError:
        return None


def test_vm_joins_with_one_command_and_serves_the_mesh_over_mtls(
    tmp_path: Path,
) -> None:
    state = tmp_path / "ca-state"
    ca_ports = free_ports(3, HUB_IP)
    loop = BackgroundLoop()
    with ExitStack() as stack:
        stack.callback(loop.close)
        ca = stack.enter_context(ca_process(state, HUB_IP, ca_ports, tmp_path / "ca.log"))
        root = Path(json_line(ca, "bootstrap")["root"])

        hub = Hub(
            MeshConfig(
                trust_domain=TRUST_DOMAIN,
                monitoring_address=f"{HUB_IP}:0",
                discovery_address=f"{HUB_IP}:0",
                pilot={"mtls": {"mode": "STRICT"}},
            ),
            [WorkloadRegistration(root), PilotServer()],
        )
        loop.run(hub.start())
        stack.callback(lambda: loop.run(hub.stop()))
        pilot = hub.components[1]
        hub_url = f"http://{HUB_IP}:{hub.monitoring_port}"
        pilot_addr = f"{HUB_IP}:{pilot.port}"  # type: ignore[attr-defined]

        # The VM: its app on :8080, and one command.
        stack.enter_context(http_echo(VM_IP, 8080))
        token_file = secret_file(tmp_path / "token", create_token(state, "default", "ratings"))
        argv = [
            *MESHFED, "nodeagent", "--trust-domain", TRUST_DOMAIN,
            "--ca", f"{HUB_IP}:{ca_ports[0]}", "--ca-renewal", f"{HUB_IP}:{ca_ports[1]}",
            "--ca-root", str(root), "-n", "default", "-s", "ratings",
            "--token-file", str(token_file),
            "--secrets-dir", str(tmp_path / "vm-agent"),
            "--hub", hub_url, "--workload", "ratings-vm", "--address", VM_IP,
            "--port", "http=9080", "--service", SERVICE,
            "--define-service", f"{SERVICE}=http:80:HTTP",
            "--pilot", pilot_addr, "--app-ports", "9080:8080",
            "--workdir", str(tmp_path / "vm-sidecar"),
        ]  # fmt: skip
        agent = PeerProcess(
            "nodeagent",
            argv,
            tmp_path / "nodeagent.log",
        ).start()
        stack.callback(agent.stop)
        json_line(agent, "ready")

        # A meshed client on another host (its own agent and Pilot-driven sidecar).
        client = NodeAgent(
            AgentConfig(
                ca_address=f"{HUB_IP}:{ca_ports[0]}",
                ca_renewal_address=f"{HUB_IP}:{ca_ports[1]}",
                ca_root_pem=root.read_bytes(),
                trust_domain=TRUST_DOMAIN,
                namespace="default",
                service_account="productpage",
                secrets_dir=tmp_path / "client-agent",
                join_token=create_token(state, "default", "productpage"),
                sidecar_bootstrap=pilot_bootstrap(
                    ProxySpec(ip=A_IP, workload="productpage", pilot=pilot_addr)
                ),
                workdir=tmp_path / "client-sidecar",
            )
        )
        loop.run(client.start())
        stack.callback(lambda: loop.run(client.stop()))

        outbound = f"http://{A_IP}:15001/"
        wait_for(lambda: _status(outbound, SERVICE) == 200, "for the client to reach the VM", 60)
        status, body = get(outbound, headers={"Host": SERVICE}, timeout=5)
        assert status == 200
        xfcc = json.loads(body)["x-forwarded-client-cert"]
        assert f"URI={spiffe_id(TRUST_DOMAIN, 'default', 'productpage')}" in xfcc
        assert f"By={spiffe_id(TRUST_DOMAIN, 'default', 'ratings')}" in xfcc
        view = get_json(f"{hub_url}/debug/registryz?host={SERVICE}")
        assert view["services"][0]["endpoints"][0]["registry"] == "workloads"

        # Leaving: the VM disappears from the registry and from the client's routes.
        os.killpg(agent.pid, signal.SIGTERM)  # type: ignore[arg-type]
        agent.proc.wait(30)  # type: ignore[union-attr]
        assert get_json(f"{hub_url}/debug/registryz?host={SERVICE}")["services"] == []
        wait_for(lambda: _status(outbound, SERVICE) == 404, "for the route to the VM to go", 30)
