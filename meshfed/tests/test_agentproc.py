"""The lean node-agent process: what it keeps resident, and the plan round trip."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

from meshfed.agentproc import config_of, plan_of
from meshfed.nodeagent.agent import AgentConfig
from meshfed.registry.model import Workload

HEAVY = ("grpc", "cryptography", "envoy", "google.protobuf", "prometheus_client", "yaml", "aiohttp")


def test_the_agent_process_loads_no_grpc_crypto_protos_metrics_or_yaml() -> None:
    code = "import sys, meshfed.agentproc; print('\\n'.join(sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(done.stdout.split())
    assert not {m for m in loaded if m.split(".")[0] in {h.split(".")[0] for h in HEAVY}}


def test_plan_round_trip_keeps_every_field(tmp_path: Path) -> None:
    config = AgentConfig(
        ca_address="127.0.0.1:1",
        ca_renewal_address="127.0.0.1:2",
        ca_root_pem=b"ROOT",
        trust_domain="td",
        namespace="shop",
        service_account="web",
        secrets_dir=tmp_path / "s",
        join_token="tok",
        ttl=dt.timedelta(seconds=90),
        hub_url="http://127.0.0.1:3",
        workload=Workload("vm", "shop", "127.0.0.9", {"http": 80}, {"a": "b"}, "web"),
        services=("web.shop.svc.cluster.local",),
        definitions=[{"hostname": "x"}],
        sidecar_bootstrap={"node": {"id": "n"}},
        workdir=tmp_path / "w",
        bundle_refresh=5.0,
    )
    plan = json.loads(json.dumps(plan_of(config, "127.0.0.1:4")))
    assert plan["monitoring"] == "127.0.0.1:4"
    assert config_of(plan) == config


def test_the_monitoring_port_exports_the_agents_figures(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from meshfed.agentproc import _export_metrics
    from meshfed.nodeagent.agent import NodeAgent

    config = AgentConfig(
        ca_address="127.0.0.1:1",
        ca_renewal_address="127.0.0.1:2",
        ca_root_pem=b"ROOT",
        trust_domain="td",
        namespace="shop",
        service_account="web",
        secrets_dir=tmp_path / "s",
    )
    agent = NodeAgent(config)
    agent.rotator.rotations, agent.rotator.failures = 3, 1
    agent.not_after = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    registry = CollectorRegistry()
    _export_metrics(agent, registry)
    text = generate_latest(registry).decode()
    assert "meshfed_nodeagent_rotations_total 3.0" in text
    assert "meshfed_nodeagent_rotation_failures_total 1.0" in text
    assert "meshfed_nodeagent_cert_expiry_timestamp_seconds 1.893456e+09" in text
    assert "meshfed_nodeagent_secret_write_failures_total 0.0" in text


def test_an_unusable_secrets_directory_is_one_error_line_before_any_ca_call(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    token = tmp_path / "token"
    token.write_text("t")
    token.chmod(0o600)
    done = subprocess.run(
        [
            sys.executable, "-m", "meshfed.cli", "nodeagent", "--trust-domain", "td",
            "--ca", "127.0.0.1:1", "--ca-renewal", "127.0.0.1:2", "--ca-root", str(blocker),
            "-n", "a", "-s", "b", "--token-file", str(token), "--secrets-dir", str(blocker),
        ],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: secrets directory {blocker}: is not a directory"
