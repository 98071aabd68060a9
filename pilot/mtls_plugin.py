"""Mesh mutual TLS as a listener plugin: where Pilot applies :mod:`security.mtls`.

What secure traffic looks like is security policy (:mod:`security.mtls`); this plugin only
decides where it applies, through the same hooks every other plugin uses:

- every mesh service cluster gets mutual TLS towards its endpoints that have a sidecar
  (:func:`security.mtls.apply_outbound_mtls`), so sidecars and gateways share the same clusters;
- an inbound HTTP connection manager forwards the verified client identity
  (:func:`security.mtls.apply_xfcc`) whenever the port is not plain;
- an inbound listener gets its STRICT or PERMISSIVE filter chains
  (:func:`security.mtls.apply_inbound_transport`), once the chain's filters (this plugin's and
  others') are in place, so every filter runs behind TLS.

A proxy without SDS (``ProxyNode.sds`` false) keeps plain inbound ports and is told why
(:func:`pilot.sds_fallback.inbound_problem`); its clusters are made plain later in the view
pipeline (:mod:`pilot.views`), for every cluster naming the node agent's secrets.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2

from meshfed.pilot import sds_fallback
from meshfed.pilot.plugins import ChainContext, ClusterContext, HttpChain, PluginBase
from meshfed.security import mtls


class MtlsPlugin(PluginBase):
    """Mutual TLS for the mesh, per :class:`security.mtls.Policy`."""

    name = "mtls"

    def __init__(self, policy: mtls.Policy | None = None) -> None:
        self.policy = policy or mtls.Policy(mtls.Mode.OFF)

    def version(self) -> str:
        return mtls.policy_key(self.policy)

    def on_cluster(self, ctx: ClusterContext, cluster: cluster_pb2.Cluster) -> None:
        mtls.apply_outbound_mtls(cluster, ctx.service, ctx.endpoints, self.policy)

    def inbound_mode(self, ctx: ChainContext) -> mtls.Mode:
        mode = mtls.inbound_mode_for(self.policy, ctx.own, ctx.port, ctx.services)
        if mode is not mtls.Mode.OFF and not ctx.proxy.sds:
            # Envoy would refuse a listener naming secrets it cannot fetch.
            ctx.report(sds_fallback.inbound_problem(ctx.proxy))
            return mtls.Mode.OFF
        return mode

    def on_inbound_http(self, ctx: ChainContext, chain: HttpChain) -> None:
        if self.inbound_mode(ctx) is not mtls.Mode.OFF:
            mtls.apply_xfcc(chain.manager)

    def on_inbound_listener(self, ctx: ChainContext, listener: listener_pb2.Listener) -> None:
        mtls.apply_inbound_transport(listener, self.inbound_mode(ctx))
