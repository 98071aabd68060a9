"""Today's Istio ``Gateway`` (``networking.istio.io``): which ports, hosts and TLS a gateway serves.

A Gateway says *what* a gateway proxy listens for; VirtualServices that name it in ``gateways``
say where the traffic goes. Both become the same objects the ingress translation already
builds (listeners, filter chains, route tables; :mod:`pilot.translate.istio_gateway`).

- ``selector`` matches the labels a gateway proxy carries (``meshfed proxy --gateway --label``;
  without any, Istio's default ``istio: ingressgateway``). An empty selector selects every
  gateway proxy.
- ``servers[].hosts`` are ``[namespace/]host``: the namespace part limits which namespaces'
  VirtualServices may bind (``*`` any, ``.`` the Gateway's own); the host is a name, ``*.suffix``
  or ``*``.
- TLS: ``SIMPLE`` and ``MUTUAL`` with certificate files or a ``credentialName`` (a folder
  ``<gatewayCertsDir>/<credentialName>`` holding ``tls.crt``, ``tls.key`` and, for MUTUAL,
  ``ca.crt``), ``PASSTHROUGH`` (routed by SNI by VirtualService ``tls`` routes) and
  ``httpsRedirect`` on plain HTTP servers.

Everything else (``ISTIO_MUTUAL``, ``AUTO_PASSTHROUGH``, ``OPTIONAL_MUTUAL``, ``bind``, SAN and
pin checks, ...) is refused with an error naming the field: a Gateway accepted here is served as
written.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence

import attrs

from meshfed.core import validators as v
from meshfed.core.resources import ConfigError, Document, FieldReader, describe
from meshfed.pilot.config.istio import check_api_version
from meshfed.pilot.config.model import Gateway
from meshfed.registry.model import Labels

# What a gateway proxy with no labels of its own carries: Istio's default ingress gateway's.
DEFAULT_GATEWAY_LABELS = Labels({"istio": "ingressgateway"})
MAX_SERVERS = 1_000


class ServerProtocol(enum.Enum):
    HTTP = "HTTP"
    HTTPS = "HTTPS"
    HTTP2 = "HTTP2"
    GRPC = "GRPC"
    TCP = "TCP"
    TLS = "TLS"

    @property
    def is_http(self) -> bool:
        return self in (ServerProtocol.HTTP, ServerProtocol.HTTP2, ServerProtocol.GRPC)


class TlsMode(enum.Enum):
    SIMPLE = "SIMPLE"
    MUTUAL = "MUTUAL"
    PASSTHROUGH = "PASSTHROUGH"


REFUSED_MODES = {
    "ISTIO_MUTUAL": "the gateway terminates mesh mutual TLS only towards backends",
    "AUTO_PASSTHROUGH": "multi-network SNI routing is not implemented",
    "OPTIONAL_MUTUAL": "a client certificate is either required or not asked for",
}
TLS_VERSIONS = {"TLS_AUTO": "", "TLSV1_0": "TLSv1_0", "TLSV1_1": "TLSv1_1"}
TLS_VERSIONS |= {"TLSV1_2": "TLSv1_2", "TLSV1_3": "TLSv1_3"}


@attrs.frozen(slots=True)
class ServerTls:
    mode: TlsMode | None = None  # None: plain (only httpsRedirect may be set)
    https_redirect: bool = False
    certificate: str = ""  # file paths, or empty with credential_name
    private_key: str = ""
    ca_certificates: str = ""
    credential_name: str = ""
    min_version: str = ""  # Envoy's TlsParameters names, "" for Envoy's default
    max_version: str = ""


@attrs.frozen(slots=True)
class ServerHost:
    namespace: str  # "*" any, or a namespace ("." already replaced by the Gateway's own)
    host: str  # "*", "*.suffix" or a name

    def __str__(self) -> str:
        return f"{self.namespace}/{self.host}"


@attrs.frozen(slots=True)
class Server:
    port: int
    port_name: str
    protocol: ServerProtocol
    hosts: tuple[ServerHost, ...]
    tls: ServerTls = attrs.field(factory=ServerTls)
    name: str = ""

    @property
    def terminates_tls(self) -> bool:
        return self.tls.mode in (TlsMode.SIMPLE, TlsMode.MUTUAL)

    @property
    def passthrough(self) -> bool:
        return self.tls.mode is TlsMode.PASSTHROUGH


@attrs.frozen(slots=True)
class IstioGateway:
    name: str
    namespace: str
    file: str
    selector: Labels
    servers: tuple[Server, ...]

    @property
    def ref(self) -> str:
        return f"Gateway {self.namespace}/{self.name}"

    @property
    def key(self) -> str:
        """How a VirtualService names it in ``gateways``."""
        return f"{self.namespace}/{self.name}"

    def selects(self, labels: Labels) -> bool:
        return labels.matches(self.selector)


def host_matches(pattern: str, host: str) -> bool:
    """Whether ``host`` (a name or itself a wildcard) is within ``pattern`` (``*``, ``*.suffix``
    or a name)."""
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        suffix = pattern[1:]
        return host.endswith(suffix) and host != suffix[1:]
    return host == pattern


def intersect(a: str, b: str) -> str | None:
    """The more specific of two host patterns when one lies within the other, else None."""
    if host_matches(a, b):
        return b
    if host_matches(b, a):
        return a
    return None


def _server_host(r: FieldReader, index: int, raw: object, namespace: str) -> ServerHost | None:
    if not isinstance(raw, str):
        r.error(index, f"expected [namespace/]host, got {describe(raw)}")
        return None
    ns, slash, host = raw.rpartition("/")
    if not slash:
        ns = "*"
    elif ns == ".":
        ns = namespace
    elif ns != "*":
        try:
            v.dns1123_label(ns, "a namespace")
        except v.Invalid as exc:
            r.error(index, f"namespace part: {exc}")
            return None
    try:
        return ServerHost(ns, v.hostname(host, wildcard=True, bare_wildcard=True))
    except v.Invalid as exc:
        r.error(index, f"host part: {exc}")
        return None


def _file(r: FieldReader, name: str) -> str:
    path = r.str(name)
    if path and ("\x00" in path or "\n" in path):
        r.error(name, "expected a file path")
        return ""
    return path


def _tls(r: FieldReader, protocol: ServerProtocol) -> ServerTls:
    known = {
        "mode",
        "httpsRedirect",
        "serverCertificate",
        "privateKey",
        "caCertificates",
        "credentialName",
        "minProtocolVersion",
        "maxProtocolVersion",
    }
    refused = {
        "subjectAltNames": "client certificate SAN checks are not implemented",
        "verifyCertificateSpki": "certificate pinning is not implemented",
        "verifyCertificateHash": "certificate pinning is not implemented",
        "cipherSuites": "Envoy's default cipher suites are used",
        "credentialNames": "one credential per server",
        "tlsCertificates": "one certificate per server",
        "caCrl": "revocation lists are not implemented",
    }
    for name, why in refused.items():
        if name in r.data:
            r.error(name, f"not supported by meshfed ({why}); remove it")
    r.unknown_fields(known | set(refused))
    redirect = r.bool("httpsRedirect")
    raw_mode = r.data.get("mode")
    mode: TlsMode | None = None
    if raw_mode is not None:
        if isinstance(raw_mode, str) and raw_mode in REFUSED_MODES:
            r.error("mode", f"not supported by meshfed ({REFUSED_MODES[raw_mode]})")
        elif isinstance(raw_mode, str) and raw_mode in TlsMode.__members__:
            mode = TlsMode[raw_mode]
        else:
            modes = ", ".join(m.value for m in TlsMode)
            r.error("mode", f"expected one of {modes}, got {describe(raw_mode)}")
    elif protocol in (ServerProtocol.HTTPS, ServerProtocol.TLS):
        r.error("mode", "is required for an HTTPS or TLS server (SIMPLE, MUTUAL or PASSTHROUGH)")
    cert, key = _file(r, "serverCertificate"), _file(r, "privateKey")
    ca = _file(r, "caCertificates")
    credential = r.checked("credentialName", v.resource_name)
    versions = []
    for name in ("minProtocolVersion", "maxProtocolVersion"):
        raw = r.data.get(name)
        if raw is not None and (not isinstance(raw, str) or raw not in TLS_VERSIONS):
            r.error(name, f"expected one of {', '.join(TLS_VERSIONS)}, got {describe(raw)}")
        versions.append(TLS_VERSIONS.get(raw, "") if isinstance(raw, str) else "")
    if mode in (TlsMode.SIMPLE, TlsMode.MUTUAL):
        if credential and (cert or key):
            r.error("credentialName", "expected credentialName or certificate files, not both")
        elif not credential and not (cert and key):
            r.error(
                "",
                f"expected credentialName, or serverCertificate and privateKey, for {mode.value}",
            )
        if mode is TlsMode.MUTUAL and not credential and not ca:
            r.error("caCertificates", "is required for MUTUAL (or use credentialName with ca.crt)")
        if mode is TlsMode.SIMPLE and ca:
            r.error("caCertificates", "expected only with mode MUTUAL")
    elif mode is TlsMode.PASSTHROUGH or raw_mode is None:
        for name in ("serverCertificate", "privateKey", "caCertificates", "credentialName"):
            if name in r.data:
                what = (
                    "PASSTHROUGH (the backend terminates TLS)" if mode else "a server without mode"
                )
                r.error(name, f"not used with {what}; remove it")
    if redirect and protocol is not ServerProtocol.HTTP:
        r.error("httpsRedirect", "expected only on an HTTP server")
    if mode is not None and protocol.is_http:
        r.error("mode", f"expected no TLS mode on a {protocol.value} server (use HTTPS)")
    if mode is not None and protocol is ServerProtocol.TCP:
        r.error("mode", "expected no TLS mode on a TCP server (use TLS)")
    if mode is not None and protocol is ServerProtocol.TLS and mode is not TlsMode.PASSTHROUGH:
        r.error(
            "mode",
            "expected PASSTHROUGH on a TLS server (TLS termination before TCP routes is not "
            "implemented)",
        )
    return ServerTls(mode, redirect, cert, key, ca, credential, *versions)


def _server(r: FieldReader, namespace: str) -> Server | None:
    r.unknown_fields({"port", "hosts", "tls", "name", "bind", "defaultEndpoint"})
    for name in ("bind", "defaultEndpoint"):
        if name in r.data:
            r.error(name, "not supported by meshfed (a gateway listens on its own IP); remove it")
    name = r.str("name")
    port_reader = r.reader("port", required=True)
    number, port_name, protocol = 0, "", ServerProtocol.HTTP
    if port_reader is not None:
        port_reader.unknown_fields({"number", "name", "protocol", "targetPort"})
        if "targetPort" in port_reader.data:
            port_reader.error(
                "targetPort", "not supported by meshfed (the gateway listens on number); remove it"
            )
        number = port_reader.port("number", required=True)
        port_name = port_reader.checked("name", v.port_name)
        raw = port_reader.data.get("protocol")
        if raw is None:
            port_reader.error("protocol", "is required")
        elif isinstance(raw, str) and raw.upper() in ServerProtocol.__members__:
            protocol = ServerProtocol[raw.upper()]
        else:
            allowed = ", ".join(p.value for p in ServerProtocol)
            port_reader.error("protocol", f"expected one of {allowed}, got {describe(raw)}")
    hosts = []
    raw_hosts = r.data.get("hosts")
    if not isinstance(raw_hosts, list) or not raw_hosts:
        r.error(
            "hosts", f"expected a non-empty list of [namespace/]host, got {describe(raw_hosts)}"
        )
    else:
        host_reader = FieldReader(r.file, r.obj, {}, r.field_path("hosts"), r.errors)
        for i, raw_host in enumerate(raw_hosts):
            host = _server_host(host_reader, i, raw_host, namespace)
            if host is not None:
                hosts.append(host)
    tls_reader = r.reader("tls")
    tls = _tls(tls_reader, protocol) if tls_reader is not None else ServerTls()
    if tls_reader is None and protocol in (ServerProtocol.HTTPS, ServerProtocol.TLS):
        r.error("tls", f"is required for a {protocol.value} server")
    return Server(number, port_name, protocol, tuple(hosts), tls, name)


def _kind(server: Server) -> str:
    if server.protocol is ServerProtocol.TCP:
        return "tcp"
    if server.protocol in (ServerProtocol.HTTPS, ServerProtocol.TLS) or server.tls.mode:
        return "TLS"
    return "plain HTTP"


def parse_istio_gateway(doc: Document) -> tuple[IstioGateway | None, list[ConfigError]]:
    r = FieldReader(doc.file, doc.ref, doc.spec, "spec")
    check_api_version(doc, r)
    r.unknown_fields({"selector", "servers"})
    selector = Labels(r.labels("selector"))
    readers = list(r.readers("servers", required=True))
    if len(readers) > MAX_SERVERS:
        r.error("servers", f"expected at most {MAX_SERVERS} servers, got {len(readers)}")
        readers = []
    servers = [s for s in (_server(sr, doc.namespace) for sr in readers) if s is not None]
    kinds: dict[int, str] = {}
    names: dict[str, int] = {}
    for i, server in enumerate(servers):
        for field, value in (("name", server.name), ("port.name", server.port_name)):
            key = f"{field}={value}"
            if value and key in names:
                r.error(
                    f"servers[{i}].{field}",
                    f"expected a name no other server uses (servers[{names[key]}] has {value!r})",
                )
            names.setdefault(key, i)
        kind = _kind(server)
        seen = kinds.setdefault(server.port, kind)
        if seen != kind or (kind == "tcp" and sum(s.port == server.port for s in servers) > 1):
            r.error(
                f"servers[{i}].port.number",
                f"expected one kind of server per port (plain HTTP, TLS, or one TCP server); "
                f"port {server.port} has {seen} and {kind}",
            )
    if r.errors:
        return None, r.errors
    return IstioGateway(doc.name, doc.namespace, doc.file, selector, tuple(servers)), []


def is_istio_api(doc: Document) -> bool:
    return doc.api_version.startswith("networking.istio.io/")


def binding_notes(
    gateways: Sequence[IstioGateway],
    bindings: Iterable[tuple[str, str, tuple[str, ...]]],
    ingresses: Iterable[Gateway],
) -> list[str]:
    """What ``validate`` / ``analyze`` report about Gateways: VirtualServices naming a Gateway
    that does not exist or none of whose servers takes their host, and hosts an Ingress (or
    meshfed Gateway) serves that a Gateway also serves, where the Gateway wins.

    ``bindings``: (VirtualService ref, host pattern, gateway keys) for each bound host.
    """
    notes = []
    by_key = {g.key: g for g in gateways}
    for ref, host, keys in bindings:
        for key in keys:
            gw = by_key.get(key)
            if gw is None:
                notes.append(f"{ref} is bound to Gateway {key}, which does not exist")
            elif not any(intersect(h.host, host) is not None for s in gw.servers for h in s.hosts):
                notes.append(f"{ref}: host {host} is served by no server of Gateway {key}")
    claimed = {h.host: gw for gw in gateways for s in gw.servers for h in s.hosts}
    for ingress in ingresses:
        hosts = {p.host or "*" for p in ingress.paths} | {h for h, _ in ingress.tls_hosts}
        for host in sorted(hosts):
            gw = claimed.get(host)
            if gw is not None:
                notes.append(
                    f"{ingress.ref} is not applied for host {host} where {gw.ref} also serves "
                    "it: on a gateway port both serve, the Gateway's VirtualServices route it"
                )
    return notes
