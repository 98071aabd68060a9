"""The Consul adapter against real agents that require an ACL token, or TLS with client certs.

These are the options production clusters use; each is checked both ways: configured right,
the catalog arrives; configured wrong, the registry is degraded with Consul's own reason and
nothing crashes. Agents are started with the harness's agent helpers plus the security config
(the harness has no secured-agent fixture); certificates come from the harness's PKI helper.
Instance addresses are 127.0.99.x (data only).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import consul
from consul.callback import CB

from integration.peers.certs import make_pki
from integration.peers.consul import ConsulAgent, _launch, _new_agent, _wait_leader, _write_config
from integration.peers.ports import free_port, loopback_host
from meshfed.adapters.consul.testing import running_adapter

ROOT_TOKEN = "2b8f5a1e-6f0c-4c55-9d7e-7c1a4f3e9b10"
SCOPED_TOKEN = "7d0c1f9a-3b52-4e8e-a6f4-0f2d9c8b7e61"
WEB = "web.service.consul"


@contextlib.contextmanager
def agent(base: Path, extra: dict[str, Any]) -> Iterator[ConsulAgent]:
    a = _new_agent("secured", loopback_host(), base)
    _write_config(a, extra)
    _launch(a, dev=True)
    try:
        _wait_leader(a, 60)
        yield a
    finally:
        if a.process:
            a.process.stop()


def register(c: consul.Consul) -> None:
    body = {"Node": "vm-1", "Address": "127.0.99.1", "Service": {"Service": "web", "Port": 80}}
    assert c.http.put(
        CB.boolean(), "/v1/catalog/register", data=json.dumps(body), headers=c.prepare_headers()
    )


async def test_acl_token(tmp_path: Path) -> None:
    acl = {
        "acl": {
            "enabled": True,
            "default_policy": "deny",
            "tokens": {"initial_management": ROOT_TOKEN},
        }
    }
    with agent(tmp_path, acl) as a:
        register(consul.Consul(host=a.host, port=a.http_port, token=ROOT_TOKEN))
        base = {"address": a.http_addr, "wait": "20s"}
        async with running_adapter({**base, "token": ROOT_TOKEN}) as run:
            assert [e.address for e in run.aggregate.endpoints(WEB)] == ["127.0.99.1"]
            assert run.adapter.describe()["watches"]["dc1/services"]["aclFiltered"] is False
        # The anonymous token may read nothing. It cannot even ask the agent for its datacenter:
        async with running_adapter(base, sync_timeout=None) as run:
            await run.wait_for(lambda: run.member.degraded, "degraded", 15)
            assert "agent:read" in (run.member.degraded or "")
        # A token scoped to the mesh's services: Consul filters the rest out, and says so.
        root = consul.Consul(host=a.host, port=a.http_port, token=ROOT_TOKEN)
        body = {"Node": "vm-2", "Address": "127.0.99.2", "Service": {"Service": "vault", "Port": 1}}
        assert root.http.put(
            CB.boolean(),
            "/v1/catalog/register",
            data=json.dumps(body),
            headers=root.prepare_headers(),
        )
        rules = {"service": {"web": {"policy": "read"}}, "node_prefix": {"": {"policy": "read"}}}
        root.acl.policy.create("mesh-read", rules=rules)
        root.acl.token.create(secret_id=SCOPED_TOKEN, policies_name=["mesh-read"])
        scoped = {**base, "token": SCOPED_TOKEN, "datacenters": ["dc1"]}
        async with running_adapter(scoped) as run:
            assert set(run.aggregate.services()) == {WEB}
            assert run.adapter.describe()["watches"]["dc1/services"]["aclFiltered"] is True
        # A token Consul does not know: degraded with Consul's reason, never synced.
        async with running_adapter({**base, "token": "nope"}, sync_timeout=None) as run:
            await run.wait_for(lambda: run.member.degraded, "degraded", 15)
            assert "ACL not found" in (run.member.degraded or "")
            assert not run.member.synced


async def test_tls_with_client_certificate(tmp_path: Path) -> None:
    host = loopback_host()
    pki = make_pki(tmp_path / "pki", host)
    https_port = free_port(host)
    probe = _new_agent("probe", host, tmp_path / "probe")  # free ports on this host
    ports = {
        "http": probe.http_port,
        "https": https_port,
        "dns": -1,
        "serf_lan": probe.serf_lan_port,
        "serf_wan": probe.serf_wan_port,
        "server": probe.server_port,
        "grpc": probe.grpc_port,
        "grpc_tls": -1,
    }
    tls = {
        "tls": {
            "defaults": {
                "ca_file": str(pki.ca_cert),
                "cert_file": str(pki.server_cert),
                "key_file": str(pki.server_key),
            },
            "https": {"verify_incoming": True},
        }
    }
    a = probe
    _write_config(a, {"ports": ports, **tls})
    _launch(a, dev=True)
    try:
        _wait_leader(a, 60)  # over plain HTTP, which the harness probes
        register(consul.Consul(host=a.host, port=a.http_port))
        url = f"https://{host}:{https_port}"
        client_tls = {
            "caFile": str(pki.ca_cert),
            "certFile": str(pki.admin_cert),
            "keyFile": str(pki.admin_key),
        }
        async with running_adapter({"address": url, "tls": client_tls, "wait": "20s"}) as run:
            assert [e.address for e in run.aggregate.endpoints(WEB)] == ["127.0.99.1"]
            assert run.adapter.describe()["addressesInUse"] == {url: 2}
        # Without the client certificate the agent refuses the handshake.
        no_cert = {"address": url, "tls": {"caFile": str(pki.ca_cert)}}
        async with running_adapter(no_cert, sync_timeout=None) as run:
            await run.wait_for(lambda: run.member.degraded, "degraded", 15)
            assert "SSL" in (run.member.degraded or "") or "certificate" in (
                run.member.degraded or ""
            )
            assert not run.member.synced
    finally:
        if a.process:
            a.process.stop()
