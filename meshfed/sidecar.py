"""The long-running process of ``meshfed proxy``: one Envoy, its readiness, its stop.

Why a module of its own: there is one of these per Envoy, so what it keeps resident is paid per
sidecar. Building the bootstrap needs Envoy's protobuf descriptors and the mesh config reader;
running Envoy afterwards needs neither. ``meshfed proxy`` builds the bootstrap, writes it with a
:class:`Plan`, then replaces itself with ``python -m meshfed.sidecar PLAN`` (same process id, so
signals and supervisors see one process), and this module imports only the standard library:
threads, ``subprocess``, ``http.server`` and ``urllib``. The Mixer client (``--mixer``) and the
identity agent (``--ca``) are the exceptions: they are gRPC servers and clients, loaded only when
the plan asks for them.

Promises:
- Envoy runs in its own process group, from the plan's bootstrap; stopping (SIGTERM, SIGINT)
  stops the whole group (TERM, then KILL after a bound), and a second signal does so at once.
- ``ready: <node> ACKed {...}`` is printed only once the hub's ``/healthz/ready`` answers (or
  the hub has no such endpoint) and Pilot's ``/debug/syncz`` says this proxy ACKed a full
  config; each new reason for waiting on the hub is logged once.
- ``GET /healthz/ready`` on ``ip:status_port`` answers 503 until then, afterwards 200 for as
  long as Envoy's admin ``/ready`` says so; every other path is 404.
- Exit 0 on a stop, 1 when Envoy exits on its own or a wait times out (the reason on stderr,
  no traceback); the plan's private folder is removed on the way out.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, NamedTuple

log = logging.getLogger("meshfed.proxy")

STOP_GRACE_S = 5.0


class Plan(NamedTuple):
    """Everything the sidecar process needs, written as JSON by ``meshfed proxy``.

    A named tuple, not a dataclass: ``dataclasses`` would load ``inspect`` for good."""

    envoy: str  # the Envoy executable
    bootstrap: str  # the written bootstrap (JSON)
    workdir: str  # Envoy's log lives here
    node_id: str
    ip: str
    admin_port: int
    hub: str
    status_port: int = 0
    envoy_log_level: str = "warning"
    hub_ready_timeout: float = 600.0
    ready_timeout: float = 60.0
    remove_workdir: bool = False  # a private folder made for this run
    log_level: str = "INFO"
    log_format: str = "text"
    # The node-local Mixer client: {"socket", "mixer", "cache_entries", "report_batch",
    # "report_delay", "trace_collector"}, or empty for none.
    mixer: dict[str, Any] | None = None
    # The identity agent (``--ca``): :class:`nodeagent.agent.AgentConfig`'s fields, the root
    # certificate as ``ca_root`` (a path) and the secrets directory as a string; empty for none.
    identity: dict[str, Any] | None = None

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self._asdict()))

    @classmethod
    def read(cls, path: Path) -> Plan:
        return cls(**json.loads(path.read_text()))

    @property
    def admin_url(self) -> str:
        return f"http://{self.ip}:{self.admin_port}"

    @property
    def log_path(self) -> Path:
        return Path(self.workdir) / "envoy.log"


def die_with_parent() -> list[str]:
    """A prefix that makes Envoy get SIGTERM when its parent dies, even by SIGKILL (Linux)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM"] if setpriv and sys.platform == "linux" else []


def envoy_command(
    envoy: str, bootstrap: str, log_level: str, extra_args: tuple[str, ...] = ()
) -> list[str]:
    """How every sidecar Envoy is started: one worker, a dynamic base id (several per host)."""
    return [
        *die_with_parent(),
        envoy,
        "-c",
        bootstrap,
        "--use-dynamic-base-id",
        "--concurrency",
        "1",
        "--log-level",
        log_level,
        "--drain-time-s",
        "1",
        *extra_args,
    ]


def http_get(url: str, timeout: float) -> tuple[int, str]:
    """Status and body of a GET; an HTTP error status is an answer, not an exception."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


class Envoy:
    """The Envoy child: started once, stopped with its process group."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def start(self) -> None:
        self._log = open(self.plan.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            envoy_command(self.plan.envoy, self.plan.bootstrap, self.plan.envoy_log_level),
            stdout=self._log,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def live(self) -> tuple[bool, str]:
        try:
            status, body = http_get(self.plan.admin_url + "/ready", 1.0)
        except (OSError, ValueError) as exc:
            return False, str(exc)
        return status == 200 and body.strip() == "LIVE", body.strip()

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.plan.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


class Probe:
    """``GET /healthz/ready`` for orchestrator probes, in a daemon thread; with a Mixer client
    also ``/debug/mixerclient`` (its state, JSON: whether it reaches Mixer) and ``/metrics``
    (the process's Prometheus registry, where the client counts)."""

    def __init__(self, envoy: Envoy, address: str, port: int, mixer: Any = None) -> None:
        self.synced = False
        probe = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if mixer is not None and path == "/debug/mixerclient":
                    self._answer(200, mixer.describe())
                elif mixer is not None and path == "/metrics":
                    self._metrics()
                elif path != "/healthz/ready":
                    self._answer(404, {"error": "not found"})
                elif not probe.synced:
                    self._answer(503, {"ready": False, "reason": "config not ACKed"})
                else:
                    live, body = envoy.live()
                    if live:
                        self._answer(200, {"ready": True})
                    else:
                        self._answer(503, {"ready": False, "reason": f"envoy: {body}"})

            def _answer(self, status: int, document: dict[str, Any]) -> None:
                payload = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _metrics(self) -> None:
                # prometheus_client is loaded by the Mixer client already
                from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

                payload = generate_latest(REGISTRY)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # probes every few seconds are not news

        self.server = http.server.ThreadingHTTPServer((address, port), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Stopped(Exception):
    """A stop signal arrived while waiting."""


def wait_hub_ready(hub: str, timeout: float, stop: threading.Event) -> None:
    """Until the hub's ``/healthz/ready`` answers 200 (or 404: a server without it, such as
    Pilot embedded in another process, whose readiness the proxy's own check covers)."""
    deadline = time.monotonic() + timeout
    shown = None
    while time.monotonic() < deadline and not stop.is_set():
        try:
            status, body = http_get(f"{hub}/healthz/ready", 2.0)
            if status == 200:
                return
            if status == 404:
                log.info("hub %s has no /healthz/ready; not waiting for it", hub)
                return
            try:
                reasons = json.loads(body).get("not_ready", [])
            except (ValueError, AttributeError):
                reasons = []
            reason = "; ".join(reasons) or f"HTTP {status}"
        except (OSError, ValueError) as exc:
            reason = f"hub not reachable at {hub} ({exc or type(exc).__name__})"
        if reason != shown:  # a log line, so that --log-format json keeps stderr JSON
            log.info("waiting for the hub: %s", reason, extra={"hub": hub})
            shown = reason
        stop.wait(0.5)
    if stop.is_set():
        raise Stopped()
    raise TimeoutError(f"hub {hub} not ready after {timeout:g}s: {shown}")


def acked_versions(state: dict[str, Any]) -> dict[str, str]:
    """Per xDS type of Pilot's entry for a proxy, the version it ACKed; a type the proxy never
    asked for (EDS of a gateway or sidecar with no service to reach) says so instead."""
    return {
        name: entry.get("acked_version") or entry.get("status") or "?"
        for name, entry in state.get("types", {}).items()
    }


def wait_synced(envoy: Envoy, plan: Plan, stop: threading.Event) -> dict[str, Any]:
    """Until Envoy is LIVE and Pilot says this proxy ACKed a full config; Pilot's entry."""
    deadline = time.monotonic() + plan.ready_timeout
    last_live = "not started"
    while True:
        if stop.is_set():
            raise Stopped()
        if envoy.exited() is not None:
            raise RuntimeError(f"envoy exited ({envoy.exited()}): {envoy.tail()}")
        live, last_live = envoy.live()
        if live:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"envoy not LIVE after {plan.ready_timeout:g}s (last: {last_live}); "
                f"log: {envoy.tail()}"
            )
        stop.wait(0.1)
    query = urllib.parse.urlencode({"proxy": plan.node_id})
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        if stop.is_set():
            raise Stopped()
        if envoy.exited() is not None:
            raise RuntimeError(f"envoy exited: {envoy.tail()}")
        with contextlib.suppress(OSError, ValueError):
            status, body = http_get(f"{plan.hub}/debug/syncz?{query}", 2.0)
            if status == 200:
                proxies = json.loads(body).get("proxies", [])
                last = proxies[0] if proxies else None
                if last is not None and last.get("ready"):
                    return last
        stop.wait(0.1)
    types = {k: v.get("status") for k, v in (last or {}).get("types", {}).items()}
    raise TimeoutError(
        f"proxy {plan.node_id} not synced after {plan.ready_timeout:g}s: {types or last}"
    )


class AsyncParts:
    """The parts that are ``asyncio`` servers, on one event loop of their own: the identity
    agent (the proxy's certificate, as secret files Envoy watches) and the node-local Mixer
    client (``grpc.aio``). Loaded only when the plan asks for them: they are what a plain
    sidecar does without."""

    def __init__(self, plan: Plan) -> None:
        import asyncio

        self._asyncio = asyncio
        self.loop = asyncio.new_event_loop()
        self.agent: Any = None
        self.mixer: Any = None
        self.tracer: Any = None
        if plan.identity:
            from meshfed.nodeagent.agent import AgentConfig, NodeAgent

            fields = dict(plan.identity)
            fields["ca_root_pem"] = Path(fields.pop("ca_root")).read_bytes()
            fields["secrets_dir"] = Path(fields["secrets_dir"])
            self.agent = NodeAgent(AgentConfig(**fields))
        if plan.mixer:
            from meshfed.nodeagent.mixerclient.server import MixerClient

            settings = plan.mixer
            if settings.get("trace_collector"):
                from meshfed.core.tracing import TracingSettings, tracer_provider

                # Only Checks Envoy traced get a span: they follow Envoy's sampling decision.
                traced = TracingSettings(
                    enabled=True, collector=settings["trace_collector"], sampling=0.0
                )
                self.tracer = tracer_provider(traced, "mixer-client")
            self.mixer = MixerClient(
                settings["socket"],
                settings["mixer"],
                cache_entries=settings["cache_entries"],
                report_batch=settings["report_batch"],
                report_delay=settings["report_delay"],
                tracer=self.tracer.get_tracer("meshfed.mixerclient") if self.tracer else None,
            )
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def _run(self, coroutine: Any, timeout: float) -> Any:
        return self._asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start_agent(self) -> None:
        """The certificate first: Envoy's first SDS request must find it."""
        if not self._thread.is_alive():
            self._thread.start()
        if self.agent is not None:
            self._run(self.agent.start(), 120)

    def start_mixer(self) -> None:
        """Before Envoy: its first Check finds the socket."""
        if not self._thread.is_alive():
            self._thread.start()
        if self.mixer is not None:
            self._run(self.mixer.start(), 30)

    def stop(self) -> None:
        if self._thread.is_alive():
            for part in (self.mixer, self.agent):
                if part is not None:
                    with contextlib.suppress(Exception):  # stopping: Envoy is gone already
                        self._run(part.stop(), 10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
        if self.tracer is not None:
            self.tracer.shutdown()  # the last spans still go out


def run(plan: Plan) -> int:
    """Run Envoy per ``plan`` until stopped; the process's exit code."""
    stop = threading.Event()
    envoy = Envoy(plan)

    def on_signal(signum: int, frame: object) -> None:
        if stop.is_set():  # a second signal: no more grace
            envoy.stop(grace=0.0)
            os._exit(1)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    probe: Probe | None = None
    parts: AsyncParts | None = None
    try:
        if plan.mixer or plan.identity:
            parts = AsyncParts(plan)
        if plan.status_port:  # a port in use is an OSError: reported below, no traceback
            probe = Probe(envoy, plan.ip, plan.status_port, parts.mixer if parts else None)
            probe.start()
        if parts is not None and plan.identity:
            ca = plan.identity["ca_address"]
            try:
                parts.start_agent()
            except Exception as exc:  # refused, or the CA unreachable after its retries
                print(f"error: no certificate from the CA at {ca}: {exc}", file=sys.stderr)
                return 1
            print(f"identity {parts.agent.config.identity} from {ca}", flush=True)
        if parts is not None and plan.mixer:
            parts.start_mixer()
            where = f", metrics {plan.ip}:{plan.status_port}" if plan.status_port else ""
            print(
                f"mixer client on unix:{plan.mixer['socket']} -> {plan.mixer['mixer']}{where}",
                flush=True,
            )
        envoy.start()
        print(f"envoy started (admin {plan.admin_url}, log {plan.log_path})", flush=True)
        # The hub decides how long registries may take (initialSyncTimeout); the proxy waits
        # for that verdict, and only then for its own config.
        wait_hub_ready(plan.hub, plan.hub_ready_timeout, stop)
        state = wait_synced(envoy, plan, stop)
        if probe is not None:
            probe.synced = True
        versions = acked_versions(state)
        print(f"ready: {plan.node_id} ACKed {versions}", flush=True)
        while not stop.wait(0.2):
            code = envoy.exited()
            if code is not None:
                print(f"envoy exited with {code}:\n{envoy.tail()}", file=sys.stderr)
                return 1
        return 0
    except Stopped:
        return 0
    except (TimeoutError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        envoy.stop()
        if parts is not None:
            parts.stop()
        if probe is not None:
            probe.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if plan.remove_workdir:
            shutil.rmtree(plan.workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(
            "usage: python -m meshfed.sidecar PLAN.json (written by `meshfed proxy`)",
            file=sys.stderr,
        )
        return 2
    try:
        plan = Plan.read(Path(args[0]))
    except (OSError, ValueError, TypeError) as exc:
        print(f"error: cannot read the sidecar plan {args[0]}: {exc}", file=sys.stderr)
        return 2
    from meshfed.logformat import configure_logging

    configure_logging(plan.log_level, plan.log_format)
    for handler in logging.getLogger().handlers:
        handler.addFilter(ProxyField(plan.node_id))
    return run(plan)


class ProxyField(logging.Filter):
    """Every record of this process names its proxy (``proxy``, a field of JSON logs): the
    process serves one Envoy, so its Mixer client's and identity agent's lines are that
    proxy's too."""

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "proxy"):
            record.proxy = self.node_id
        return True


if __name__ == "__main__":
    sys.exit(main())
