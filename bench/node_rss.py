"""Benchmark: the resident memory of the per-node processes, started for real (not a test).

Starts, on loopback, ``meshfed ca serve`` and ``meshfed up`` (the CA and a hub with Pilot, the
peers the node processes talk to), then each per-node process as an operator runs it:

1. ``meshfed nodeagent``: joins with a token, writes its certificate as Envoy's secret files
   (file-based SDS), then renews it (a 20 s certificate, renewed at half-life): the agent's
   RSS is read idle, and the short-lived issuing child it starts for the renewal is sampled
   every few milliseconds for its peak (``VmHWM``), the memory a renewal costs for a moment;
2. ``meshfed proxy``: starts a real Envoy sidecar and waits until Pilot saw its config ACKed.

Once a process says it is serving (``{"ready": true}`` / ``ready:``) and has idled for a few
seconds, its RSS, PSS, peak RSS and module count are read from ``/proc`` (the Python process
alone: the proxy's Envoy child is reported on its own line, not added). Every wait is bounded.

Run: ``flock /tmp/meshfed-integration.lock .venv/bin/python bench/node_rss.py [--idle 3]``.
Prints figures and writes ``bench/results/node_rss.json``. Istio 0.2's node agent (a Go
process) went from 50 MB to 7 MB in that release; the figures are quoted against its 7 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.71"  # the CA and the hub
NODE = "127.0.0.72"  # the node: agent and sidecar
TRUST_DOMAIN = "bench.local"
MESHFED = [sys.executable, "-m", "meshfed.cli", "--log-level", "WARNING"]  # see --python
GOAL_MB = 25.0
ISTIO_02_AGENT_MB = 7.0  # Istio 0.2's node agent, as its release notes give it


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def memory(pid: int) -> dict[str, float]:
    """RSS, peak RSS and PSS of one process, in MB, from /proc."""
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
            status[key] = int(value.split()[0])
    pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            pss = int(line.split()[1])
    return {
        "rss_mb": round(status["VmRSS"] / 1024, 1),
        "peak_rss_mb": round(status["VmHWM"] / 1024, 1),
        "rss_anon_mb": round(status["RssAnon"] / 1024, 1),
        "rss_file_mb": round(status["RssFile"] / 1024, 1),
        "pss_mb": round(pss / 1024, 1),
        "threads": status["Threads"],
    }


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


@contextlib.contextmanager
def process(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    handle = log.open("wb")
    proc = subprocess.Popen(
        argv,
        cwd=log.parent,  # not the checkout: `-m` would import the meshfed found there
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        handle.close()


def wait_line(
    proc: subprocess.Popen, log: Path, match: Callable[[str], bool], timeout: float
) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if match(line):
                return line
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args[3:5]} exited early:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)
    raise SystemExit(f"timed out after {timeout:g}s waiting for {log.name}:\n{log.read_text()}")


def measure(proc: subprocess.Popen, idle: float) -> dict:
    time.sleep(idle)  # serving and idle: what a node carries between events
    figures = memory(proc.pid)
    figures["modules"] = _module_count(proc.pid)
    kids = children(proc.pid)
    if kids:
        figures["child_rss_mb"] = [memory(k)["rss_mb"] for k in kids]
    return figures


def renewal_peak(pid: int, timeout: float) -> dict:
    """Wait (bounded) for the agent's next issuing child and follow it until it exits: its
    peak RSS, and the agent's own RSS meanwhile."""
    deadline = time.monotonic() + timeout
    peak = agent_max = 0.0
    seen: set[int] = set()
    while time.monotonic() < deadline:
        kids = children(pid)
        for kid in kids:
            with contextlib.suppress(OSError, KeyError):
                peak = max(peak, memory(kid)["peak_rss_mb"])
                seen.add(kid)
        agent_max = max(agent_max, memory(pid)["rss_mb"])
        if seen and not kids:
            break
        time.sleep(0.005)
    if not seen:
        raise SystemExit(f"no renewal child seen within {timeout:g}s")
    return {"child_peak_rss_mb": peak, "agent_rss_mb_meanwhile": agent_max, "children": len(seen)}


def _module_count(pid: int) -> int | None:
    """Mapped shared objects (a proxy for what the imports pulled in)."""
    maps = {
        line.split()[-1]
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
        if line.endswith(".so") or ".so." in line
    }
    return len(maps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=3.0, help="seconds idle before reading")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "node_rss.json"))
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="the interpreter whose installed meshfed is measured (another checkout's venv, "
        "for a before/after comparison)",
    )
    args = parser.parse_args()
    MESHFED[0] = args.python
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="meshfed-rss-") as tmp, contextlib.ExitStack() as stack:
        base = Path(tmp)
        state = base / "ca"
        ca_ports = [free_port(HOST) for _ in range(3)]
        ca = stack.enter_context(
            process(
                [
                    *MESHFED,
                    "ca",
                    "serve",
                    "--trust-domain",
                    TRUST_DOMAIN,
                    "--state-dir",
                    str(state),
                    "--listen",
                    f"{HOST}:{ca_ports[0]}",
                    "--renew-listen",
                    f"{HOST}:{ca_ports[1]}",
                    "--monitoring",
                    f"{HOST}:{ca_ports[2]}",
                ],
                base / "ca.log",
            )
        )
        info = json.loads(wait_line(ca, base / "ca.log", lambda s: '"bootstrap"' in s, 60))
        # MALLOC_ARENA_MAX=2 was measured too: no difference (61.8 / 61.9 MB).
        variants: dict[str, dict[str, str]] = {"nodeagent": {}}
        renewal: dict = {}
        for name, env in variants.items():
            token = subprocess.run(
                [*MESHFED, "ca", "token", "create", "--state-dir", str(state), "-n", "bench",
                 "-s", "web", "--ttl", "10m"],
                capture_output=True, text=True, timeout=60, check=True, cwd=base,
            ).stdout.strip()  # fmt: skip
            token_file = base / f"token-{name}"
            token_file.write_text(token)
            token_file.chmod(0o600)
            agent_log = base / f"{name}.log"
            argv = [
                *MESHFED, "nodeagent", "--trust-domain", TRUST_DOMAIN,
                "--ca", f"{HOST}:{ca_ports[0]}", "--ca-renewal", f"{HOST}:{ca_ports[1]}",
                "--ca-root", info["root"], "-n", "bench", "-s", "web",
                "--token-file", str(token_file), "--secrets-dir", str(base / name),
                "--ttl", "20s", "--bundle-refresh", "0",
            ]  # fmt: skip
            with process(argv, agent_log, env) as agent:
                wait_line(agent, agent_log, lambda s: '"ready": true' in s, 60)
                results[name] = measure(agent, args.idle)
                renewal = renewal_peak(agent.pid, timeout=30.0)
            print(f"meshfed nodeagent (secret files written) {env or ''}: {results[name]}")
            print(f"  during a renewal: {renewal}", flush=True)
            results[name]["renewal"] = renewal

        monitoring, discovery = free_port(HOST), free_port(HOST)
        config = base / "mesh.yaml"
        config.write_text(
            "apiVersion: meshfed.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: bench}\n"
            f"spec:\n  trustDomain: {TRUST_DOMAIN}\n"
            f"  listen: {{monitoring: '{HOST}:{monitoring}', discovery: '{HOST}:{discovery}'}}\n"
            "  registries:\n    - name: static\n      kind: static\n"
            f"      paths: ['{ROOT / 'meshfed' / 'defaults' / 'services.yaml'}']\n"
        )
        hub = stack.enter_context(process([*MESHFED, "up", "-c", str(config)], base / "hub.log"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and hub.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection((HOST, monitoring), 1):
                break
            time.sleep(0.2)
        proxy_log = base / "proxy.log"
        with process(
            [
                *MESHFED,
                "proxy",
                "-c",
                str(config),
                "--ip",
                NODE,
                "--workload",
                "web",
                "--namespace",
                "bench",
                "--admin-port",
                str(free_port(NODE)),
                "--status-port",
                str(free_port(NODE)),
            ],
            proxy_log,
        ) as proxy:
            wait_line(proxy, proxy_log, lambda s: s.startswith("ready:"), 90)
            results["proxy"] = measure(proxy, args.idle)
        print(f"meshfed proxy (Envoy ACKed, Envoy not counted): {results['proxy']}", flush=True)

    for name, figures in results.items():
        verdict = "within" if figures["rss_mb"] <= GOAL_MB else "above"
        print(
            f"{name}: {figures['rss_mb']} MB RSS, {figures['pss_mb']} MB PSS ({verdict} the "
            f"{GOAL_MB:g} MB goal; {figures['rss_mb'] / ISTIO_02_AGENT_MB:.1f}x Istio 0.2's "
            f"{ISTIO_02_AGENT_MB:g} MB agent)"
        )
    document = {
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "goal_rss_mb": GOAL_MB,
        "istio_0_2_agent_mb": ISTIO_02_AGENT_MB,
        "idle_s": args.idle,
        "python": args.python,
        "processes": results,
    }
    Path(args.out).write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
