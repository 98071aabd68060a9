"""Injection's CLI commands, registered into ``meshfed`` by ``meshfed.cli``.

- ``meshfed kube-inject -f FILE|-``: the manifests with sidecars added to every workload's pod
  template, through the webhook's own code (:mod:`meshfed.injection.workloads`).
- ``meshfed iptables``: the injected init container's command; sets up REDIRECT interception
  (:mod:`meshfed.injection.iptables`), or prints the rules with ``--dry-run``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

TEMPLATE_CONFIGMAP = "meshfed-sidecar-injector"
TEMPLATE_KEY = "config"


def load_template(args: argparse.Namespace) -> Any:
    """The template from ``--template`` (a template document or its ConfigMap), from the
    cluster's ConfigMap (``--kubeconfig``), else the built-in one."""
    from meshfed.core.files import FileRefused, read_config_file
    from meshfed.injection.template import default_template, parse_template

    if args.template:
        try:
            data = read_config_file(Path(args.template))
        except FileRefused as exc:
            raise SystemExit(f"error: {args.template}: {exc.reason}") from None
        try:
            doc = yaml.safe_load(data)
        except yaml.YAMLError:
            doc = None
        if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":
            text = (doc.get("data") or {}).get(TEMPLATE_KEY)
            if not isinstance(text, str):
                raise SystemExit(f"error: {args.template}: ConfigMap has no data.{TEMPLATE_KEY}")
            return parse_template(text, f"{args.template} data.{TEMPLATE_KEY}")
        return parse_template(data, args.template)
    if args.kubeconfig:
        from kubernetes import client, config

        api = client.CoreV1Api(config.new_client_from_config(args.kubeconfig))
        try:
            cm = api.read_namespaced_config_map(TEMPLATE_CONFIGMAP, args.system_namespace)
        except client.ApiException as exc:
            if exc.status == 404:
                return default_template()
            raise SystemExit(f"error: reading the template ConfigMap: {exc.reason}") from None
        text = (cm.data or {}).get(TEMPLATE_KEY)
        if text is None:
            return default_template()
        return parse_template(
            text, f"configmap {args.system_namespace}/{TEMPLATE_CONFIGMAP} {TEMPLATE_KEY}"
        )
    return default_template()


def cmd_kube_inject(args: argparse.Namespace) -> int:
    from meshfed.core.files import FileRefused, read_config_file
    from meshfed.injection import annotations as A
    from meshfed.injection.inject import InjectionError
    from meshfed.injection.template import TemplateError
    from meshfed.injection.workloads import inject_documents

    try:
        template = load_template(args)
    except TemplateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.filename == "-":
        data: bytes = sys.stdin.buffer.read()
        source = "<stdin>"
    else:
        try:
            data = read_config_file(Path(args.filename))
        except FileRefused as exc:
            print(f"error: {args.filename}: {exc.reason}", file=sys.stderr)
            return 1
        source = args.filename
    # Offline there is no namespace to read: asking for injection is the opt-in, and a pod's
    # own sidecar.istio.io/inject: "false" still opts it out.
    labels = {A.NAMESPACE_LABELS[1]: A.ENABLED}
    try:
        docs, _ = inject_documents(data, template, source, labels, args.namespace)
    except InjectionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_iptables(args: argparse.Namespace) -> int:
    from meshfed.injection.iptables import Interception, rules

    try:
        plan = rules(
            Interception(
                proxy_uid=args.proxy_uid,
                include_outbound_ip_ranges=args.include_outbound_ip_ranges,
                exclude_outbound_ip_ranges=args.exclude_outbound_ip_ranges,
                include_inbound_ports=args.include_inbound_ports,
                exclude_inbound_ports=args.exclude_inbound_ports,
                exclude_outbound_ports=args.exclude_outbound_ports,
            )
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    binary = args.iptables or shutil.which("iptables") or "/usr/sbin/iptables"
    for rule in plan:
        if args.dry_run:
            print(" ".join(["iptables", *rule]))
            continue
        try:
            done = subprocess.run([binary, *rule], capture_output=True, text=True, check=False)
        except OSError as exc:
            print(f"error: cannot run {binary}: {exc}", file=sys.stderr)
            return 1
        if done.returncode != 0:
            print(f"error: iptables {' '.join(rule)}: {done.stderr.strip()[:500]}", file=sys.stderr)
            return 1
    if not args.dry_run:
        print(f"interception set up ({len(plan)} rules)")
    return 0


def register(sub: Any) -> None:
    """Add injection's subcommands to ``meshfed``'s argparse subparsers."""
    inject = sub.add_parser(
        "kube-inject", help="add the sidecar to the workloads of a manifest (offline injection)"
    )
    inject.add_argument("-f", "--filename", required=True, help="manifest file, or - for stdin")
    inject.add_argument("-o", "--output", help="write here instead of stdout")
    inject.add_argument(
        "--template", help="injection template (its document, or its ConfigMap manifest)"
    )
    inject.add_argument(
        "--kubeconfig", help="read the template ConfigMap from this cluster instead"
    )
    inject.add_argument("--system-namespace", default="meshfed-system")
    inject.add_argument(
        "--namespace", "-n", default="default", help="for objects without metadata.namespace"
    )
    inject.set_defaults(func=cmd_kube_inject)

    ipt = sub.add_parser("iptables", help="set up REDIRECT interception (the init container)")
    ipt.add_argument("--proxy-uid", type=int, default=1337)
    ipt.add_argument("--include-outbound-ip-ranges", default="*")
    ipt.add_argument("--exclude-outbound-ip-ranges", default="")
    ipt.add_argument("--include-inbound-ports", default="*")
    ipt.add_argument("--exclude-inbound-ports", default="")
    ipt.add_argument("--exclude-outbound-ports", default="")
    ipt.add_argument("--iptables", help="the iptables binary (default: from PATH)")
    ipt.add_argument("--dry-run", action="store_true", help="print the rules, change nothing")
    ipt.set_defaults(func=cmd_iptables)
