"""Pilot's CLI commands, registered into ``meshfed`` by ``meshfed.cli`` when present.

- ``meshfed bootstrap``: print a sidecar's Envoy bootstrap (JSON).
- ``meshfed proxy``: run a real Envoy sidecar (or ``--gateway``; ``--sds-socket`` for mesh mTLS);
  prints ``ready`` once Envoy has ACKed its first full config from Pilot, stops Envoy (its
  whole process group) on Ctrl-C / SIGTERM. A proxy without ``--sds-socket`` in a mesh whose
  config turns mutual TLS on gets a warning on stderr (STRICT services will refuse it).
- ``meshfed proxy-status [PROXY]``: per proxy and type, SYNCED / NOT SENT / STALE / NACKED.
- ``meshfed proxy-config cluster|listener|route|endpoint PROXY``: what Pilot last sent.
- ``meshfed demo``: a working mesh with real sidecars and traffic, in under a minute.

The status commands read the hub's monitoring port, like ``meshfed registry``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import time
import urllib.parse
import urllib.request
from typing import Any

from meshfed.core.lifecycle import handle_stop_signals
from meshfed.pilot import xds_types as T
from meshfed.pilot.node import DEFAULT_ADMIN_PORT, DEFAULT_OUTBOUND_HTTP_PORT

log = logging.getLogger("meshfed.proxy")


def _add_hub_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hub", help="hub monitoring URL, e.g. http://127.0.0.1:15014")
    p.add_argument("--config", "-c", help="MeshConfig file to find the hub's address")


def _add_proxy_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ip", required=True, help="the proxy's own (loopback) address")
    p.add_argument("--workload", required=True, help="workload name, e.g. reviews-v1")
    p.add_argument("--namespace", default="default")
    p.add_argument("--identity", default="", help="SPIFFE ID (default: from namespace/workload)")
    p.add_argument(
        "--app-ports", default="", help="INBOUND:APP pairs, e.g. 9080:8080 (inbound forwarding)"
    )
    p.add_argument("--app-address", default="", help="where the app listens (default: --ip)")
    p.add_argument("--pilot", default="", help="Pilot's ADS address (default: from config)")
    p.add_argument("--admin-port", type=int, default=DEFAULT_ADMIN_PORT)
    p.add_argument("--outbound-port", type=int, default=DEFAULT_OUTBOUND_HTTP_PORT)
    p.add_argument("--delta", action="store_true", help="use delta (incremental) xDS")
    p.add_argument(
        "--interception",
        choices=["none", "redirect"],
        default="none",
        help="redirect: iptables sends the app's traffic to 15001/15006 (docs/pilot.md)",
    )
    p.add_argument(
        "--locality",
        default="",
        help="region/zone/subzone this proxy runs in: Pilot prefers endpoints there and fails "
        "over to the next closest (default: the locality the registry gives this IP)",
    )
    p.add_argument(
        "--gateway",
        action="store_true",
        help="run an ingress gateway (Ingress / Gateway config) instead of a sidecar",
    )
    p.add_argument(
        "--gateway-port",
        type=int,
        default=0,
        help="the gateway's HTTP port (default 80); TLS is served on 443, or port+363",
    )
    p.add_argument(
        "--sds-socket",
        default="",
        help="the node agent's SDS socket (meshfed nodeagent --sds-socket): the proxy holds a "
        "mesh certificate for mutual TLS (needed to reach STRICT services when pilot.mtls is on)",
    )
    p.add_argument(
        "--mixer",
        default="",
        metavar="HOST:PORT",
        help="run the node-local Mixer client beside Envoy, calling the hub's Mixer there: "
        "Pilot then adds policy checks and telemetry (spec.mixer.dataPath) to this proxy",
    )
    p.add_argument(
        "--mixer-socket",
        default="",
        help="the Mixer client's Unix socket (default: a private folder per proxy)",
    )
    p.add_argument("--config", "-c", help="MeshConfig file (Pilot and hub addresses)")


def _mixer_socket(args: argparse.Namespace) -> str:
    import os
    import tempfile

    if not getattr(args, "mixer", ""):
        return ""
    if args.mixer_socket:
        return os.path.abspath(os.path.expanduser(args.mixer_socket))
    return os.path.join(tempfile.mkdtemp(prefix="meshfed-mixer-"), "mixer.sock")


def _spec(args: argparse.Namespace) -> Any:
    import os

    from meshfed.config import load_mesh_config
    from meshfed.proxy import ProxySpec
    from meshfed.registry.model import spiffe_id

    mesh = load_mesh_config(args.config)
    sds = os.path.abspath(os.path.expanduser(args.sds_socket)) if args.sds_socket else ""
    return ProxySpec(
        ip=args.ip,
        workload=args.workload,
        namespace=args.namespace,
        identity=args.identity or spiffe_id(mesh.trust_domain, args.namespace, args.workload),
        app_ports=args.app_ports,
        app_address=args.app_address,
        pilot=args.pilot or mesh.discovery_address,
        admin_port=args.admin_port,
        outbound_http_port=(args.gateway_port or 80) if args.gateway else args.outbound_port,
        delta=args.delta,
        role="router" if args.gateway else "sidecar",
        interception=args.interception.upper(),
        locality=args.locality,
        sds_socket=sds,
        mixer_socket=_mixer_socket(args),
    )


def mtls_warning(args: argparse.Namespace) -> str:
    """What to tell the operator of a proxy run without SDS in a mesh with mutual TLS on
    ("" when there is nothing to say): it would reach STRICT services in plain text and be
    refused. Pilot also lists the affected clusters under the proxy's problems."""
    if args.sds_socket or getattr(args, "ca", None):
        return ""
    from meshfed.config import load_mesh_config
    from meshfed.security import mtls

    policy = mtls.policy_from_config(load_mesh_config(args.config).pilot)
    modes = {policy.mode, *policy.overrides.values()}
    if modes == {mtls.Mode.OFF}:
        return ""
    what = "gateway" if args.gateway else "proxy"
    return (
        f"warning: the mesh runs mutual TLS (pilot.mtls) but this {what} has no --sds-socket: "
        "it cannot hold a mesh certificate, so STRICT services refuse it (503). Run "
        "`meshfed nodeagent --sds-socket PATH ...` beside it and pass --sds-socket PATH."
    )


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from meshfed.proxy import bootstrap

    print(json.dumps(bootstrap(_spec(args)), indent=2))
    return 0


def identity_agent(args: argparse.Namespace, spec: Any) -> Any:
    """With ``--ca``: the node agent that gets this proxy's certificate (with the pod's
    service-account token, or a join token) and serves it over SDS on a private socket; the
    proxy then runs as if given ``--sds-socket``. None without ``--ca``."""
    import os
    import tempfile
    from pathlib import Path

    if not getattr(args, "ca", None):
        return None
    from meshfed.nodeagent.agent import AgentConfig, NodeAgent
    from meshfed.registry.model import parse_spiffe_id

    trust_domain, namespace, account = parse_spiffe_id(spec.identity)
    if args.service_account and args.service_account != account:
        raise SystemExit(f"error: --service-account {args.service_account} is not {spec.identity}")

    def secret(path: str | None) -> str | None:
        if not path:
            return None
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise SystemExit(f"error: cannot read {path}: {exc.strerror or exc}") from None

    try:
        root = Path(args.ca_root).read_bytes()
    except OSError as exc:
        raise SystemExit(f"error: cannot read --ca-root {args.ca_root}: {exc}") from None
    join = secret(args.token_file) or os.environ.get("MESHFED_JOIN_TOKEN")
    kube = secret(args.kubernetes_token_file)
    if not join and not kube:
        raise SystemExit("error: --ca needs --kubernetes-token-file or --token-file")
    folder = Path(tempfile.mkdtemp(prefix="meshfed-proxy-sds-"))
    folder.chmod(0o700)
    config = AgentConfig(
        ca_address=args.ca,
        ca_renewal_address=args.ca_renewal or args.ca,
        ca_root_pem=root,
        trust_domain=trust_domain,
        namespace=namespace,
        service_account=account,
        sds_socket=folder / "sds.sock",
        join_token=None if kube else join,
        kubernetes_token=kube,
    )
    return NodeAgent(config)


def cmd_proxy(args: argparse.Namespace) -> int:
    import attrs

    from meshfed.cli import hub_url
    from meshfed.proxy import EnvoyProcess, ReadinessServer, wait_ready

    spec = _spec(args)
    agent = identity_agent(args, spec)
    if agent is not None:
        spec = attrs.evolve(spec, sds_socket=str(agent.config.sds_socket))
    hub = hub_url(args)
    warning = mtls_warning(args)
    if warning:
        print(warning, file=sys.stderr, flush=True)

    async def main() -> int:
        stop = asyncio.Event()
        restore = handle_stop_signals(stop)
        envoy = EnvoyProcess(spec, log_level=args.envoy_log_level)
        probe = ReadinessServer(envoy, args.status_port) if args.status_port else None
        mixer = None
        if spec.mixer_socket:
            from meshfed.nodeagent.mixerclient.server import MixerClient

            mixer = MixerClient(
                spec.mixer_socket,
                args.mixer,
                cache_entries=args.mixer_cache_size,
                report_batch=args.mixer_report_batch,
                report_delay=args.mixer_report_delay,
            )
        try:
            if probe is not None:
                await probe.start()
            if agent is not None:
                try:  # before Envoy: its first SDS request finds the secrets
                    await agent.start()
                except Exception as exc:  # refused, or the CA unreachable after retries
                    print(f"error: no certificate from the CA at {args.ca}: {exc}", file=sys.stderr)
                    return 1
                print(f"identity {agent.config.identity} from {args.ca}", flush=True)
            if mixer is not None:
                await mixer.start()  # before Envoy: its first Check finds the socket
                print(f"mixer client on unix:{spec.mixer_socket} -> {args.mixer}", flush=True)
            await envoy.start()
            print(f"envoy started (admin {envoy.admin_url}, log {envoy.log_path})", flush=True)
            # The hub decides how long registries may take (initialSyncTimeout); the proxy
            # waits for that verdict, and only then for its own config.
            await wait_hub_ready(hub, args.hub_ready_timeout, stop)
            state = await wait_ready(envoy, hub, timeout=args.ready_timeout)
            if probe is not None:
                probe.synced = True
            versions = {k: v["acked_version"] for k, v in state["types"].items()}
            print(f"ready: {spec.node_id} ACKed {versions}", flush=True)
            exited = asyncio.create_task(envoy.proc.wait())  # type: ignore[union-attr]
            stopping = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                if not exited.done():
                    exited.cancel()
            if exited.done() and not exited.cancelled():
                print(f"envoy exited with {exited.result()}:\n{envoy.tail()}", file=sys.stderr)
                return 1
            return 0
        except (TimeoutError, RuntimeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            await envoy.stop()
            if agent is not None:
                await agent.stop()
            if mixer is not None:
                await mixer.stop()
            if probe is not None:
                await probe.stop()
            restore()

    return asyncio.run(main())


async def wait_hub_ready(hub: str, timeout: float, stop: asyncio.Event) -> None:
    """Wait until the hub's ``/healthz/ready`` answers 200, printing each new reason it
    gives for not being ready; raises TimeoutError after ``timeout`` seconds."""
    import aiohttp

    deadline = time.monotonic() + timeout
    shown = None
    client_timeout = aiohttp.ClientTimeout(total=2.0)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        while time.monotonic() < deadline and not stop.is_set():
            try:
                async with session.get(f"{hub}/healthz/ready") as response:
                    if response.status == 200:
                        return
                    if response.status == 404:
                        # A server without the hub's readiness endpoint (Pilot embedded in
                        # another process): nothing to wait for; the proxy's own config
                        # readiness, checked next, still holds it back until Pilot is there.
                        log.info("hub %s has no /healthz/ready; not waiting for it", hub)
                        return
                    body = await response.json(content_type=None)
                    reason = "; ".join(body.get("not_ready", [])) or f"HTTP {response.status}"
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                reason = f"hub not reachable at {hub} ({exc or type(exc).__name__})"
            if reason != shown:  # a log line, so that --log-format json keeps stderr JSON
                log.info("waiting for the hub: %s", reason, extra={"hub": hub})
                shown = reason
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    if stop.is_set():
        raise RuntimeError("stopped while waiting for the hub")
    raise TimeoutError(f"hub {hub} not ready after {timeout:g}s: {shown}")


def _status_rows(proxies: list[dict[str, Any]]) -> tuple[list[list[str]], list[str]]:
    rows, errors = [], []
    for p in proxies:
        row = [p["proxy"], p["protocol"]]
        for short in ("cds", "eds", "lds", "rds"):
            t = p["types"].get(short, {})
            row.append(t.get("status", "-"))
            if t.get("status") == "NACKED":
                errors.append(f"{p['proxy']} {short.upper()} NACKED: {t.get('error')}")
        row.append("yes" if p.get("ready") else "no")
        rows.append(row)
        errors.extend(f"{p['proxy']}: {problem}" for problem in p.get("problems", []))
    return rows, errors


def cmd_proxy_status(args: argparse.Namespace) -> int:
    from meshfed.cli import fetch_json, format_table, hub_url

    url = hub_url(args) + "/debug/syncz"
    if args.proxy:
        url += "?" + urllib.parse.urlencode({"proxy": args.proxy})
    body = fetch_json(url)
    if args.output == "json":
        print(json.dumps(body, indent=2))
        return 0
    proxies = body.get("proxies", [])
    if args.proxy and not proxies:
        print(f"proxy {args.proxy!r} is not connected", file=sys.stderr)
        return 1
    rows, errors = _status_rows(proxies)
    print(format_table(rows, ["PROXY", "XDS", "CDS", "EDS", "LDS", "RDS", "READY"]))
    for error in errors:
        print(error)
    if args.proxy and not args.no_envoy:
        return _compare_with_envoy(args, proxies[0])
    return 0


def _compare_with_envoy(args: argparse.Namespace, proxy: dict[str, Any]) -> int:
    """Print, per kind, whether Envoy holds what Pilot sent (exit 2 when it does not)."""
    from meshfed.cli import fetch_json, hub_url
    from meshfed.proxy_compare import compare

    node = proxy["node"]
    admin = args.envoy_admin or f"http://{node['ip']}:{node['admin_port']}"
    query = urllib.parse.urlencode({"proxy": proxy["proxy"]})
    pilot_dump = fetch_json(f"{hub_url(args)}/debug/config_dump?{query}")
    try:
        with urllib.request.urlopen(f"{admin}/config_dump?include_eds", timeout=10) as response:
            envoy_dump = json.load(response)
    except (OSError, ValueError) as exc:
        print(f"cannot read Envoy's config at {admin} ({exc}); use --envoy-admin or --no-envoy")
        return 1
    print(f"\nPilot vs Envoy ({admin}):")
    diffs = compare(pilot_dump, envoy_dump)
    for diff in diffs:
        print(diff)
    return 0 if all(d.in_sync for d in diffs) else 2


def cmd_proxy_config(args: argparse.Namespace) -> int:
    from meshfed.cli import fetch_json, hub_url

    query = urllib.parse.urlencode({"proxy": args.proxy, "type": args.kind})
    body = fetch_json(f"{hub_url(args)}/debug/config_dump?{query}")
    resources = body["configs"][T.short(T.BY_KIND[args.kind])]
    if args.output == "names":
        for r in resources:
            print(r["name"])
    else:
        print(json.dumps([r["resource"] for r in resources], indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from meshfed.demo import run_demo

    return asyncio.run(run_demo(duration=args.duration, interval=args.interval))


def register(sub: Any) -> None:
    """Add Pilot's subcommands to ``meshfed``'s argparse subparsers."""
    boot = sub.add_parser("bootstrap", help="print a sidecar's Envoy bootstrap (JSON)")
    _add_proxy_args(boot)
    boot.set_defaults(func=cmd_bootstrap)

    proxy = sub.add_parser("proxy", help="run a real Envoy sidecar configured by Pilot")
    _add_proxy_args(proxy)
    proxy.add_argument("--hub", help="hub monitoring URL for readiness (default: from config)")
    proxy.add_argument(
        "--hub-ready-timeout",
        type=float,
        default=600.0,
        help="seconds to wait for the hub's readiness (the hub bounds its own registries' "
        "initial sync with spec.initialSyncTimeout); default 600",
    )
    proxy.add_argument(
        "--ready-timeout",
        type=float,
        default=60.0,
        help="seconds, once the hub is ready, for this proxy's config to be ACKed",
    )
    proxy.add_argument(
        "--status-port",
        type=int,
        default=15021,
        help="readiness probe port on --ip (GET /healthz/ready); 0 disables",
    )
    proxy.add_argument("--envoy-log-level", default="warning")
    proxy.add_argument(
        "--ca",
        default="",
        metavar="HOST:PORT",
        help="get this proxy's certificate from the CA's bootstrap port and serve it to Envoy "
        "over SDS (as meshfed nodeagent does; an injected sidecar's identity)",
    )
    proxy.add_argument("--ca-renewal", default="", help="the CA's renewal port (default: --ca)")
    proxy.add_argument("--ca-root", default="", help="with --ca: the trust bundle (PEM file)")
    proxy.add_argument(
        "--kubernetes-token-file", default="", help="with --ca: the service-account token file"
    )
    proxy.add_argument("--token-file", default="", help="with --ca: a join token file")
    proxy.add_argument(
        "--service-account", default="", help="with --ca: checked against --identity"
    )
    proxy.add_argument(
        "--mixer-cache-size",
        type=int,
        default=10_000,
        help="Check answers the Mixer client keeps (0: no cache, every Check goes to Mixer)",
    )
    proxy.add_argument(
        "--mixer-report-batch",
        type=int,
        default=1000,
        help="access-log entries per Report batch (sent when this many are pending)",
    )
    proxy.add_argument(
        "--mixer-report-delay",
        type=float,
        default=1.0,
        help="seconds an access-log entry may wait for its Report batch",
    )
    proxy.set_defaults(func=cmd_proxy)

    status = sub.add_parser("proxy-status", help="per proxy and xDS type: sync state")
    status.add_argument("proxy", nargs="?", help="one proxy id (default: all connected)")
    status.add_argument("--output", "-o", choices=["table", "json"], default="table")
    status.add_argument(
        "--envoy-admin", help="Envoy admin URL for the comparison (default: from node metadata)"
    )
    status.add_argument(
        "--no-envoy", action="store_true", help="with PROXY: skip comparing with Envoy's config"
    )
    _add_hub_args(status)
    status.set_defaults(func=cmd_proxy_status)

    config = sub.add_parser("proxy-config", help="what Pilot last sent a proxy, as JSON")
    config.add_argument("kind", choices=["cluster", "listener", "route", "endpoint"])
    config.add_argument("proxy", help="proxy id (node id) as shown by proxy-status")
    config.add_argument("--output", "-o", choices=["json", "names"], default="json")
    _add_hub_args(config)
    config.set_defaults(func=cmd_proxy_config)

    demo = sub.add_parser("demo", help="run a small mesh with real sidecars and show traffic")
    demo.add_argument("--duration", type=float, default=None, help="seconds (default: Ctrl-C)")
    demo.add_argument("--interval", type=float, default=1.0, help="seconds between requests")
    demo.set_defaults(func=cmd_demo)
