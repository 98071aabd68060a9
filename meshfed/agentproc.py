"""The long-running process of ``meshfed nodeagent``: the agent, and nothing it does not need.

Why a module of its own: there is one agent per node, so what it keeps resident is paid on
every machine of the mesh. Reading flags, the mesh config and an Envoy bootstrap needs YAML,
the config validators and the rest of the CLI; running the agent needs none of it. So
``meshfed nodeagent`` checks everything, writes a plan (0600, removed at once by the reader)
and replaces itself with ``python -m meshfed.agentproc PLAN`` (same process id). The agent then
holds asyncio, attrs, tenacity and its own modules; keys, CSRs and CA calls run in short-lived
children (:mod:`nodeagent.issuer`), Envoy reads its secrets from files
(:mod:`nodeagent.sdsfiles`). aiohttp and prometheus-client are loaded only for
``--monitoring``.

Promises:
- ``{"identity": ..., "ready": true}`` on stdout once the first certificate is in the files
  (and, with ``--monitoring``, ``{"monitoring": "host:port"}`` first).
- SIGTERM / SIGINT stop the agent (deregister, stop the sidecar, remove the secret files) and
  exit 0; a CA or hub refusal, an unusable secrets directory or a bad plan exit 1 with one
  ``error:`` line on stderr, no traceback.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from meshfed.logformat import configure_logging
from meshfed.nodeagent.agent import AgentConfig, NodeAgent
from meshfed.nodeagent.issuer import IssueFailed, IssueRefused
from meshfed.nodeagent.sdsfiles import SecretDirError
from meshfed.registry.model import Workload


def plan_of(config: AgentConfig, monitoring: str = "") -> dict[str, Any]:
    """The JSON plan ``meshfed nodeagent`` hands this process."""
    w = config.workload
    return {
        "monitoring": monitoring,
        "config": {
            "ca_address": config.ca_address,
            "ca_renewal_address": config.ca_renewal_address,
            "ca_root_pem": config.ca_root_pem.decode(),
            "trust_domain": config.trust_domain,
            "namespace": config.namespace,
            "service_account": config.service_account,
            "secrets_dir": str(config.secrets_dir),
            "join_token": config.join_token,
            "kubernetes_token": config.kubernetes_token,
            "ttl_seconds": config.ttl.total_seconds() if config.ttl else None,
            "key_type": config.key_type,
            "hub_url": config.hub_url,
            "workload": None
            if w is None
            else {
                "name": w.name,
                "namespace": w.namespace,
                "address": w.address,
                "ports": dict(w.ports),
                "labels": dict(w.labels),
                "service_account": w.service_account,
            },
            "services": list(config.services),
            "definitions": config.definitions,
            "register_interval": config.register_interval,
            "sidecar_bootstrap": config.sidecar_bootstrap,
            "workdir": str(config.workdir) if config.workdir else None,
            "bundle_refresh": config.bundle_refresh,
        },
    }


def config_of(plan: dict[str, Any]) -> AgentConfig:
    c = dict(plan["config"])
    w = c.pop("workload")
    ttl = c.pop("ttl_seconds")
    workdir = c.pop("workdir")
    return AgentConfig(
        **{
            **c,
            "ca_root_pem": c["ca_root_pem"].encode(),
            "secrets_dir": Path(c["secrets_dir"]),
            "services": tuple(c["services"]),
        },
        ttl=dt.timedelta(seconds=ttl) if ttl else None,
        workdir=Path(workdir) if workdir else None,
        workload=None if w is None else Workload(**w),
    )


async def run(agent: NodeAgent, monitoring_address: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await agent.start()
    except IssueRefused as exc:
        print(f"error: the CA refused: {exc}", file=sys.stderr)
        return 1
    except (IssueFailed, SecretDirError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    monitoring = None
    try:
        if monitoring_address:
            from aiohttp import web

            from meshfed.core.monitoring import MonitoringServer

            async def debug(request: web.Request) -> web.Response:
                return web.json_response(agent.describe())

            _export_metrics(agent)
            monitoring = MonitoringServer(monitoring_address, name="meshfed.nodeagent")
            monitoring.add_routes([web.get("/debug/nodeagent", debug)])
            monitoring.add_readiness(agent.not_ready, agent.degraded)
            await monitoring.start()
            print(json.dumps({"monitoring": monitoring.bound}), flush=True)
        print(json.dumps({"identity": agent.config.identity, "ready": True}), flush=True)
        await stop.wait()
        logging.getLogger("meshfed.nodeagent").info("signal: stopping")
        return 0
    finally:
        if monitoring is not None:
            await monitoring.stop()
        await agent.stop()


def _export_metrics(agent: NodeAgent, registry: Any = None) -> None:
    """The agent's figures as Prometheus metrics, read at scrape time (only with a monitoring
    port, which loads prometheus-client anyway)."""
    from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily

    class Collector:
        def collect(self) -> Any:
            r = agent.rotator
            yield CounterMetricFamily(
                "meshfed_nodeagent_rotations", "Certificates renewed", value=r.rotations
            )
            yield CounterMetricFamily(
                "meshfed_nodeagent_rotation_failures", "Failed renewals", value=r.failures
            )
            expiry = agent.not_after.timestamp() if agent.not_after else 0.0
            yield GaugeMetricFamily(
                "meshfed_nodeagent_cert_expiry_timestamp_seconds",
                "When the current certificate expires",
                value=expiry,
            )
            yield CounterMetricFamily(
                "meshfed_nodeagent_secret_writes",
                "Secret file sets written for Envoy",
                value=agent.files.writes,
            )
            yield CounterMetricFamily(
                "meshfed_nodeagent_secret_write_failures",
                "Secret file writes that failed (Envoy kept the last good files)",
                value=agent.files.failures,
            )

    (registry or REGISTRY).register(Collector())


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m meshfed.agentproc PLAN", file=sys.stderr)
        return 2
    path = argv[1]
    try:
        with open(path, encoding="utf-8") as handle:
            plan = json.load(handle)
        os.unlink(path)  # it holds the join token: gone before anything else happens
        config = config_of(plan)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"error: plan {path}: {exc}", file=sys.stderr)
        return 1
    configure_logging(plan.get("log_level") or "INFO", plan.get("log_format") or "text")
    return asyncio.run(run(NodeAgent(config), str(plan.get("monitoring") or "")))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
