"""``meshfed ca serve`` + ``meshfed ca token create`` + ``meshfed nodeagent``, end to end.

The CA and the node agent run as real processes from the CLI; the hub runs with the workload
registration component; the VM's sidecar is a real Envoy started by the agent. Asserted: the VM
appears in the registry with its SPIFFE ID and serves mutual TLS to a meshed client; the CA
restarts with the same root and renews a certificate issued before the restart; the used token
cannot be replayed; stopping the agent deregisters the VM and stops its sidecar; nothing secret
is left with loose permissions. A second test kills the sidecar: the agent restarts it and the
new Envoy reads its secret files again.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
from contextlib import ExitStack
from pathlib import Path

import pytest

from integration.peers.envoy import start_envoy
from integration.peers.http import get, get_json
from integration.peers.ports import free_ports, loopback_host
from integration.peers.process import PeerProcess
from integration.security_helpers import (
    MESHFED,
    TRUST_DOMAIN,
    BackgroundLoop,
    ca_process,
    client_sidecar,
    create_token,
    http_echo,
    json_line,
    mesh,
    secret_file,
    server_sidecar,
    wait_for,
)
from meshfed.adapters.workloads.server import WorkloadRegistration
from meshfed.config import MeshConfig
from meshfed.hub import Hub
from meshfed.nodeagent.agent import AgentConfig, NodeAgent
from meshfed.registry.model import spiffe_id
from meshfed.security import mtls

pytestmark = pytest.mark.timeout(240)

HOST_NAME = "reviews.shop.svc.cluster.local"


def test_nodeagent_joins_a_vm_and_leaves_cleanly(tmp_path: Path) -> None:
    host = loopback_host()
    vm_host, client_host = loopback_host(), loopback_host()
    state = tmp_path / "ca-state"
    ca_ports = free_ports(3, host)
    loop = BackgroundLoop()
    with ExitStack() as stack:
        stack.callback(loop.close)
        ca = stack.enter_context(ca_process(state, host, ca_ports, tmp_path / "ca.log"))
        info = json_line(ca, "bootstrap")
        root = Path(info["root"])
        monitoring = info["monitoring"]
        root_sha = get_json(f"http://{monitoring}/debug/ca")["root_sha256"]

        # The hub, with signed workload registration (trust bundle = the CA's published root).
        hub = Hub(
            MeshConfig(trust_domain=TRUST_DOMAIN, monitoring_address=f"{host}:0"),
            [WorkloadRegistration(root)],
        )
        loop.run(hub.start())
        stack.callback(lambda: loop.run(hub.stop()))
        hub_url = f"http://{host}:{hub.monitoring_port}"

        # The VM: an app (echo server), and `meshfed nodeagent` with its sidecar bootstrap.
        backend = stack.enter_context(http_echo(vm_host))
        s_admin, s_port = free_ports(2, vm_host)
        secrets = tmp_path / "vm-agent"
        boot = server_sidecar(
            "reviews-vm", vm_host, s_admin, s_port, backend, secrets, mtls.Mode.STRICT
        )
        boot_path = tmp_path / "vm-bootstrap.json"
        boot_path.write_text(json.dumps(boot))
        token_file = secret_file(tmp_path / "join-token", create_token(state, "shop", "reviews"))
        agent_argv = [
            *MESHFED, "nodeagent", "--trust-domain", TRUST_DOMAIN,
            "--ca", f"{host}:{ca_ports[0]}", "--ca-renewal", f"{host}:{ca_ports[1]}",
            "--ca-root", str(root), "-n", "shop", "-s", "reviews",
            "--token-file", str(token_file), "--secrets-dir", str(secrets),
            "--hub", hub_url, "--workload", "reviews-vm", "--address", vm_host,
            "--port", f"http={s_port}", "--service", HOST_NAME,
            "--define-service", f"{HOST_NAME}=http:9080:HTTP",
            "--envoy-bootstrap", str(boot_path), "--workdir", str(tmp_path / "vm-sidecar"),
        ]  # fmt: skip
        agent = PeerProcess("nodeagent", agent_argv, tmp_path / "nodeagent.log").start()
        stack.callback(agent.stop)
        json_line(agent, "ready")
        agent.wait_until(
            lambda: get(f"http://{vm_host}:{s_admin}/ready", timeout=1)[1].strip() == b"LIVE",
            "for the sidecar to be LIVE (it has read its secret files)",
            30,
        )

        # The VM is in the registry, with its SPIFFE identity, without any file edited, marked
        # as having a sidecar that terminates mesh mutual TLS.
        vm_id = spiffe_id(TRUST_DOMAIN, "shop", "reviews")
        view = get_json(f"{hub_url}/debug/registryz?host={HOST_NAME}")
        (endpoint,) = view["services"][0]["endpoints"]
        assert endpoint["address"] == vm_host
        assert endpoint["identity"] == vm_id
        assert endpoint["labels"][mtls.TLS_MODE_LABEL] == mtls.TLS_MODE_MTLS

        # Nothing secret with loose permissions: state folder, CA key, token store, the
        # sidecar's secret files (the key among them) and their directory.
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        for name in ("ca-key.pem", "tokens.json"):
            assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
        assert sorted(p.name for p in secrets.iterdir()) == ["ROOTCA.json", "default.json"]
        for path in secrets.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
        token_value = token_file.read_text()
        assert token_value.split(".")[2] not in (state / "tokens.json").read_text()

        # A meshed client (its own agent, its own token) reaches the VM over mutual TLS.
        client_cfg = AgentConfig(
            ca_address=f"{host}:{ca_ports[0]}",
            ca_renewal_address=f"{host}:{ca_ports[1]}",
            ca_root_pem=root.read_bytes(),
            trust_domain=TRUST_DOMAIN,
            namespace="shop",
            service_account="productpage",
            secrets_dir=tmp_path / "client-agent",
            join_token=create_token(state, "shop", "productpage"),
        )
        client_agent = NodeAgent(client_cfg)
        loop.run(client_agent.start())
        stack.callback(lambda: loop.run(client_agent.stop()))
        c_admin, c_port = free_ports(2, client_host)
        stack.enter_context(
            start_envoy(
                tmp_path / "client",
                client_sidecar(
                    "productpage",
                    client_host,
                    c_admin,
                    c_port,
                    (vm_host, s_port),
                    client_cfg.secrets_dir,
                    # What Pilot's hook derives from the registry for this destination.
                    mtls.outbound_transport_socket(
                        hub.aggregate.service(HOST_NAME),  # type: ignore[arg-type]
                        hub.aggregate.endpoints(HOST_NAME),
                        mtls.Policy(mtls.Mode.STRICT),
                    ),
                ),
            )
        )
        status, body = get(f"http://{client_host}:{c_port}/", timeout=5)
        assert status == 200
        assert f"URI={client_cfg.identity}" in json.loads(body)["x-forwarded-client-cert"]

        # CA restart: same root; a certificate issued before the restart still renews.
        ca.stop()
        ca2 = stack.enter_context(ca_process(state, host, ca_ports, tmp_path / "ca2.log"))
        assert get_json(f"http://{monitoring}/debug/ca")["root_sha256"] == root_sha
        assert hashlib.sha256(root.read_bytes()).hexdigest() == root_sha
        old_serial = client_agent.serials[-1]
        loop.run(client_agent.renew())
        assert client_agent.serials[-1] != old_serial
        assert ca2.running()

        # The used token cannot be replayed by a second agent.
        replay = subprocess.run(
            [*agent_argv[:-4], "--secrets-dir", str(tmp_path / "replay")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert replay.returncode != 0
        assert "already used" in replay.stderr

        # Leaving: SIGTERM deregisters the VM and stops its sidecar.
        assert get_status(f"http://{vm_host}:{s_admin}/ready") == 200  # sidecar still up
        os.killpg(agent.pid, signal.SIGTERM)  # type: ignore[arg-type]
        agent.proc.wait(30)  # type: ignore[union-attr]
        assert agent.proc.returncode == 0, agent.log_tail()  # type: ignore[union-attr]
        view = get_json(f"{hub_url}/debug/registryz?host={HOST_NAME}")
        assert view["services"] == [] or view["services"][0]["endpoints"] == []
        wait_for(lambda: get_status(f"http://{vm_host}:{s_admin}/ready") is None, "sidecar exit")
        assert not secrets.exists()  # the key does not outlive the agent
        assert "deregistered shop/reviews-vm" in agent.log_path.read_text()


def get_status(url: str) -> int | None:
    try:
        return get(url, timeout=1)[0]
    except OSError:
        return None


def test_agent_restarts_a_crashed_sidecar_which_gets_its_secrets_again(tmp_path: Path) -> None:

    host = loopback_host()
    admin, port = free_ports(2, host)
    with mesh(tmp_path / "mesh") as m, http_echo(host) as backend:
        secrets = tmp_path / "agent"
        config = AgentConfig(
            ca_address=m.server.bootstrap_target,
            ca_renewal_address=m.server.renewal_target,
            ca_root_pem=m.ca.root_pem,
            trust_domain=TRUST_DOMAIN,
            namespace="shop",
            service_account="reviews",
            secrets_dir=secrets,
            join_token=m.tokens.create("shop", "reviews"),
            sidecar_bootstrap=server_sidecar(
                "reviews", host, admin, port, backend, secrets, mtls.Mode.PERMISSIVE
            ),
            workdir=tmp_path / "sidecar",
        )
        agent = NodeAgent(config)
        # The agent lives on the mesh's background loop, as in production
        # where nothing else blocks it; this test only waits and probes.
        m.loop.run(agent.start())
        try:

            def live() -> bool:
                return get_status(f"http://{host}:{admin}/ready") == 200

            wait_for(live, "for the sidecar to be LIVE", 30)
            assert agent.sidecar is not None and agent.sidecar.proc is not None
            first_pid = agent.sidecar.proc.pid
            os.killpg(first_pid, signal.SIGKILL)  # a crash, as the agent sees it
            wait_for(
                lambda: (
                    agent.sidecar_restarts == 1
                    and agent.sidecar.proc is not None  # type: ignore[union-attr]
                    and agent.sidecar.proc.pid != first_pid  # type: ignore[union-attr]
                    and live()
                ),
                "for the restarted sidecar to be LIVE",
                30,
            )
            status, _ = get(f"http://{host}:{port}/", timeout=5)
            assert status == 200  # serving again (permissive: a plain client is fine)
        finally:
            m.loop.run(agent.stop())
        assert get_status(f"http://{host}:{admin}/ready") is None  # stopped for good
