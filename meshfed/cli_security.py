"""``meshfed ca ...`` and ``meshfed nodeagent``: the CLI over :mod:`security` and :mod:`nodeagent`.

Registered by :mod:`meshfed.cli` when this module is importable. Secrets never go on a command
line (where ``ps`` shows them): the join token is read from ``--token-file`` or the
``MESHFED_JOIN_TOKEN`` environment variable, and ``meshfed ca token create`` prints the token
once on stdout and stores only its hash.

- ``meshfed ca serve``: the CA (:class:`security.server.CAComponent`) with its bootstrap (TLS)
  and renewal (mutual TLS) gRPC ports and a monitoring port (``/metrics``, ``/healthz/ready``,
  ``/debug/ca``), in one lifecycle. Its root is created once in
  ``--state-dir`` (or a Kubernetes Secret with ``--storage kubernetes``), or comes from the
  operator's ``--cacerts`` folder; either way the trust bundle is published as
  ``<state-dir>/root-cert.pem`` for node agents and the hub.
- ``meshfed ca rotate-root``: start a root rotation (:mod:`security.rotation`) in the CA's
  storage; running CAs pick it up within ``--reload-interval``. ``meshfed ca status`` shows the
  phase, the signer and the trust bundle.
- ``meshfed ca token create|list``: join tokens in ``<state-dir>/tokens.json``.
- ``meshfed nodeagent``: join this machine (see :mod:`nodeagent.agent`).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

DEFAULT_STATE_DIR = "~/.meshfed/ca"
DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
log = logging.getLogger("meshfed.cli.security")


def parse_duration(value: str) -> dt.timedelta:
    """``90``/``90s``, ``15m``, ``1h``, ``7d``, ``500ms`` as a timedelta."""
    match = DURATION.match(value.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration like 30s, 15m, 1h: {value!r}")
    number, unit = float(match.group(1)), match.group(2) or "s"
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    return dt.timedelta(seconds=number * scale)


def _trust_domain(args: argparse.Namespace) -> str:
    if getattr(args, "trust_domain", None):
        return args.trust_domain
    from meshfed.config import load_mesh_config

    return load_mesh_config(getattr(args, "config", None)).trust_domain


def _system_namespace(args: argparse.Namespace) -> str:
    from meshfed.config import load_mesh_config

    return load_mesh_config(getattr(args, "config", None)).system_namespace


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir).expanduser()


# -- ca serve --------------------------------------------------------------------------------
def ca_storage(args: argparse.Namespace) -> Any:
    """The self-signed CA's storage: files in ``--state-dir``, or a Secret (``--storage``)."""
    from meshfed.security.storage import FileStorage, KubernetesSecretStorage

    if args.storage == "kubernetes":
        from kubernetes import client

        from meshfed.adapters.kubernetes.client import load_api_client

        # In a pod without --kubeconfig: the pod's service account (the chart's CA Deployment).
        api_client = load_api_client(args.kubeconfig)
        return KubernetesSecretStorage(
            client.CoreV1Api(api_client), _system_namespace(args), args.secret_name
        )
    return FileStorage(_state_dir(args))


def build_ca(args: argparse.Namespace) -> Any:
    from meshfed.security.ca import CertificateAuthority

    trust_domain = _trust_domain(args)
    ttl_kwargs = {"default_ttl": args.default_ttl, "max_ttl": args.max_ttl}
    if args.cacerts:
        return CertificateAuthority.from_cacerts(args.cacerts, trust_domain, **ttl_kwargs)
    return CertificateAuthority.load_or_create(ca_storage(args), trust_domain, **ttl_kwargs)


async def serve_ca(args: argparse.Namespace, stop: asyncio.Event) -> int:
    from meshfed.core.lifecycle import Lifecycle, StartFailed, Step
    from meshfed.core.monitoring import MonitoringServer
    from meshfed.core.supervisor import Supervisor
    from meshfed.security.server import CAComponent, CASettings
    from meshfed.security.service import KubernetesTokenReviewer

    reviewer = None
    if args.tokenreview_kubeconfig or args.tokenreview:
        from meshfed.adapters.kubernetes.client import load_api_client

        reviewer = KubernetesTokenReviewer(
            load_api_client(args.tokenreview_kubeconfig),
            audiences=args.token_audience or None,
        )
    settings = CASettings(
        state_dir=_state_dir(args),
        listen=args.listen,
        renew_listen=args.renew_listen,
        system_namespace=_system_namespace(args),
        reload_interval=args.reload_interval,
        serving_names=_serving_names(args),
    )
    root_map = None
    if args.root_configmap:
        from kubernetes import client

        from meshfed.adapters.kubernetes.client import load_api_client
        from meshfed.security.rootmap import RootConfigMap

        root_map = RootConfigMap(
            client.CoreV1Api(load_api_client(args.kubeconfig)),
            settings.system_namespace,
            args.root_configmap,
        )
    supervisor = Supervisor()
    ca = CAComponent(lambda: build_ca(args), settings, supervisor, reviewer, root_map)
    monitoring = MonitoringServer(args.monitoring, name="meshfed.ca")
    monitoring.add_routes(ca.routes())
    monitoring.add_readiness(ca.not_ready, lambda: ca.degraded() + _failing(supervisor))
    life = Lifecycle()
    life.add("supervisor", Step(_nothing, supervisor.stop))
    life.add("ca", ca)
    life.add("monitoring server", monitoring)
    try:
        await life.start()
    except StartFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        assert ca.server is not None and ca.root_path is not None
        # One machine-readable line, so scripts and tests learn the ports (0 = kernel-chosen).
        print(
            json.dumps(
                {
                    "bootstrap": ca.server.bootstrap_target,
                    "renewal": ca.server.renewal_target,
                    "monitoring": monitoring.bound,
                    "root": str(ca.root_path),
                }
            ),
            flush=True,
        )
        await stop.wait()
    finally:
        await life.stop()
    return 0


def _serving_names(args: argparse.Namespace) -> dict[str, tuple[str, ...]]:
    """``--hub-service-account NS/SA`` and its ``--hub-dns-name``s (default: the hub Service's)."""
    from meshfed.registry.model import spiffe_id

    if not args.hub_service_account:
        if args.hub_dns_name:
            raise SystemExit("error: --hub-dns-name needs --hub-service-account NS/SA")
        return {}
    ns, _, sa = args.hub_service_account.partition("/")
    if not ns or not sa or "/" in sa:
        raise SystemExit(
            f"error: --hub-service-account {args.hub_service_account!r}: expected NAMESPACE/NAME"
        )
    svc = f"meshfed-hub.{ns}.svc"
    names = tuple(args.hub_dns_name) or (svc, f"{svc}.cluster.local")
    return {spiffe_id(_trust_domain(args), ns, sa): names}


def _failing(supervisor: Any) -> list[str]:
    return [f"{task} failing (restarting): {why}" for task, why in supervisor.failures().items()]


async def _nothing() -> None:
    return None


def _run(main: Any) -> int:
    from meshfed.core.lifecycle import handle_stop_signals

    async def runner() -> int:
        stop = asyncio.Event()
        restore = handle_stop_signals(stop)
        try:
            result = await main(stop)
        finally:
            restore()
        return int(result or 0)

    return asyncio.run(runner())


def cmd_ca_serve(args: argparse.Namespace) -> int:
    return _run(lambda stop: serve_ca(args, stop))


def _storage_for_rotation(args: argparse.Namespace) -> Any:
    if args.cacerts:
        raise SystemExit(
            "error: bring-your-own CA (--cacerts): meshfed does not hold your root's key, so it "
            "cannot rotate it. Rotate by handing the CA new cacerts material whose "
            "root-cert.pem holds both the old and the new root, then the new root alone."
        )
    return ca_storage(args)


def cmd_ca_rotate_root(args: argparse.Namespace) -> int:
    from meshfed.security import rotation
    from meshfed.security.ca import CAConfigError, CertificateAuthority, start_root_rotation
    from meshfed.security.storage import StorageError

    storage = _storage_for_rotation(args)
    trust_domain = _trust_domain(args)
    add, switch = rotation.default_durations(args.max_ttl, args.margin)
    add = args.add_phase or add
    switch = args.switch_phase or switch
    problems = rotation.check_durations(add, switch, args.max_ttl)
    if problems and not args.force:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        print("error: lengthen the phases, or pass --force", file=sys.stderr)
        return 2
    try:
        start_root_rotation(storage, trust_domain, add, switch)
        ca = CertificateAuthority.load_or_create(storage, trust_domain, max_ttl=args.max_ttl)
    except (CAConfigError, StorageError) as exc:  # includes a rotation already running
        print(f"error: {exc}", file=sys.stderr)
        return 1
    status = ca.status()
    if args.output != "table":
        from meshfed.cli import print_document

        print_document(status, args.output)
        return 0
    print(_status_table(status))
    return 0


def _status_table(status: dict[str, Any]) -> str:
    """``ca status`` for a terminal: the phase, then one row per certificate in play."""
    from meshfed.cli import format_table

    signer = status["signer"]
    rows = [["signer", signer["subject"], signer["serial"], signer["not_after"]]]
    rows += [["root", r["subject"], r["serial"], r["not_after"]] for r in status["roots"]]
    lines = [
        f"trust domain: {status['trust_domain']}",
        f"phase: {status['phase']}",
        f"max ttl: {status['max_ttl_seconds']:g}s",
    ]
    rotation = status.get("rotation")
    if rotation:
        lines.append(
            f"rotation: started {rotation['started_at']}, switch {rotation['switch_at']}, "
            f"retire {rotation['retire_at']}"
        )
    lines += ["", format_table(rows, ["ROLE", "SUBJECT", "SERIAL", "NOT AFTER"])]
    return "\n".join(lines)


def cmd_ca_status(args: argparse.Namespace) -> int:
    from meshfed.security.ca import CertificateAuthority

    trust_domain = _trust_domain(args)
    if args.cacerts:
        ca = CertificateAuthority.from_cacerts(args.cacerts, trust_domain, max_ttl=args.max_ttl)
    else:
        storage = ca_storage(args)
        material = storage.load()
        if material is None:
            print(f"error: no CA root in {storage.describe()}", file=sys.stderr)
            return 1
        ca = CertificateAuthority.from_storage(
            storage, material, trust_domain, max_ttl=args.max_ttl
        )
    status = ca.status()
    if args.output != "table":
        from meshfed.cli import print_document

        print_document(status, args.output)
        return 0
    print(_status_table(status))
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    from meshfed.security.tokens import JoinTokenStore

    store = JoinTokenStore(_state_dir(args) / "tokens.json")
    try:
        token = store.create(args.namespace, args.service_account, args.ttl)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    from meshfed.security.tokens import JoinTokenStore

    path = _state_dir(args) / "tokens.json"
    if not path.exists():  # a read: a mistyped --state-dir must not create folders
        print(f"no join tokens in {path.parent} (no {path.name})", file=sys.stderr)
        records: list[dict[str, Any]] = []
    else:
        records = JoinTokenStore(path).list()
    if args.output != "table":
        from meshfed.cli import print_document

        print_document(records, args.output)
        return 0
    from meshfed.cli import format_table

    columns = sorted({k for r in records for k in r} - {"id"})

    def cell(value: object) -> str:  # an unused token has used: null
        return "-" if value is None or value == "" else str(value)

    rows = [[cell(r.get("id")), *(cell(r.get(c)) for c in columns)] for r in records]
    print(format_table(rows, ["ID", *(c.upper().replace("_", " ") for c in columns)]))
    return 0


# -- nodeagent -------------------------------------------------------------------------------
def _read_secret(path: str | None, env: str) -> str | None:
    if path:
        return Path(path).expanduser().read_text().strip()
    return os.environ.get(env) or None


def _ports(values: list[str]) -> dict[str, int]:
    ports = {}
    for value in values:
        name, _, number = value.partition("=")
        if not name or not number.isdigit():
            raise SystemExit(f"error: --port expects name=number, got {value!r}")
        ports[name] = int(number)
    return ports


def agent_config(args: argparse.Namespace) -> Any:
    import yaml

    from meshfed.nodeagent.agent import AgentConfig
    from meshfed.registry.model import Workload

    trust_domain = _trust_domain(args)
    token = _read_secret(args.token_file, "MESHFED_JOIN_TOKEN")
    kube_token = _read_secret(args.kubernetes_token_file, "MESHFED_KUBERNETES_TOKEN")
    if not token and not kube_token:
        raise SystemExit(
            "error: no credential; give --token-file (or MESHFED_JOIN_TOKEN) or "
            "--kubernetes-token-file"
        )
    workload = None
    if args.hub:
        if not args.address:
            raise SystemExit("error: --hub needs --address (where this VM's workload listens)")
        workload = Workload(
            name=args.workload or os.uname().nodename,
            namespace=args.namespace,
            address=args.address,
            ports=_ports(args.port),
            labels=dict(label.split("=", 1) for label in args.label),
            service_account=args.service_account,
        )
    bootstrap = None
    if args.envoy_bootstrap:
        bootstrap = yaml.safe_load(Path(args.envoy_bootstrap).read_text())
    elif args.pilot:
        from meshfed.proxy import ProxySpec
        from meshfed.proxy import bootstrap as pilot_bootstrap
        from meshfed.registry.model import spiffe_id

        bootstrap = pilot_bootstrap(
            ProxySpec(
                ip=args.address or "127.0.0.1",
                workload=args.workload or os.uname().nodename,
                namespace=args.namespace,
                identity=spiffe_id(trust_domain, args.namespace, args.service_account),
                app_ports=args.app_ports,
                pilot=args.pilot,
                admin_port=args.admin_port,
            )
        )
    definitions = []
    for value in args.define_service:
        host, _, ports = value.partition("=")
        definitions.append(
            {
                "hostname": host,
                "ports": [
                    {"name": n, "number": int(num), "protocol": proto or "TCP"}
                    for n, num, proto in (
                        [*p.split(":"), "", ""][:3] for p in ports.split(",") if p
                    )
                ],
            }
        )
    return AgentConfig(
        ca_address=args.ca,
        ca_renewal_address=args.ca_renewal,
        ca_root_pem=Path(args.ca_root).expanduser().read_bytes(),
        trust_domain=trust_domain,
        namespace=args.namespace,
        service_account=args.service_account,
        secrets_dir=_secrets_dir(args),
        join_token=token,
        kubernetes_token=kube_token,
        ttl=args.ttl,
        key_type=args.key_type,
        hub_url=args.hub,
        workload=workload,
        services=tuple(args.service),
        definitions=definitions,
        register_interval=args.register_interval,
        bundle_refresh=args.bundle_refresh.total_seconds(),
        sidecar_bootstrap=bootstrap,
        workdir=Path(args.workdir).expanduser() if args.workdir else None,
    )


def _secrets_dir(args: argparse.Namespace) -> Path:
    if args.secrets_dir:
        return Path(os.path.abspath(os.path.expanduser(args.secrets_dir)))
    from meshfed.nodeagent.sdsfiles import default_directory

    return default_directory(f"{args.namespace}.{args.service_account}")


def cmd_nodeagent(args: argparse.Namespace) -> int:
    """Check everything here, then become the lean agent process (:mod:`meshfed.agentproc`)."""
    import tempfile

    from meshfed.agentproc import plan_of

    config = agent_config(args)
    plan = plan_of(config, args.monitoring or "")
    plan["log_level"] = getattr(args, "log_level", "INFO")
    plan["log_format"] = getattr(args, "log_format", "text")
    fd, path = tempfile.mkstemp(prefix="meshfed-nodeagent-", suffix=".json")  # 0600
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(plan, out)
    sys.stdout.flush()
    sys.stderr.flush()
    argv = [sys.executable, "-m", "meshfed.agentproc", path]
    try:
        os.execv(sys.executable, argv)
    except OSError as exc:
        os.unlink(path)
        print(f"error: cannot start {' '.join(argv[:3])}: {exc}", file=sys.stderr)
    return 1


# -- registration ----------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="MeshConfig file (trust domain, system namespace)")
    p.add_argument("--trust-domain", help="overrides the mesh config's trust domain")


def register(sub: Any) -> None:
    """Add ``ca`` and ``nodeagent`` to the ``meshfed`` command."""
    ca = sub.add_parser("ca", help="the certificate authority")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True)

    def storage_options(p: argparse.ArgumentParser) -> None:
        _common(p)
        p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="root, tokens (0700)")
        p.add_argument("--cacerts", help="bring-your-own CA folder (cacerts layout)")
        p.add_argument("--storage", choices=["file", "kubernetes"], default="file")
        p.add_argument("--kubeconfig", help="for --storage kubernetes")
        p.add_argument("--secret-name", default="meshfed-ca")
        p.add_argument(
            "--max-ttl",
            type=parse_duration,
            default=parse_duration("7d"),
            help="the longest leaf lifetime the CA issues (default 7d)",
        )

    serve = ca_sub.add_parser("serve", help="run the CA's signing service")
    storage_options(serve)
    serve.add_argument(
        "--listen", default="127.0.0.1:15012", help="bootstrap port (TLS; default %(default)s)"
    )
    serve.add_argument(
        "--renew-listen",
        default="127.0.0.1:15013",
        help="renewal port (mutual TLS; default %(default)s)",
    )
    serve.add_argument(
        "--monitoring",
        default="127.0.0.1:15016",
        help="/metrics, /healthz/ready, /debug/ca (default %(default)s)",
    )
    serve.add_argument(
        "--default-ttl",
        type=parse_duration,
        default=parse_duration("1h"),
        help="leaf lifetime when the agent asks for none (default 1h)",
    )
    serve.add_argument(
        "--reload-interval",
        type=parse_duration,
        default=parse_duration("10s"),
        help="how often to re-read the storage for a root rotation (default 10s)",
    )
    serve.add_argument(
        "--tokenreview-kubeconfig", help="accept Kubernetes service-account tokens (TokenReview)"
    )
    serve.add_argument(
        "--tokenreview",
        action="store_true",
        help="accept service-account tokens of the cluster the CA runs in (in-cluster credentials)",
    )
    serve.add_argument("--token-audience", action="append", default=[])
    serve.add_argument(
        "--root-configmap",
        help="also keep the trust bundle in this ConfigMap of the system namespace (key "
        "root-cert.pem; the hub mounts it to authenticate the CA)",
    )
    serve.add_argument(
        "--hub-service-account",
        help="NAMESPACE/NAME of the hub: only its certificates carry DNS names and the IPs it "
        "asks for (the injection webhook's serving certificate)",
    )
    serve.add_argument(
        "--hub-dns-name",
        action="append",
        default=[],
        help="DNS SAN for the hub (repeat; default meshfed-hub.<ns>.svc[.cluster.local])",
    )
    serve.set_defaults(func=cmd_ca_serve)

    rotate = ca_sub.add_parser(
        "rotate-root",
        help="start a root rotation: add the new root, switch to it, retire the old one",
    )
    storage_options(rotate)
    rotate.add_argument(
        "--add-phase", type=parse_duration, help="default: --max-ttl plus the margin"
    )
    rotate.add_argument(
        "--switch-phase", type=parse_duration, help="default: --max-ttl plus the margin"
    )
    rotate.add_argument(
        "--margin", type=parse_duration, help="added to each phase (default: 10%%, min 1m)"
    )
    rotate.add_argument("--force", action="store_true", help="allow phases shorter than --max-ttl")
    rotate.add_argument("--output", "-o", choices=["table", "json", "yaml"], default="table")
    rotate.set_defaults(func=cmd_ca_rotate_root)

    status = ca_sub.add_parser("status", help="the root rotation phase, signer and trust bundle")
    storage_options(status)
    status.add_argument("--output", "-o", choices=["table", "json", "yaml"], default="table")
    status.set_defaults(func=cmd_ca_status)

    token = ca_sub.add_parser("token", help="join tokens for VMs")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="create a single-use join token")
    create.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    create.add_argument("--namespace", "-n", required=True)
    create.add_argument("--service-account", "-s", required=True)
    create.add_argument("--ttl", type=parse_duration, default=parse_duration("1h"))
    create.set_defaults(func=cmd_token_create)
    listing = token_sub.add_parser("list", help="stored tokens (hashes only)")
    listing.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    listing.add_argument("--output", "-o", choices=["table", "json", "yaml"], default="table")
    listing.set_defaults(func=cmd_token_list)

    agent = sub.add_parser("nodeagent", help="join this machine to the mesh")
    _common(agent)
    agent.add_argument("--ca", default="127.0.0.1:15012", help="CA bootstrap address")
    agent.add_argument("--ca-renewal", default="127.0.0.1:15013", help="CA renewal address")
    agent.add_argument("--ca-root", required=True, help="trust bundle to authenticate the CA")
    agent.add_argument("--namespace", "-n", required=True)
    agent.add_argument("--service-account", "-s", required=True)
    agent.add_argument("--token-file", help="join token file (or env MESHFED_JOIN_TOKEN)")
    agent.add_argument("--kubernetes-token-file", help="service-account token file")
    agent.add_argument("--ttl", type=parse_duration, help="requested certificate lifetime")
    agent.add_argument("--key-type", choices=["ec-p256", "rsa-2048"], default="ec-p256")
    agent.add_argument(
        "--secrets-dir",
        help="where Envoy reads this identity's key, certificate and trust bundle (file-based "
        "SDS; a 0700 directory of 0600 files, made if missing; default: one under "
        "$XDG_RUNTIME_DIR or /dev/shm, tmpfs, so the key never reaches a disk)",
    )
    agent.add_argument("--hub", help="hub URL to register with, e.g. http://127.0.0.1:15014")
    agent.add_argument("--workload", help="workload name (default: host name)")
    agent.add_argument("--address", help="the workload's address")
    agent.add_argument("--port", action="append", default=[], help="name=number (repeat)")
    agent.add_argument("--label", action="append", default=[], help="key=value (repeat)")
    agent.add_argument("--service", action="append", default=[], help="hostname it backs")
    agent.add_argument(
        "--define-service",
        action="append",
        default=[],
        help="HOST=name:number:PROTOCOL,... also define the service itself",
    )
    agent.add_argument("--register-interval", type=float, default=30.0)
    agent.add_argument(
        "--bundle-refresh",
        type=parse_duration,
        default=parse_duration("60s"),
        help="poll the CA's trust bundle this often (0: learn it only at renewal)",
    )
    agent.add_argument("--envoy-bootstrap", help="run Envoy with this bootstrap (+ SDS cluster)")
    agent.add_argument("--pilot", help="run Envoy with an ADS bootstrap to this Pilot")
    agent.add_argument("--app-ports", default="", help="for --pilot: INBOUND:APP,...")
    agent.add_argument("--admin-port", type=int, default=15000)
    agent.add_argument("--workdir", help="sidecar working folder (default: temporary)")
    agent.add_argument("--monitoring", help="host:port for /debug/nodeagent and /metrics")
    agent.set_defaults(func=cmd_nodeagent)
