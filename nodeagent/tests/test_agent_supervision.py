"""The node agent's background loops run supervised, and its readiness says when it has a
valid certificate; against a real in-process CA."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from meshfed.nodeagent.agent import AgentConfig, NodeAgent
from meshfed.security.ca import CertificateAuthority
from meshfed.security.service import CAServer, SigningService
from meshfed.security.storage import FileStorage
from meshfed.security.tokens import JoinTokenStore


async def test_the_agent_loops_are_supervised_and_readiness_follows_the_certificate(
    tmp_path: Path,
) -> None:
    ca = CertificateAuthority.load_or_create(FileStorage(tmp_path / "ca"), "cluster.local")
    tokens = JoinTokenStore(tmp_path / "ca" / "tokens.json")
    server = CAServer(SigningService(ca, tokens), "127.0.0.1:0", "127.0.0.1:0")
    await server.start()
    config = AgentConfig(
        ca_address=server.bootstrap_target,
        ca_renewal_address=server.renewal_target,
        ca_root_pem=ca.root_pem,
        trust_domain="cluster.local",
        namespace="shop",
        service_account="web",
        secrets_dir=tmp_path / "agent",
        join_token=tokens.create("shop", "web"),
        ttl=dt.timedelta(hours=1),
        bundle_refresh=30.0,
    )
    agent = NodeAgent(config)
    assert agent.not_ready() == ["nodeagent: no certificate yet"]
    await agent.start()
    try:
        assert agent.not_ready() == [] and agent.degraded() == []
        tasks = agent.describe()["tasks"]
        assert set(tasks) == {"nodeagent rotation", "nodeagent trust bundle"}
        assert all(t["running"] for t in tasks.values())
        assert agent.describe()["identity"] == "spiffe://cluster.local/ns/shop/sa/web"
        agent.not_after = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        assert "certificate expired" in agent.not_ready()[0]
    finally:
        supervisor = agent.supervisor
        await agent.stop()
        await server.stop()
    assert not any(t["running"] for t in supervisor.describe().values())
