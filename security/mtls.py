"""Mutual TLS as Envoy config: the pure functions Pilot's translation calls.

Why here and not in Pilot: what a secure connection between two sidecars looks like (which
secrets, from where, which peer identities are acceptable, how permissive mode tells TLS from
plain traffic) is security policy; Pilot only decides *where* it applies. These functions take
and return Envoy protobuf messages and have no I/O, so Pilot can call them while building a
snapshot and tests can call them to build static bootstraps for real Envoys.

Promises:
- Certificates come from the node agent as file-based SDS: secret :data:`CERT_SECRET`
  (``default``: chain and key) and trust bundle :data:`ROOT_SECRET` (``ROOTCA``), files in the
  proxy's secrets directory (:mod:`security.sds_files`). The config built here for all proxies
  names them by a placeholder source (:func:`sds_config`, the never-defined cluster
  :data:`SDS_CLUSTER`); :func:`use_secret_files` points a proxy's copy at its own directory.
  No key is ever in xDS.
- Outbound (:func:`apply_outbound_mtls`): mutual TLS to exactly those endpoints of a
  mesh-internal destination that have a sidecar terminating it: the endpoint carries a SPIFFE
  identity *and* the label :data:`TLS_MODE_LABEL` ``=`` :data:`TLS_MODE_MTLS` (set by
  ``meshfed nodeagent`` when it registers a VM with a sidecar, by the injector for pods, or by
  the operator). Opt-in, because registries know identities of workloads that have no sidecar
  (a Kubernetes pod has a service account either way), and guessing wrong would break plain
  services. The decision is per endpoint: the cluster carries a ``transport_socket_matches``
  entry for :data:`TRANSPORT_SOCKET_MATCH` ``{tlsMode: mtls}`` and EDS marks each sidecar
  endpoint with that metadata (:func:`endpoint_socket_metadata`), every other endpoint gets
  the cluster's default, plain. So a service half migrated to the mesh (some VMs with agents,
  some not) works in every mode: a service with mutual TLS can talk to a service without
  the mesh, decided per instance. The server's certificate
  must carry one of the SPIFFE IDs the registry knows for the service's sidecar endpoints
  (exact URI SAN matchers).
- Inbound (:func:`apply_inbound_mtls`): ``STRICT`` requires a client certificate from the mesh's
  trust bundle; ``PERMISSIVE`` adds the TLS inspector and two filter chains on the same port
  (``transport_protocol: tls`` -> mutual TLS, anything else -> plain); ``OFF`` changes nothing.
- HTTP (:func:`apply_xfcc`): the server sidecar replaces any ``x-forwarded-client-cert`` the
  client sent with the verified peer's SPIFFE ID (``By=...;URI=...``); a plain client cannot
  forge it. TCP works the same way minus the header: the identity is in Envoy's
  ``%DOWNSTREAM_PEER_URI_SAN%`` access-log field and ``ssl.*`` stats.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import (
    base_pb2,
    config_source_pb2,
    grpc_service_pb2,
)
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm,
)
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import struct_pb2

from meshfed.core.xds import pack
from meshfed.registry.model import Endpoint, Location, Service
from meshfed.security import sds_files

log = logging.getLogger("meshfed.security.mtls")

SDS_CLUSTER = "sds-grpc"
CERT_SECRET = sds_files.CERT_SECRET
ROOT_SECRET = sds_files.ROOT_SECRET
TLS_SOCKET = "envoy.transport_sockets.tls"
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
TLS_MODE_LABEL = "security.meshfed.io/tlsMode"
TLS_MODE_MTLS = "mtls"  # the endpoint's sidecar terminates mesh mutual TLS
# Envoy reads an endpoint's transport-socket selector from this filter-metadata key.
TRANSPORT_SOCKET_MATCH = "envoy.transport_socket_match"
MTLS_MATCH = {"tlsMode": TLS_MODE_MTLS}


class Mode(enum.Enum):
    """Mesh-wide or per-destination mutual TLS mode."""

    OFF = "OFF"
    PERMISSIVE = "PERMISSIVE"
    STRICT = "STRICT"

    @classmethod
    def parse(cls, value: str) -> Mode:
        value = value.strip().upper()
        if value == "DISABLE":  # PeerAuthentication's name for OFF
            return cls.OFF
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"expected OFF, PERMISSIVE or STRICT, got {value!r}") from None


def _strictest(modes: Iterable[Mode]) -> Mode:
    found = set(modes)
    for mode in (Mode.STRICT, Mode.PERMISSIVE):
        if mode in found:
            return mode
    return Mode.OFF


@attrs.frozen(slots=True)
class WorkloadMode:
    """A mode for the workloads of one namespace whose endpoint labels include ``selector``
    (``PeerAuthentication`` with a selector): per port in ``ports``, else ``mode``; None
    (``UNSET``) defers to the namespace, then the mesh."""

    namespace: str
    selector: Mapping[str, str]
    mode: Mode | None = None
    ports: Mapping[int, Mode] = attrs.field(factory=dict)

    def matches(self, service: Service, endpoint: Endpoint) -> bool:
        if service.namespace != self.namespace:
            return False
        return all(endpoint.labels.get(k) == v for k, v in self.selector.items())

    def mode_at(self, port: int) -> Mode | None:
        return self.ports.get(port, self.mode)


@attrs.frozen(slots=True)
class Policy:
    """The mesh-wide mode plus narrower ones: per namespace, per workload (and port), and the
    mesh config's per-destination overrides (by service hostname).

    Precedence, most specific first: a workload's port, the workload, the destination
    override, the namespace, the mesh. A destination's mode decides both its server side (what
    its sidecar accepts) and whether clients originate mutual TLS to it (any mode but OFF).
    """

    mode: Mode = Mode.PERMISSIVE
    overrides: Mapping[str, Mode] = attrs.field(factory=dict)
    namespaces: Mapping[str, Mode] = attrs.field(factory=dict)
    workloads: tuple[WorkloadMode, ...] = ()

    def mode_for(self, hostname: str, namespace: str | None = None) -> Mode:
        if hostname in self.overrides:
            return self.overrides[hostname]
        if namespace is not None and namespace in self.namespaces:
            return self.namespaces[namespace]
        return self.mode

    def endpoint_mode(self, service: Service, endpoint: Endpoint, port: int) -> Mode:
        """What ``endpoint``'s sidecar accepts on ``port`` (its own port) for ``service``."""
        for workload in self.workloads:
            if workload.matches(service, endpoint):
                mode = workload.mode_at(port)
                if mode is not None:
                    return mode
        return self.mode_for(service.hostname, service.namespace)

    def inbound_mode(self, hostnames: Iterable[str]) -> Mode:
        """The mode of a sidecar fronting several services: the strictest of theirs."""
        return _strictest({self.mode_for(h) for h in hostnames} or {self.mode})

    def with_peer_authentication(
        self,
        mesh: Mode | None,
        namespaces: Mapping[str, Mode],
        workloads: Sequence[WorkloadMode],
    ) -> Policy:
        """This policy (the mesh config's) under PeerAuthentication objects: a mesh-wide one
        replaces the mesh config's mode; namespace and workload ones are added."""
        return attrs.evolve(
            self,
            mode=self.mode if mesh is None else mesh,
            namespaces={**self.namespaces, **namespaces},
            workloads=(*self.workloads, *workloads),
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, object] | None) -> Policy:
        """Read ``{"mode": "STRICT", "destinations": {"host": "OFF"}}`` (mesh config shape)."""
        data = data or {}
        overrides = data.get("destinations") or {}
        if not isinstance(overrides, Mapping):
            raise ValueError("mtls.destinations: expected a map of hostname to mode")
        return cls(
            Mode.parse(str(data.get("mode", Mode.PERMISSIVE.value))),
            {str(h): Mode.parse(str(m)) for h, m in overrides.items()},
        )


def policy_key(policy: Policy) -> str:
    """A deterministic key of everything in ``policy`` (a plugin version)."""
    overrides = ",".join(f"{h}={m.value}" for h, m in sorted(policy.overrides.items()))
    namespaces = ",".join(f"{n}={m.value}" for n, m in sorted(policy.namespaces.items()))
    workloads = ";".join(
        f"{w.namespace}/{sorted(w.selector.items())}/{w.mode.value if w.mode else ''}/"
        f"{sorted((p, m.value) for p, m in w.ports.items())}"
        for w in policy.workloads
    )
    return f"{policy.mode.value};{overrides}|{namespaces}|{workloads}"


# -- SDS ------------------------------------------------------------------------------------
def sds_config() -> config_source_pb2.ConfigSource:
    """The placeholder source of the mesh's secrets in config shared by all proxies.

    Never sent as is: Pilot replaces it per proxy with that proxy's files
    (:func:`use_secret_files`) or strips the mesh TLS of a proxy without a node agent. Should it
    ever reach an Envoy, the missing cluster makes Envoy reject the resource visibly."""
    return config_source_pb2.ConfigSource(
        api_config_source=config_source_pb2.ApiConfigSource(
            api_type=config_source_pb2.ApiConfigSource.GRPC,
            transport_api_version=config_source_pb2.ApiVersion.V3,
            grpc_services=[
                grpc_service_pb2.GrpcService(
                    envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=SDS_CLUSTER)
                )
            ],
        ),
        resource_api_version=config_source_pb2.ApiVersion.V3,
    )


def file_sds_config(directory: str, name: str) -> config_source_pb2.ConfigSource:
    """Secret ``name`` from the proxy's secrets ``directory`` (:mod:`security.sds_files`).

    Envoy watches the directory for moves (``watched_directory``) and then re-reads the file:
    the node agent renames a complete new file into place, so a rotation is picked up whole,
    certificate and key together, and never half-written."""
    return config_source_pb2.ConfigSource(
        path_config_source=config_source_pb2.PathConfigSource(
            path=sds_files.secret_path(directory, name),
            watched_directory=base_pb2.WatchedDirectory(path=directory),
        ),
        resource_api_version=config_source_pb2.ApiVersion.V3,
    )


def _secret_configs(context: tls_pb2.CommonTlsContext) -> list[secret_pb2.SdsSecretConfig]:
    return [
        *context.tls_certificate_sds_secret_configs,
        context.combined_validation_context.validation_context_sds_secret_config,
    ]


def _to_files(context: tls_pb2.CommonTlsContext, directory: str) -> bool:
    changed = False
    for secret in _secret_configs(context):
        if secret.name in (CERT_SECRET, ROOT_SECRET) and _is_agent_source(secret):
            secret.sds_config.CopyFrom(file_sds_config(directory, secret.name))
            changed = True
    return changed


def _is_agent_source(secret: secret_pb2.SdsSecretConfig) -> bool:
    return any(
        source.envoy_grpc.cluster_name == SDS_CLUSTER
        for source in secret.sds_config.api_config_source.grpc_services
    )


def _socket_to_files(socket: base_pb2.TransportSocket, directory: str, kind: type[Any]) -> bool:
    if socket.name != TLS_SOCKET:
        return False
    context = kind()
    if not socket.typed_config.Unpack(context) or not _to_files(
        context.common_tls_context, directory
    ):
        return False
    socket.typed_config.Pack(context)
    return True


def use_secret_files(resource: cluster_pb2.Cluster | listener_pb2.Listener, directory: str) -> bool:
    """Point every mesh secret ``resource`` names at the proxy's files in ``directory``
    instead of the agent's SDS cluster; True when something changed.

    Pilot builds mesh TLS once for all proxies, naming the secrets by :data:`SDS_CLUSTER`;
    a proxy whose agent hands it files (node metadata ``SDS_PATH``) gets this per-proxy copy.
    """
    changed = False
    if isinstance(resource, cluster_pb2.Cluster):
        sockets = [resource.transport_socket] if resource.HasField("transport_socket") else []
        sockets += [m.transport_socket for m in resource.transport_socket_matches]
        for socket in sockets:
            changed |= _socket_to_files(socket, directory, tls_pb2.UpstreamTlsContext)
        return changed
    chains = list(resource.filter_chains)
    if resource.HasField("default_filter_chain"):
        chains.append(resource.default_filter_chain)
    for chain in chains:
        if chain.HasField("transport_socket"):
            changed |= _socket_to_files(
                chain.transport_socket, directory, tls_pb2.DownstreamTlsContext
            )
    return changed


def common_tls_context(
    peer_identities: Iterable[str] = (), alpn: Sequence[str] = ()
) -> tls_pb2.CommonTlsContext:
    """Our certificate and the trust bundle from SDS; peers must hold one of the identities
    (any certificate from the trust bundle when ``peer_identities`` is empty)."""
    validation = common_pb2.CertificateValidationContext(
        match_typed_subject_alt_names=[
            common_pb2.SubjectAltNameMatcher(
                san_type=common_pb2.SubjectAltNameMatcher.URI,
                matcher=string_pb2.StringMatcher(exact=identity),
            )
            for identity in sorted(set(peer_identities))
        ]
    )
    return tls_pb2.CommonTlsContext(
        tls_certificate_sds_secret_configs=[
            secret_pb2.SdsSecretConfig(name=CERT_SECRET, sds_config=sds_config())
        ],
        combined_validation_context=tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=validation,
            validation_context_sds_secret_config=secret_pb2.SdsSecretConfig(
                name=ROOT_SECRET, sds_config=sds_config()
            ),
        ),
        alpn_protocols=list(alpn),
    )


def upstream_tls_context(
    peer_identities: Iterable[str], sni: str = "", alpn: Sequence[str] = ()
) -> tls_pb2.UpstreamTlsContext:
    """Client side: present our SVID, accept only a server with one of ``peer_identities``."""
    return tls_pb2.UpstreamTlsContext(
        common_tls_context=common_tls_context(peer_identities, alpn), sni=sni
    )


def downstream_tls_context(
    require_client_certificate: bool = True,
    client_identities: Iterable[str] = (),
    alpn: Sequence[str] = (),
) -> tls_pb2.DownstreamTlsContext:
    """Server side: present our SVID; require (and verify) a client SVID by default."""
    ctx = tls_pb2.DownstreamTlsContext(
        common_tls_context=common_tls_context(client_identities, alpn)
    )
    ctx.require_client_certificate.value = require_client_certificate
    return ctx


def upstream_transport_socket(
    peer_identities: Iterable[str], sni: str = "", alpn: Sequence[str] = ()
) -> base_pb2.TransportSocket:
    return base_pb2.TransportSocket(
        name=TLS_SOCKET, typed_config=pack(upstream_tls_context(peer_identities, sni, alpn))
    )


def downstream_transport_socket(
    require_client_certificate: bool = True, alpn: Sequence[str] = ()
) -> base_pb2.TransportSocket:
    return base_pb2.TransportSocket(
        name=TLS_SOCKET,
        typed_config=pack(downstream_tls_context(require_client_certificate, alpn=alpn)),
    )


def policy_from_config(pilot_config: Mapping[str, object] | None) -> Policy:
    """The policy in a mesh config's ``pilot.mtls`` section; OFF when absent.

    Bad input never crashes Pilot: the error is logged (naming the field) and mTLS stays OFF,
    which is what an unconfigured mesh has anyway.
    """
    section = (pilot_config or {}).get("mtls")
    if section is None:
        return Policy(Mode.OFF)
    try:
        if not isinstance(section, Mapping):
            raise ValueError("expected a map with 'mode' and optional 'destinations'")
        return Policy.from_dict(section)
    except ValueError as exc:
        log.error("pilot.mtls: %s; mutual TLS stays OFF", exc)
        return Policy(Mode.OFF)


# -- outbound -------------------------------------------------------------------------------
def has_sidecar(endpoint: Endpoint) -> bool:
    """True when the endpoint has a sidecar that terminates mesh mutual TLS."""
    return bool(endpoint.identity) and endpoint.labels.get(TLS_MODE_LABEL) == TLS_MODE_MTLS


def peer_identities(endpoints: Iterable[Endpoint]) -> list[str]:
    """Distinct SPIFFE IDs of the endpoints, sorted (what the client accepts)."""
    return sorted({e.identity for e in endpoints if e.identity})


def _mesh_socket(
    service: Service, endpoints: Sequence[Endpoint], policy: Policy
) -> base_pb2.TransportSocket | None:
    """Mutual TLS towards the endpoints of ``service`` that have a sidecar (None: no such
    endpoint, the destination is OFF, or it is outside the mesh)."""
    if policy.mode_for(service.hostname, service.namespace) is Mode.OFF:
        return None
    if service.location is Location.MESH_EXTERNAL:
        return None
    # A sidecar whose workload turned mutual TLS off on every port of the service accepts only
    # plain text; one that turned it off on some ports only is still reached over mutual TLS.
    meshed = [
        e
        for e in endpoints
        if has_sidecar(e)
        and any(
            policy.endpoint_mode(service, e, e.target_port(p)) is not Mode.OFF
            for p in service.ports
        )
    ]
    if not meshed:
        return None
    return upstream_transport_socket(peer_identities(meshed), sni=service.hostname)


def outbound_transport_socket(
    service: Service, endpoints: Sequence[Endpoint], policy: Policy
) -> base_pb2.TransportSocket | None:
    """One transport socket for *all* of ``endpoints`` (a static bootstrap's cluster), or None
    for plain traffic: mutual TLS only when every endpoint has a sidecar."""
    if not all(has_sidecar(e) for e in endpoints):
        # A destination (or part of one) without a sidecar cannot answer mutual TLS.
        return None
    return _mesh_socket(service, endpoints, policy)


def endpoint_socket_metadata(endpoint: Endpoint) -> dict[str, str] | None:
    """The :data:`TRANSPORT_SOCKET_MATCH` metadata EDS gives ``endpoint``: ``MTLS_MATCH`` when it
    has a sidecar (so clusters with :func:`apply_outbound_mtls` reach it over mutual TLS)."""
    return dict(MTLS_MATCH) if has_sidecar(endpoint) else None


def apply_outbound_mtls(
    cluster: cluster_pb2.Cluster,
    service: Service,
    endpoints: Sequence[Endpoint],
    policy: Policy,
) -> bool:
    """Give ``cluster`` mutual TLS towards those of ``endpoints`` that have a sidecar.

    Adds one ``transport_socket_matches`` entry (mesh mTLS for endpoints whose EDS metadata is
    :data:`MTLS_MATCH`); the cluster's default stays plain for the others. Returns True when
    mutual TLS was configured. Leaves the cluster untouched when the destination is OFF or
    outside the mesh, when no endpoint has a sidecar, and when it already has a transport
    socket (TLS an operator's policy asked for wins).
    """
    if cluster.HasField("transport_socket") or cluster.transport_socket_matches:
        return False
    socket = _mesh_socket(service, endpoints, policy)
    if socket is None:
        return False
    match = struct_pb2.Struct()
    match.update(MTLS_MATCH)
    cluster.transport_socket_matches.append(
        cluster_pb2.Cluster.TransportSocketMatch(
            name=TLS_MODE_MTLS,
            match=match,
            transport_socket=socket,
        )
    )
    return True


def uses_mesh_sds(config: tls_pb2.CommonTlsContext) -> bool:
    """True when ``config`` takes its certificate or trust bundle from the node agent (its SDS
    cluster, or a proxy's secret files)."""
    return any(
        _is_agent_source(secret)
        or (
            secret.name in (CERT_SECRET, ROOT_SECRET)
            and secret.sds_config.path_config_source.path.endswith(sds_files.SUFFIX)
        )
        for secret in _secret_configs(config)
    )


def _is_mesh_socket(socket: base_pb2.TransportSocket) -> bool:
    context = tls_pb2.UpstreamTlsContext()
    return socket.typed_config.Unpack(context) and uses_mesh_sds(context.common_tls_context)


def strip_mesh_tls(cluster: cluster_pb2.Cluster) -> bool:
    """Remove the mesh's mutual TLS (secrets from the node agent's files) from ``cluster``.

    For a proxy without SDS: Envoy could never get those secrets, so it would refuse the
    cluster; plain traffic at least reaches PERMISSIVE destinations, and a STRICT one refuses
    it visibly. Other TLS (an operator's DestinationPolicy, egress origination) is kept. True
    when something was removed.
    """
    removed = False
    if cluster.HasField("transport_socket") and _is_mesh_socket(cluster.transport_socket):
        cluster.ClearField("transport_socket")
        removed = True
    kept = [m for m in cluster.transport_socket_matches if not _is_mesh_socket(m.transport_socket)]
    if len(kept) != len(cluster.transport_socket_matches):
        del cluster.transport_socket_matches[:]
        cluster.transport_socket_matches.extend(kept)
        removed = True
    return removed


# -- inbound --------------------------------------------------------------------------------
def apply_xfcc(manager: hcm.HttpConnectionManager) -> None:
    """Forward the verified client's SPIFFE ID to the app; drop any header a client forged."""
    manager.forward_client_cert_details = hcm.HttpConnectionManager.SANITIZE_SET
    manager.set_current_client_cert_details.uri = True


def inbound_filter_chains(
    filters: Sequence[lc.Filter], mode: Mode, name: str = "inbound"
) -> tuple[list[lc.FilterChain], list[lc.ListenerFilter]]:
    """Filter chains (and listener filters) for an inbound port carrying ``filters``."""
    if mode is Mode.OFF:
        return [lc.FilterChain(name=name, filters=list(filters))], []
    tls_chain = lc.FilterChain(
        name=f"{name}-mtls",
        filters=list(filters),
        transport_socket=downstream_transport_socket(require_client_certificate=True),
    )
    if mode is Mode.STRICT:
        return [tls_chain], []
    tls_chain.filter_chain_match.transport_protocol = "tls"
    plain_chain = lc.FilterChain(name=f"{name}-plain", filters=list(filters))
    plain_chain.filter_chain_match.transport_protocol = "raw_buffer"
    inspector = lc.ListenerFilter(
        name=TLS_INSPECTOR, typed_config=pack(tls_inspector_pb2.TlsInspector())
    )
    return [tls_chain, plain_chain], [inspector]


def inbound_mode_for(
    policy: Policy,
    own: Iterable[tuple[Service, Endpoint]],
    port: int | None = None,
    services: Iterable[Service] = (),
) -> Mode:
    """The inbound mode of a sidecar fronting ``own`` (its (service, endpoint) pairs) on
    ``port`` (its own port; None: any), for ``services`` (those served there; empty: all).

    OFF unless every endpoint it fronts is marked as having a sidecar (:func:`has_sidecar`):
    clients only originate mutual TLS to marked endpoints, so requiring it of unmarked ones
    would refuse all their traffic. Otherwise the strictest mode of the services there.
    """
    pairs = list(own)
    if not pairs or not all(has_sidecar(endpoint) for _, endpoint in pairs):
        return Mode.OFF
    served = {s.hostname for s in services}
    there = [(s, e) for s, e in pairs if not served or s.hostname in served] or pairs
    if port is None:
        return _strictest(policy.mode_for(s.hostname, s.namespace) for s, _ in there)
    return _strictest(policy.endpoint_mode(s, e, port) for s, e in there)


def apply_inbound_mtls(listener: listener_pb2.Listener, mode: Mode) -> None:
    """Rewrite an inbound listener with one plain filter chain for ``mode``.

    HTTP connection managers in the chain get :func:`apply_xfcc` first (so the app sees the
    client's identity); the listener keeps its name, address and everything else.
    """
    if mode is Mode.OFF or not listener.filter_chains:
        return
    filters = [_with_xfcc(f) for f in listener.filter_chains[0].filters]
    del listener.filter_chains[0].filters[:]
    listener.filter_chains[0].filters.extend(filters)
    apply_inbound_transport(listener, mode)


def apply_inbound_transport(listener: listener_pb2.Listener, mode: Mode) -> None:
    """:func:`apply_inbound_mtls` without the header part: for a builder that already set
    :func:`apply_xfcc` on its connection managers."""
    if mode is Mode.OFF or not listener.filter_chains:
        return
    filters = list(listener.filter_chains[0].filters)
    chains, listener_filters = inbound_filter_chains(
        filters, mode, listener.filter_chains[0].name or listener.name
    )
    del listener.filter_chains[:]
    listener.filter_chains.extend(chains)
    listener.listener_filters.extend(listener_filters)


def _with_xfcc(filt: lc.Filter) -> lc.Filter:
    if not filt.typed_config.Is(hcm.HttpConnectionManager.DESCRIPTOR):
        return filt
    manager = hcm.HttpConnectionManager()
    filt.typed_config.Unpack(manager)
    apply_xfcc(manager)
    return lc.Filter(name=filt.name, typed_config=pack(manager))
