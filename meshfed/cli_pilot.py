"""Pilot's CLI commands, registered into ``meshfed`` by ``meshfed.cli`` when present.

- ``meshfed bootstrap``: print a sidecar's Envoy bootstrap (JSON).
- ``meshfed proxy``: run a real Envoy sidecar (or ``--gateway``; ``--secrets-dir`` for mesh mTLS);
  prints ``ready`` once Envoy has ACKed its first full config from Pilot, stops Envoy (its
  whole process group) on Ctrl-C / SIGTERM. A proxy without ``--secrets-dir`` in a mesh whose
  config turns mutual TLS on gets a warning on stderr (STRICT services will refuse it).
- ``meshfed proxy-status [PROXY]``: per proxy and type, SYNCED / NOT SENT / STALE / NACKED;
  and, for a proxy with a node-local Mixer client, whether it reaches Mixer (read from the
  proxy's status port, which also serves the client's metrics).
- ``meshfed proxy-config cluster|listener|route|endpoint|secret|bootstrap|all PROXY``: what the
  proxy's Envoy holds, read from its admin port as istioctl does (tables, ``--fqdn``, ``--port``,
  ``--direction``), or with ``--source pilot`` what Pilot last sent it. PROXY may be the node id,
  ``workload.namespace`` or the proxy's IP, here and in ``proxy-status``.
- ``meshfed demo``: a working mesh with real sidecars and traffic, in under a minute.

The status commands read the hub's monitoring port, like ``meshfed registry``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import urllib.parse
import urllib.request
from typing import Any

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
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=_label,
        help="a workload label of this proxy (repeatable); Istio Gateways select gateways by "
        "these (a gateway without any carries istio=ingressgateway)",
    )
    p.add_argument(
        "--gateway-port",
        type=int,
        default=0,
        help="the gateway's HTTP port (default 80); TLS is served on 443, or port+363",
    )
    p.add_argument(
        "--secrets-dir",
        default="",
        help="the node agent's secrets directory (meshfed nodeagent --secrets-dir): Envoy reads "
        "the mesh certificate for mutual TLS there (needed to reach STRICT services when "
        "pilot.mtls is on)",
    )
    p.add_argument(
        "--mixer",
        default="",
        metavar="HOST:PORT",
        help="run the node-local Mixer client beside Envoy, calling the hub's Mixer there: "
        "Pilot then adds policy checks and telemetry (spec.mixer.dataPath) and CUSTOM "
        "AuthorizationPolicy checks to this proxy (meshfed proxy: default spec.mixer.listen "
        "when the mesh config enables Mixer)",
    )
    p.add_argument(
        "--no-mixer",
        action="store_true",
        help="no Mixer client, even when the mesh config enables Mixer (CUSTOM "
        "AuthorizationPolicies then refuse the requests they match)",
    )
    p.add_argument(
        "--mixer-socket",
        default="",
        help="the Mixer client's Unix socket (default: a private folder per proxy)",
    )
    p.add_argument("--config", "-c", help="MeshConfig file (Pilot and hub addresses)")


def _label(value: str) -> str:
    from meshfed.core import validators

    key, eq, val = value.partition("=")
    try:
        if not eq:
            raise validators.Invalid(f"expected KEY=VALUE, got {value!r}")
        validators.label_key(key)
        validators.label_value(val)
    except validators.Invalid as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _collector(value: str) -> str:
    from meshfed.core import validators

    if not value:
        return ""
    try:
        host, port = validators.host_port(value)
    except validators.Invalid as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def mixer_address(args: argparse.Namespace, mesh: Any) -> str:
    """The hub Mixer the proxy's client calls ("" for none): ``--mixer``, else (for
    ``meshfed proxy``, which runs the client) the mesh config's ``spec.mixer.listen`` when it
    enables Mixer (with the data path off, CUSTOM AuthorizationPolicies still check through
    the client); a wildcard host there means this host's loopback."""
    if args.no_mixer:
        return ""
    if args.mixer or not getattr(args, "mixer_from_config", False):
        return str(args.mixer)
    settings = mesh.mixer  # None: the mesh config has no spec.mixer
    if settings is None or not settings.enabled:
        return ""
    host, _, port = settings.listen.rpartition(":")
    if port in ("", "0"):
        log.warning("spec.mixer.listen %r has no fixed port; pass --mixer", settings.listen)
        return ""
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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
    args.mixer = mixer_address(args, mesh)
    if hasattr(args, "mixer_trace_collector") and not args.mixer_trace_collector:
        # the mesh's collector, so the client's spans join the traces Envoy sends there
        args.mixer_trace_collector = mesh.tracing.collector if mesh.tracing.enabled else ""
    secrets = os.path.abspath(os.path.expanduser(args.secrets_dir)) if args.secrets_dir else ""
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
        secrets_dir=secrets,
        mixer_socket=_mixer_socket(args),
        mixer_status_port=getattr(args, "status_port", 0) if args.mixer else 0,
        labels=",".join(getattr(args, "label", []) or []),
    )


def mtls_warning(args: argparse.Namespace) -> str:
    """What to tell the operator of a proxy run without SDS in a mesh with mutual TLS on
    ("" when there is nothing to say): it would reach STRICT services in plain text and be
    refused. Pilot also lists the affected clusters under the proxy's problems."""
    if args.secrets_dir or getattr(args, "ca", None):
        return ""
    from meshfed.config import load_mesh_config
    from meshfed.security import mtls

    policy = mtls.policy_from_config(load_mesh_config(args.config).pilot)
    modes = {policy.mode, *policy.overrides.values()}
    if modes == {mtls.Mode.OFF}:
        return ""
    what = "gateway" if args.gateway else "proxy"
    return (
        f"warning: the mesh runs mutual TLS (pilot.mtls) but this {what} has no --secrets-dir: "
        "it cannot hold a mesh certificate, so STRICT services refuse it (503). Run "
        "`meshfed nodeagent --secrets-dir DIR ...` beside it and pass --secrets-dir DIR."
    )


def cmd_bootstrap(args: argparse.Namespace) -> int:
    from meshfed.proxy import bootstrap

    print(json.dumps(bootstrap(_spec(args)), indent=2))
    return 0


def identity_plan(args: argparse.Namespace, spec: Any) -> dict[str, Any] | None:
    """With ``--ca``: the identity agent's settings (:class:`nodeagent.agent.AgentConfig`'s
    fields) for the sidecar process, which gets this proxy's certificate with the pod's
    service-account token (or a join token) and writes it as secret files in a private
    directory (tmpfs where there is one); the proxy then runs as if given ``--secrets-dir``.
    None without ``--ca``. Every flag and file is checked here, so a mistake is an error line
    before anything starts."""
    import os
    import tempfile
    from pathlib import Path

    if not getattr(args, "ca", None):
        return None
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

    root = os.path.abspath(args.ca_root)
    try:
        Path(root).read_bytes()
    except OSError as exc:
        raise SystemExit(f"error: cannot read --ca-root {args.ca_root}: {exc}") from None
    join = secret(args.token_file) or os.environ.get("MESHFED_JOIN_TOKEN")
    kube = secret(args.kubernetes_token_file)
    if not join and not kube:
        raise SystemExit("error: --ca needs --kubernetes-token-file or --token-file")
    from meshfed.nodeagent.sdsfiles import default_directory

    base = default_directory("proxies")
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{spec.workload}-", dir=base))
    folder.chmod(0o700)
    return {
        "ca_address": args.ca,
        "ca_renewal_address": args.ca_renewal or args.ca,
        "ca_root": root,
        "trust_domain": trust_domain,
        "namespace": namespace,
        "service_account": account,
        "secrets_dir": str(folder),
        "join_token": None if kube else join,
        "kubernetes_token": kube,
    }


def cmd_proxy(args: argparse.Namespace) -> int:
    import os
    import tempfile
    from pathlib import Path

    import attrs

    from meshfed.cli import hub_url
    from meshfed.core.envoy import envoy_binary
    from meshfed.proxy import bootstrap
    from meshfed.sidecar import Plan

    spec = _spec(args)
    identity = identity_plan(args, spec)
    if identity is not None:
        spec = attrs.evolve(spec, secrets_dir=identity["secrets_dir"])
    hub = hub_url(args)
    warning = mtls_warning(args)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"meshfed-envoy-{spec.workload}-"))
    config = workdir / "envoy.json"
    config.write_text(json.dumps(bootstrap(spec), indent=2))
    mixer = None
    if spec.mixer_socket:
        mixer = {
            "socket": spec.mixer_socket,
            "mixer": args.mixer,
            "cache_entries": args.mixer_cache_size,
            "report_batch": args.mixer_report_batch,
            "report_delay": args.mixer_report_delay,
            "trace_collector": args.mixer_trace_collector,
        }
    plan = Plan(
        envoy=str(envoy_binary()),
        bootstrap=str(config),
        workdir=str(workdir),
        node_id=spec.node_id,
        ip=spec.ip,
        admin_port=spec.admin_port,
        hub=hub,
        status_port=args.status_port,
        envoy_log_level=args.envoy_log_level,
        hub_ready_timeout=args.hub_ready_timeout,
        ready_timeout=args.ready_timeout,
        remove_workdir=True,
        log_level=args.log_level,
        log_format=args.log_format,
        mixer=mixer,
        identity=identity,
    )
    plan_path = workdir / "sidecar.json"
    plan.write(plan_path)
    sys.stdout.flush()
    sys.stderr.flush()
    # The long-running part carries none of what building the bootstrap loaded (protobuf
    # descriptors, the config reader): the same process goes on as meshfed.sidecar.
    argv = [sys.executable, "-m", "meshfed.sidecar", str(plan_path)]
    os.execv(sys.executable, argv)
    return 1  # not reached: execv replaces the process or raises


def mixer_client_state(proxy: dict[str, Any], timeout: float = 1.0) -> dict[str, Any] | None:
    """What a proxy's node-local Mixer client says about itself, read from the status port
    the proxy announced (None: the proxy has no client). An unreadable state is an ``error``."""
    node = proxy.get("node", {})
    if not node.get("mixer_client"):
        return None
    port = node.get("mixer_status_port") or 0
    if not port:
        return {"statusPort": 0}
    url = f"http://{node.get('ip')}:{port}/debug/mixerclient"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            state = json.load(response)
    except (OSError, ValueError) as exc:
        return {"statusPort": port, "error": f"cannot read {url}: {exc}"}
    return {"statusPort": port, **state}


def _mixer_column(proxy: str, ip: str, state: dict[str, Any] | None) -> tuple[str, list[str]]:
    if state is None:
        return "-", []
    port = state.get("statusPort", 0)
    where = f" :{port}" if port else ""
    if "error" in state:
        return "?" + where, [f"{proxy}: mixer client: {state['error']}"]
    reachable = state.get("mixerReachable")
    if reachable is None:
        return ("connecting" if port else "yes") + where, []
    if reachable:
        return "ok" + where, []
    since = state.get("unreachableSeconds")
    metrics = f"; its metrics: http://{ip}:{port}/metrics" if port else ""
    return "UNREACHABLE" + where, [
        f"{proxy}: mixer client cannot reach Mixer at {state.get('mixer')} (for {since}s: "
        f"{state.get('lastError')}); requests follow the fail policy (dataPath.failOpen)"
        f"{metrics}"
    ]


def _status_rows(
    proxies: list[dict[str, Any]], mixer: list[dict[str, Any] | None] | None = None
) -> tuple[list[list[str]], list[str]]:
    rows, errors = [], []
    for i, p in enumerate(proxies):
        row = [p["proxy"], p["protocol"]]
        for short in ("cds", "eds", "lds", "rds"):
            t = p["types"].get(short, {})
            row.append(t.get("status", "-"))
            if t.get("status") == "NACKED":
                errors.append(f"{p['proxy']} {short.upper()} NACKED: {t.get('error')}")
        row.append("yes" if p.get("ready") else "no")
        if mixer is not None:
            column, lines = _mixer_column(p["proxy"], p.get("node", {}).get("ip", ""), mixer[i])
            row.append(column)
            errors.extend(lines)
        rows.append(row)
        errors.extend(f"{p['proxy']}: {problem}" for problem in p.get("problems", []))
    return rows, errors


def cmd_proxy_status(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from meshfed.cli import fetch_json, format_table, hub_url

    url = hub_url(args) + "/debug/syncz"
    if args.proxy:
        url += "?" + urllib.parse.urlencode({"proxy": args.proxy})
    body = fetch_json(url)
    proxies = body.get("proxies", [])
    # each client is asked on its own proxy's status port, in parallel, briefly
    with ThreadPoolExecutor(max_workers=min(16, len(proxies) or 1)) as pool:
        mixer = list(pool.map(mixer_client_state, proxies))
    hub_version = _hub_version(hub_url(args))
    if args.output in ("json", "yaml"):
        from meshfed.cli import print_document

        for proxy, state in zip(proxies, mixer, strict=True):
            if state is not None:
                proxy["mixer_client_state"] = state
        print_document({"hub": {"version": hub_version}, **body}, args.output)
        return 0
    if args.proxy and not proxies:
        print(f"proxy {args.proxy!r} is not connected", file=sys.stderr)
        return 1
    rows, errors = _status_rows(proxies, mixer)
    for row in rows:
        row.append(hub_version)
    header = ["PROXY", "XDS", "CDS", "EDS", "LDS", "RDS", "READY", "MIXER", "HUB VERSION"]
    print(format_table(rows, header))
    for error in errors:
        print(error)
    if args.proxy and not args.no_envoy:
        return _compare_with_envoy(args, proxies[0])
    return 0


def _hub_version(hub: str) -> str:
    try:
        with urllib.request.urlopen(f"{hub}/version", timeout=5) as response:
            return str(json.load(response).get("version", "unknown"))
    except (OSError, ValueError):
        return "unknown"


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


def _find_proxy(args: argparse.Namespace) -> dict[str, Any] | None:
    """The connected proxy ``args.proxy`` names (node id, ``workload.namespace`` or IP)."""
    from meshfed.cli import fetch_json, hub_url

    query = urllib.parse.urlencode({"proxy": args.proxy})
    proxies = fetch_json(f"{hub_url(args)}/debug/syncz?{query}").get("proxies", [])
    return proxies[0] if proxies else None


def _admin_get(admin: str, path: str) -> Any:
    try:
        with urllib.request.urlopen(f"{admin}{path}", timeout=10) as response:
            return json.load(response)
    except (OSError, ValueError) as exc:
        raise SystemExit(
            f"error: cannot read Envoy's admin at {admin}{path} ({exc}); "
            "use --envoy-admin URL, or --source pilot for what Pilot sent"
        ) from None


PILOT_KINDS = ("cluster", "listener", "route", "endpoint")
TABLES = {
    "cluster": ("Clusters", "CLUSTER_HEADERS"),
    "listener": ("Listeners", "LISTENER_HEADERS"),
    "route": ("Routes", "ROUTE_HEADERS"),
    "endpoint": ("Endpoints", "ENDPOINT_HEADERS"),
    "secret": ("Secrets", "SECRET_HEADERS"),
    "bootstrap": ("Bootstrap", ""),
}


def cmd_proxy_config(args: argparse.Namespace) -> int:
    from meshfed import envoy_config as E
    from meshfed.cli import fetch_json, format_table, hub_url, print_document

    proxy = _find_proxy(args)
    if proxy is None:
        print(f"error: proxy {args.proxy!r} is not connected", file=sys.stderr)
        return 1
    kinds = list(E.KINDS) if args.kind == "all" else [args.kind]
    if args.source == "pilot":
        if any(k not in PILOT_KINDS for k in kinds):
            kinds = [k for k in kinds if k in PILOT_KINDS]
            if args.kind != "all":
                print(
                    f"error: Pilot does not send a {args.kind}; use --source envoy", file=sys.stderr
                )
                return 1
        query = urllib.parse.urlencode({"proxy": proxy["proxy"]})
        body = fetch_json(f"{hub_url(args)}/debug/config_dump?{query}")
        sent = {k: body["configs"][T.short(T.BY_KIND[k])] for k in kinds}
        if args.output == "names":
            for k in kinds:
                for r in sent[k]:
                    print(r["name"])
        elif args.output == "table":
            rows = [[k, r["name"], r["version"]] for k in kinds for r in sent[k]]
            print(format_table(rows, ["KIND", "NAME", "VERSION"]))
        else:
            kept = {k: [r["resource"] for r in sent[k]] for k in kinds}
            print_document(kept[args.kind] if args.kind != "all" else kept, args.output)
        return 0
    node = proxy["node"]
    admin = (args.envoy_admin or f"http://{node['ip']}:{node['admin_port']}").rstrip("/")
    dump = _admin_get(admin, "/config_dump?include_eds")
    statuses = _admin_get(admin, "/clusters?format=json") if "endpoint" in kinds else {}
    filters = E.Filters(
        fqdn=args.fqdn or "", port=args.port or 0, direction=args.direction or "",
        subset=args.subset or "",
    )  # fmt: skip
    if args.output in ("json", "yaml"):
        doc: dict[str, Any] = {k: E.resources(dump, k) for k in kinds}
        if "bootstrap" in doc:
            doc["bootstrap"] = E.bootstrap(dump)  # one document, not a list of one, as istioctl
        print_document(doc[args.kind] if args.kind != "all" else doc, args.output)
        return 0
    for i, kind in enumerate(kinds):
        if kind == "bootstrap":
            rows, headers = E.bootstrap_rows(dump), ["FIELD", "VALUE"]
        elif kind == "secret":
            rows, headers = E.secret_rows(dump), E.SECRET_HEADERS
        elif kind == "endpoint":
            rows, headers = E.endpoint_rows(statuses, filters), E.ENDPOINT_HEADERS
        else:
            rows = getattr(E, f"{kind}_rows")(dump, filters)
            headers = getattr(E, TABLES[kind][1])
        if args.output == "names":
            for row in rows:
                print(row[0] if kind != "endpoint" else row[3] + " " + row[0])
            continue
        if len(kinds) > 1:
            print(("\n" if i else "") + f"{TABLES[kind][0]} ({proxy['proxy']}):")
        print(format_table(rows, headers))
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
        "as secret files Envoy watches (as meshfed nodeagent does; an injected sidecar's identity)",
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
    proxy.add_argument(
        "--mixer-trace-collector",
        default="",
        type=_collector,
        metavar="HOST:PORT",
        help="OTLP/gRPC collector for the Mixer client's Check spans (default: the mesh "
        "config's spec.tracing.collector when tracing is enabled; none: no spans)",
    )

    proxy.set_defaults(func=cmd_proxy, mixer_from_config=True)

    status = sub.add_parser("proxy-status", help="per proxy and xDS type: sync state")
    status.add_argument(
        "proxy",
        nargs="?",
        help="one proxy: its id, workload.namespace (e.g. productpage.default) or IP "
        "(default: all connected)",
    )
    status.add_argument("--output", "-o", choices=["table", "json", "yaml"], default="table")
    status.add_argument(
        "--envoy-admin", help="Envoy admin URL for the comparison (default: from node metadata)"
    )
    status.add_argument(
        "--no-envoy", action="store_true", help="with PROXY: skip comparing with Envoy's config"
    )
    _add_hub_args(status)
    status.set_defaults(func=cmd_proxy_status)

    config = sub.add_parser(
        "proxy-config",
        help="what a proxy's Envoy holds (its admin port), or what Pilot sent it (--source pilot)",
    )
    config.add_argument("kind", choices=["cluster", "listener", "route", "endpoint", "secret",
                                         "bootstrap", "all"])  # fmt: skip
    config.add_argument("proxy", help="proxy id, workload.namespace (e.g. web.default) or IP")
    config.add_argument(
        "--output", "-o", choices=["table", "json", "yaml", "names"], default="table"
    )
    config.add_argument(
        "--source",
        choices=["envoy", "pilot"],
        default="envoy",
        help="envoy: read the proxy's admin /config_dump, as istioctl does (default); "
        "pilot: what Pilot last sent it",
    )
    config.add_argument("--fqdn", help="only this service (a short name matches its FQDN)")
    config.add_argument("--port", type=int, help="only this port")
    config.add_argument("--direction", choices=["inbound", "outbound"], help="only this side")
    config.add_argument("--subset", help="only this subset (clusters, endpoints)")
    config.add_argument("--envoy-admin", help="Envoy admin URL (default: from node metadata)")
    _add_hub_args(config)
    config.set_defaults(func=cmd_proxy_config)

    demo = sub.add_parser("demo", help="run a small mesh with real sidecars and show traffic")
    demo.add_argument("--duration", type=float, default=None, help="seconds (default: Ctrl-C)")
    demo.add_argument("--interval", type=float, default=1.0, help="seconds between requests")
    demo.set_defaults(func=cmd_demo)
