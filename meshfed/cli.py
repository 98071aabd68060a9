"""The ``meshfed`` command: a thin layer over the hub and its HTTP debug endpoints.

Subcommands that talk to a running hub read its monitoring port (from ``--hub``, or from the mesh
config's ``listen.monitoring``), so what they print is exactly what the hub serves. Pilot's proxy
commands and the CA's live in their own modules, each adding its subcommands via ``register``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from meshfed.config import load_mesh_config
from meshfed.core.resources import ConfigErrors

COMMAND_MODULES = (
    "meshfed.cli_pilot",
    "meshfed.cli_security",
    "meshfed.cli_completion",
    "meshfed.cli_inject",
    "meshfed.cli_analyze",
)


HUB_ENV = "MESHFED_HUB"  # the hub's monitoring URL when --hub is not given


def hub_url(args: argparse.Namespace) -> str:
    """``--hub``, else ``$MESHFED_HUB``, else the mesh config's ``listen.monitoring``."""
    explicit = getattr(args, "hub", None) or os.environ.get(HUB_ENV)
    if explicit:
        return str(explicit).rstrip("/")
    mesh = load_mesh_config(getattr(args, "config", None))
    return f"http://{mesh.monitoring_address}"


def fetch_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        raise SystemExit(f"error: {url} answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise SystemExit(
            f"error: cannot reach the hub at {url} ({exc}); is `meshfed up` running?"
        ) from None


def cmd_up(args: argparse.Namespace) -> int:
    from meshfed.core.lifecycle import StartFailed, handle_stop_signals
    from meshfed.hub import RegistryConfigError, run_hub

    mesh = load_mesh_config(args.config)
    logging.getLogger("meshfed").info(
        "starting hub (config %s, %d registries)", mesh.source, len(mesh.registries)
    )

    async def main() -> None:
        stop = asyncio.Event()
        restore = handle_stop_signals(stop)
        try:
            await run_hub(mesh, stop)
        finally:
            restore()

    try:
        asyncio.run(main())
    except (RegistryConfigError, StartFailed) as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 1
    return 0


def format_table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def print_document(document: Any, output: str) -> None:
    """``document`` as ``json`` or ``yaml`` (what ``-o`` asks for besides ``table``)."""
    if output == "yaml":
        import yaml

        print(yaml.safe_dump(document, sort_keys=False), end="")
    else:
        print(json.dumps(document, indent=2))


def cmd_registry_list(args: argparse.Namespace) -> int:
    view = fetch_json(f"{hub_url(args)}/debug/registryz")
    if args.output != "table":
        print_document(view, args.output)
        return 0
    rows = []
    for svc in view["services"]:
        ports = ",".join(f"{p['number']}/{p['protocol']}" for p in svc["ports"])
        healthy = sum(1 for e in svc["endpoints"] if e["healthy"])
        rows.append(
            [
                svc["hostname"],
                ",".join(svc["registries"]),
                ports,
                f"{healthy}/{len(svc['endpoints'])}",
                svc["address"] or "-",
            ]
        )
    print(format_table(rows, ["HOST", "REGISTRIES", "PORTS", "ENDPOINTS(healthy/all)", "ADDRESS"]))
    for member in view["members"]:
        if member.get("degraded"):
            late = " (late: not synced yet)" if member.get("late") else ""
            name, reason = member["name"], member["degraded"]
            print(f"registry {name} degraded{late}: {reason}", file=sys.stderr)
    for conflict in view["conflicts"]:
        print(f"conflict: {conflict['message']}", file=sys.stderr)
    return 0


def cmd_registry_get(args: argparse.Namespace) -> int:
    view = fetch_json(f"{hub_url(args)}/debug/registryz?host={args.host}")
    if not view["services"]:
        print(f"error: no service {args.host!r} in the mesh", file=sys.stderr)
        return 1
    svc = view["services"][0]
    if args.output != "table":
        print_document(svc, args.output)
        return 0
    print(f"Service:    {svc['hostname']}")
    print(f"Namespace:  {svc['namespace']}")
    print(f"Registries: {', '.join(svc['registries'])}")
    print(f"Address:    {svc['address'] or '-'}")
    print(f"Resolution: {svc['resolution']}   Location: {svc['location']}")
    ports = ", ".join(f"{p['name']} {p['number']}/{p['protocol']}" for p in svc["ports"])
    print(f"Ports:      {ports}")
    rows = [
        [
            e["address"],
            ",".join(f"{k}={v}" for k, v in e["ports"].items()) or "-",
            "HEALTHY" if e["healthy"] else "UNHEALTHY",
            e["registry"],
            e["locality"],
            ",".join(f"{k}={v}" for k, v in e["labels"].items()) or "-",
            e["identity"] or "-",
        ]
        for e in svc["endpoints"]
    ]
    print()
    print(
        format_table(
            rows, ["ADDRESS", "PORTS", "HEALTH", "REGISTRY", "LOCALITY", "LABELS", "IDENTITY"]
        )
    )
    return 0


OUTPUTS = ("table", "json", "yaml")


def client_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("meshfed")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def cmd_version(args: argparse.Namespace) -> int:
    url = hub_url(args)
    hub: dict[str, Any] = {"url": url}
    try:
        with urllib.request.urlopen(f"{url}/version", timeout=3) as response:
            hub.update(json.load(response))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        hub["error"] = f"not reachable ({getattr(exc, 'reason', exc)})"
    document = {"client": {"version": client_version()}, "hub": hub}
    if args.output != "table":
        print_document(document, args.output)
        return 0
    print(f"client version: {document['client']['version']}")
    print(f"hub version:    {hub.get('version') or hub['error']}   ({url})")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from meshfed.validate import expand_paths, validate_files

    mesh = load_mesh_config(args.config) if args.config else None
    files = expand_paths(Path(p) for p in args.files)  # a folder: its YAML files
    count, errors, warnings = validate_files(files, mesh)
    for arg in args.files:
        if not expand_paths([Path(arg)]):
            warnings.append(f"{arg}: a folder with no *.yaml or *.yml files")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for error in errors:
        print(error, file=sys.stderr)
    if errors:
        print(f"{len(errors)} error(s) in {len(files)} file(s)", file=sys.stderr)
        return 1
    print(f"{count} document(s) in {len(files)} file(s) valid")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshfed", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", help=LOG_LEVEL_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the hub: registries, merged view, debug endpoints")
    up.add_argument("--config", "-c", help="MeshConfig file (default: built-in)")
    up.set_defaults(func=cmd_up)

    registry = sub.add_parser("registry", help="inspect the merged service registry")
    reg_sub = registry.add_subparsers(dest="registry_command", required=True)
    for name, func, help_text in (
        ("list", cmd_registry_list, "every service with its registries, ports, endpoints"),
        ("get", cmd_registry_get, "one service with its endpoints"),
    ):
        p = reg_sub.add_parser(name, help=help_text)
        p.add_argument("--hub", help="hub monitoring URL, e.g. http://127.0.0.1:15014")
        p.add_argument("--config", "-c", help="MeshConfig file to find the hub's address")
        if name == "get":
            p.add_argument("host")
        p.add_argument("--output", "-o", choices=OUTPUTS, default="table")
        p.set_defaults(func=func)

    version = sub.add_parser("version", help="this client's version and, when reachable, the hub's")
    version.add_argument("--hub", help="hub monitoring URL (default: $MESHFED_HUB or config)")
    version.add_argument("--config", "-c", help="MeshConfig file to find the hub's address")
    version.add_argument("--output", "-o", choices=OUTPUTS, default="table")
    version.set_defaults(func=cmd_version)

    validate = sub.add_parser("validate", help="check config files; non-zero exit on errors")
    validate.add_argument(
        "files", nargs="+", help="YAML files or folders (a folder: its *.yaml, *.yml)"
    )
    validate.add_argument(
        "--config", "-c", help="the MeshConfig the files are for (its Ingress selection)"
    )
    validate.set_defaults(func=cmd_validate)

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    _add_log_format(parser, sub)
    return parser


# The processes that run until stopped: their logs go to collectors that parse lines.
LONG_RUNNING = ("up", "proxy", "nodeagent", "ca serve", "demo")


def _add_log_format(parser: argparse.ArgumentParser, sub: Any) -> None:
    from meshfed.logformat import FORMATS

    help_text = "log lines as text (default) or one JSON object per line"
    parser.add_argument("--log-format", choices=FORMATS, default="text", help=help_text)
    for command in LONG_RUNNING:
        target = sub
        *parents, name = command.split()
        for parent in parents:  # `ca serve`: a subcommand of a subcommand
            target = _subparsers(target.choices[parent])
        # SUPPRESS: given after the subcommand it overrides; absent, the global value stays.
        target.choices[name].add_argument(
            "--log-format", choices=FORMATS, default=argparse.SUPPRESS, help=help_text
        )
    for leaf in _leaves(sub):  # `meshfed up --log-level DEBUG` as well as before `up`
        leaf.add_argument("--log-level", default=argparse.SUPPRESS, help=LOG_LEVEL_HELP)


LOG_LEVEL_HELP = "DEBUG, INFO, WARNING, ERROR"


def _subparsers(parser: argparse.ArgumentParser) -> Any:
    return next(
        (
            a
            for a in parser._actions  # argparse offers no public way to reach them
            if isinstance(a, argparse._SubParsersAction)
        ),
        None,
    )


def _leaves(sub: Any) -> list[argparse.ArgumentParser]:
    """Every parser that runs a command (nested subcommands' innermost ones)."""
    out: list[argparse.ArgumentParser] = []
    for parser in dict.fromkeys(sub.choices.values()):  # aliases share one parser
        nested = _subparsers(parser)
        out.extend(_leaves(nested) if nested is not None else [parser])
    return out


def main(argv: list[str] | None = None) -> int:
    from meshfed.logformat import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        return int(args.func(args))
    except ConfigErrors as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`meshfed registry list | head`): not an error of ours. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1


if __name__ == "__main__":
    sys.exit(main())
