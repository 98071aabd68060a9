"""``networking.istio.io`` ``Sidecar``: which services a proxy receives config for.

Only ``egress[].hosts`` (and ``workloadSelector``) are implemented: each host is
``namespace/dnsName``, where the namespace is a name, ``*`` (any), ``.`` (the Sidecar's own) or
``~`` (none), and the name is ``*``, ``*.suffix`` or a full hostname. A proxy then gets
clusters, routes and outbound listeners only for the services in scope, which also shrinks
what each push sends it. Which Sidecar applies to a proxy, as in Istio: one of the proxy's
namespace whose selector matches its workload's labels, else the namespace's Sidecar without
a selector, else the root namespace's. Other fields (``ingress``, ``outboundTrafficPolicy``,
an egress ``port``/``bind``/``captureMode``) are refused naming the field.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence

import attrs

from meshfed.core import validators as v
from meshfed.core.resources import ConfigError, Document, FieldReader
from meshfed.pilot.config.istio import check_api_version
from meshfed.pilot.config.peer_authentication import ROOT_NAMESPACE
from meshfed.registry.model import Labels, Service

MAX_HOSTS = 10_000


@attrs.frozen(slots=True)
class Sidecar:
    name: str
    namespace: str
    file: str
    selector: Labels | None
    hosts: tuple[tuple[str, str], ...]  # (namespace pattern, name pattern), "." resolved

    @property
    def ref(self) -> str:
        return f"Sidecar {self.namespace}/{self.name}"

    def admits(self, service: Service) -> bool:
        name = service.hostname.lower()
        for ns, dns in self.hosts:
            if ns == "~" or (ns != "*" and ns != service.namespace):
                continue
            if dns == "*" or dns == name or (dns.startswith("*.") and name.endswith(dns[1:])):
                return True
        return False

    @property
    def key(self) -> str:
        return f"{self.ref}:{self.hosts}"


def _host(r: FieldReader, index: int, value: str, namespace: str) -> tuple[str, str] | None:
    ns, sep, dns = value.partition("/")
    if not sep:
        r.error(f"hosts[{index}]", f"expected namespace/dnsName, got {value!r}")
        return None
    if ns == ".":
        ns = namespace
    elif ns not in ("*", "~"):
        try:
            v.dns1123_label(ns)
        except v.Invalid as exc:
            r.error(f"hosts[{index}]", f"namespace: {exc}")
            return None
    if dns != "*":
        try:
            functools.partial(v.hostname, wildcard=True)(dns)
        except v.Invalid as exc:
            r.error(f"hosts[{index}]", f"dnsName: {exc}")
            return None
    return ns, dns.lower()


def parse_sidecar(doc: Document) -> tuple[Sidecar | None, list[ConfigError]]:
    r = FieldReader(doc.file, doc.ref, doc.spec, "spec")
    check_api_version(doc, r)
    refused = ["ingress", "outboundTrafficPolicy", "inboundConnectionPool"]
    for name in refused:
        if name in r.data:
            r.error(name, "not supported by meshfed (only egress hosts); remove it")
    r.unknown_fields({"workloadSelector", "egress"} | set(refused))
    selector = None
    sel = r.reader("workloadSelector")
    if sel is not None:
        sel.unknown_fields({"labels"})
        selector = Labels(sel.labels("labels"))
    hosts: list[tuple[str, str]] = []
    egress = list(r.readers("egress", required=True))
    for entry in egress:
        for name in ("port", "bind", "captureMode"):
            if name in entry.data:
                entry.error(name, "not supported by meshfed (only egress hosts); remove it")
        entry.unknown_fields({"hosts", "port", "bind", "captureMode"})
        values = entry.str_list("hosts", required=True)
        if len(values) > MAX_HOSTS:
            entry.error("hosts", f"expected at most {MAX_HOSTS} hosts")
            continue
        for i, value in enumerate(values):
            host = _host(entry, i, str(value), doc.namespace)
            if host is not None:
                hosts.append(host)
    if r.errors:
        return None, r.errors
    return Sidecar(doc.name, doc.namespace, doc.file, selector, tuple(hosts)), []


def for_proxy(
    sidecars: Sequence[Sidecar], namespace: str, labels: Iterable[Mapping[str, str]]
) -> Sidecar | None:
    """The Sidecar that applies to a proxy in ``namespace`` whose workload has ``labels`` (any
    of the label sets of its endpoints), or None: the proxy sees the whole mesh."""
    label_sets = list(labels)
    mine = sorted((s for s in sidecars if s.namespace == namespace), key=lambda s: s.name)
    for s in mine:
        if s.selector is not None and any(
            all(ls.get(k) == val for k, val in s.selector.items()) for ls in label_sets
        ):
            return s
    for s in mine:
        if s.selector is None:
            return s
    for s in sorted(sidecars, key=lambda s: s.name):
        if s.namespace == ROOT_NAMESPACE and s.selector is None:
            return s
    return None
