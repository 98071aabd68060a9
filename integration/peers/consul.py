"""Real Consul agents on loopback: a single dev-style server and a three-server cluster.

The adapters must be tested against what users run: a Raft cluster that can lose its
leader. :class:`ConsulCluster` starts three ``-server -bootstrap-expect=3`` agents on
three distinct 127.0.0.x addresses, each with its own ports and data directory, joined
with ``retry_join``; a test can stop a member (SIGTERM or SIGKILL: servers do not
leave on terminate, so both look like a crash to the others), restart it on the same
data directory and ports, and ask who the leader is. :func:`start_dev_agent` starts
one in-memory ``-dev`` agent for tests that only need a catalog.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from integration.peers.artifacts import consul_path, require_binary
from integration.peers.http import get_json
from integration.peers.ports import free_ports, loopback_host, loopback_hosts
from integration.peers.process import PeerError, PeerProcess

if TYPE_CHECKING:
    import consul

START_TIMEOUT = 60.0


def _binary() -> Path:
    return require_binary(consul_path(), "consul", "go", "consul")


@dataclass
class ConsulAgent:
    """One Consul agent: where it listens and the process that runs it."""

    name: str
    host: str
    http_port: int
    serf_lan_port: int
    serf_wan_port: int
    server_port: int
    grpc_port: int
    data_dir: Path
    config_file: Path
    log_path: Path
    process: PeerProcess | None = None

    @property
    def http_addr(self) -> str:
        """``host:port`` of the HTTP API (what ``CONSUL_HTTP_ADDR`` takes)."""
        return f"{self.host}:{self.http_port}"

    @property
    def url(self) -> str:
        """Base URL of the HTTP API."""
        return f"http://{self.http_addr}"

    @property
    def server_addr(self) -> str:
        """``host:port`` of the Raft/RPC server port (what ``/v1/status/leader`` returns)."""
        return f"{self.host}:{self.server_port}"

    @property
    def serf_lan_addr(self) -> str:
        """``host:port`` of LAN gossip (what ``retry_join`` takes)."""
        return f"{self.host}:{self.serf_lan_port}"

    def running(self) -> bool:
        """True while the agent process is alive."""
        return self.process is not None and self.process.running()

    def leader(self) -> str:
        """The leader's server address as this agent sees it ('' when there is none)."""
        return str(get_json(f"{self.url}/v1/status/leader", timeout=2.0) or "")

    def client(self, **kwargs: Any) -> consul.Consul:
        """A ``py-consul`` client for this agent."""
        import consul

        return consul.Consul(host=self.host, port=self.http_port, **kwargs)


def _new_agent(name: str, host: str, base: Path) -> ConsulAgent:
    http, lan, wan, server, grpc = free_ports(5, host)
    data_dir = base / name / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    return ConsulAgent(
        name=name,
        host=host,
        http_port=http,
        serf_lan_port=lan,
        serf_wan_port=wan,
        server_port=server,
        grpc_port=grpc,
        data_dir=data_dir,
        config_file=base / name / "agent.json",
        log_path=base / name / "consul.log",
    )


def _write_config(agent: ConsulAgent, extra: dict[str, object]) -> None:
    config: dict[str, object] = {
        "datacenter": "dc1",
        "node_name": agent.name,
        "data_dir": str(agent.data_dir),
        "bind_addr": agent.host,
        "advertise_addr": agent.host,
        "client_addr": agent.host,
        "ports": {
            "http": agent.http_port,
            "https": -1,
            "dns": -1,
            "serf_lan": agent.serf_lan_port,
            "serf_wan": agent.serf_wan_port,
            "server": agent.server_port,
            "grpc": agent.grpc_port,
            "grpc_tls": -1,
        },
        "log_level": "INFO",
        "disable_update_check": True,
        "enable_script_checks": False,
        "ui_config": {"enabled": False},
        # Fast failure detection and elections: tests wait for leader changes.
        "performance": {"raft_multiplier": 1},
    }
    config.update(extra)
    agent.config_file.write_text(json.dumps(config, indent=2))


def _launch(agent: ConsulAgent, dev: bool = False) -> None:
    argv: list[str | Path] = [_binary(), "agent", f"-config-file={agent.config_file}"]
    if dev:
        argv.insert(2, "-dev")
    agent.process = PeerProcess(f"consul[{agent.name}@{agent.host}]", argv, agent.log_path).start()


def _wait_leader(agent: ConsulAgent, timeout: float) -> str:
    assert agent.process is not None
    agent.process.wait_until(
        lambda: bool(agent.leader()), "for a Raft leader (/v1/status/leader)", timeout
    )
    return agent.leader()


def reserve_dev_agent(base: Path, host: str | None = None) -> ConsulAgent:
    """A dev agent's ports and folders, not started: its address can be configured before
    Consul runs (pass it to :func:`start_dev_agent` later)."""
    return _new_agent("dev", host or loopback_host(), base)


@contextmanager
def start_dev_agent(
    base: Path,
    host: str | None = None,
    extra_config: dict[str, object] | None = None,
    agent: ConsulAgent | None = None,
) -> Iterator[ConsulAgent]:
    """A single in-memory ``consul agent -dev`` server, ready (leader elected, node synced).

    ``extra_config`` is merged into the agent's JSON config, e.g.
    ``{"limits": {"http_max_conns_per_client": 20}}``; ``agent`` (from
    :func:`reserve_dev_agent`) starts it on ports chosen earlier.
    """
    agent = agent or _new_agent("dev", host or loopback_host(), base)
    _write_config(agent, dict(extra_config or {}))
    _launch(agent, dev=True)
    try:
        assert agent.process is not None
        _wait_leader(agent, START_TIMEOUT)
        agent.process.wait_until(
            lambda: any(n["Node"] == agent.name for n in get_json(f"{agent.url}/v1/catalog/nodes")),
            "for the agent's node in the catalog",
            START_TIMEOUT,
        )
        yield agent
    finally:
        if agent.process:
            agent.process.stop()


@dataclass
class ConsulCluster:
    """Three (or ``size``) Consul servers on distinct loopback addresses."""

    agents: list[ConsulAgent] = field(default_factory=list)

    @property
    def http_addrs(self) -> list[str]:
        """``host:port`` of every member's HTTP API."""
        return [a.http_addr for a in self.agents]

    def running_agents(self) -> list[ConsulAgent]:
        """Members whose process is alive."""
        return [a for a in self.agents if a.running()]

    def agent_by_server_addr(self, addr: str) -> ConsulAgent:
        """The member whose Raft address is ``addr``."""
        for agent in self.agents:
            if agent.server_addr == addr:
                return agent
        raise KeyError(addr)

    def leader(self, timeout: float = 30.0, exclude: ConsulAgent | None = None) -> ConsulAgent:
        """The current leader, once every running member agrees on it.

        ``exclude`` names a member that must not be the answer (a stopped old leader
        that other members may still report for a moment).
        """
        deadline = time.monotonic() + timeout
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            seen = {}
            for agent in self.running_agents():
                try:
                    seen[agent.name] = agent.leader()
                except Exception as exc:
                    seen[agent.name] = f"error: {exc}"
            values = set(seen.values())
            if len(values) == 1:
                addr = values.pop()
                if addr and not addr.startswith("error"):
                    try:
                        candidate = self.agent_by_server_addr(addr)
                    except KeyError:
                        candidate = None
                    if candidate and candidate.running() and candidate is not exclude:
                        return candidate
            time.sleep(0.25)
        logs = "\n".join(
            f"--- {a.name} ---\n{a.process.log_tail(15) if a.process else ''}" for a in self.agents
        )
        raise PeerError(f"no agreed Consul leader after {timeout:.0f}s; seen: {seen}\n{logs}")

    def stop_member(self, agent: ConsulAgent, *, hard: bool = False) -> None:
        """Stop one member (SIGTERM, or SIGKILL with ``hard``); its data dir is kept."""
        if agent.process is None:
            return
        if hard:
            agent.process.kill()
        else:
            agent.process.stop()

    def start_member(self, agent: ConsulAgent, timeout: float = START_TIMEOUT) -> None:
        """Restart a stopped member on its old address, ports and data dir; wait for it to
        see a leader again."""
        if agent.running():
            return
        _launch(agent)
        _wait_leader(agent, timeout)

    def stop(self) -> None:
        """Stop every member."""
        for agent in self.agents:
            if agent.process:
                agent.process.stop()


@contextmanager
def start_cluster(base: Path, size: int = 3) -> Iterator[ConsulCluster]:
    """``size`` Consul servers with ``-bootstrap-expect=size``, ready with an agreed leader."""
    hosts = loopback_hosts(size)
    agents = [_new_agent(f"server{i + 1}", host, base) for i, host in enumerate(hosts)]
    cluster = ConsulCluster(agents)
    for agent in agents:
        peers = [a.serf_lan_addr for a in agents if a is not agent]
        _write_config(
            agent,
            {
                "server": True,
                "bootstrap_expect": size,
                "retry_join": peers,
                "retry_interval": "1s",
                "leave_on_terminate": False,
                "skip_leave_on_interrupt": True,
                # Keep a killed server in the peer set so it can come back.
                "autopilot": {"cleanup_dead_servers": False},
            },
        )
    try:
        for agent in agents:
            _launch(agent)
        for agent in agents:
            _wait_leader(agent, START_TIMEOUT)
        cluster.leader(timeout=START_TIMEOUT)
        yield cluster
    finally:
        cluster.stop()
