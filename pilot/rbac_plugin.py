"""Authorization as a listener plugin: where Pilot applies :mod:`security.rbac`.

The AuthorizationPolicies that apply to a proxy's workload are chosen here, one way for every
kind of chain; :mod:`security.rbac` decides what they mean there:

- a sidecar's inbound HTTP port: the policies that select one of the workloads it serves there
  (by namespace and endpoint labels; mesh-wide policies apply everywhere), as HTTP RBAC
  filters before the router: ``CUSTOM`` first (:mod:`pilot.custom_authz`: Mixer's Check for
  the requests those policies match), then AUDIT, DENY, ALLOW;
- a sidecar's inbound TCP port: the same policies as network RBAC filters ahead of
  ``tcp_proxy`` (HTTP-only fields as Istio defines them, :func:`security.rbac.tcp_rule`),
  ``CUSTOM`` first (:func:`pilot.custom_authz.apply_tcp`: Mixer's Check for the connections
  those policies match, through the network ext_authz);
- a gateway's ports (plain and TLS): the policies of the gateway's namespace and the mesh that
  select the gateway proxy by its labels (``meshfed proxy --gateway --label``; a gateway
  without labels carries Istio's ``istio: ingressgateway``), as on an inbound HTTP port.

The policies come from the config stores; Pilot sets :attr:`AuthorizationPlugin.policies` when
they change, and the plugin's version moves with them, so only the listeners whose bytes change
are pushed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from meshfed.pilot import custom_authz
from meshfed.pilot.config.authorization import AuthorizationPolicy
from meshfed.pilot.mixer_plugin import MixerDataPath
from meshfed.pilot.plugins import ChainContext, HttpChain, PluginBase, TcpChain
from meshfed.registry.model import Labels
from meshfed.security import rbac

# What a gateway proxy that announces no labels of its own carries: Istio's default ingress
# gateway's, so Istio's gateway policies (``selector: {matchLabels: {istio: ingressgateway}}``)
# select it as written.
DEFAULT_GATEWAY_LABELS = Labels({"istio": "ingressgateway"})

HTTP_ONLY_ON_TCP = (
    "authorization: {names} use HTTP-only fields (hosts, methods, paths, request.headers) on "
    "TCP port {port}: ALLOW rules naming them never match there; DENY, AUDIT and CUSTOM rules "
    "apply without them"
)


def gateway_labels(ctx: ChainContext) -> Labels:
    """The labels a gateway's policies select on."""
    return ctx.proxy.labels or DEFAULT_GATEWAY_LABELS


class AuthorizationPlugin(PluginBase):
    """AuthorizationPolicy for sidecars' inbound HTTP and TCP ports and for gateways."""

    name = "authorization"

    def __init__(
        self,
        policies: Sequence[AuthorizationPolicy] = (),
        mixer: MixerDataPath | None = None,
    ) -> None:
        self.policies: tuple[AuthorizationPolicy, ...] = tuple(policies)
        # The Mixer data path CUSTOM checks compose with (its quotas); Pilot's Mixer plugin
        # is given the same value.
        self.mixer = mixer or MixerDataPath()

    def version(self) -> str:
        if not self.policies:
            return ""
        return hashlib.sha256(repr((self.policies, self.mixer)).encode()).hexdigest()[:16]

    def _inbound(self, ctx: ChainContext) -> list[rbac.Policy]:
        served = {s.hostname for s in ctx.services}
        pairs = [(s, e) for s, e in ctx.own if not served or s.hostname in served]
        chosen = [
            p for p in self.policies if any(p.applies_to(s.namespace, e.labels) for s, e in pairs)
        ]
        return [_policy(p) for p in chosen]

    def _http(self, ctx: ChainContext, chain: HttpChain, policies: list[rbac.Policy]) -> None:
        custom_authz.apply(ctx, chain, policies, self.mixer)
        for filt in rbac.http_filters(policies):
            chain.add_filter(filt)

    def on_inbound_http(self, ctx: ChainContext, chain: HttpChain) -> None:
        self._http(ctx, chain, self._inbound(ctx))

    def on_gateway_http(self, ctx: ChainContext, chain: HttpChain) -> None:
        labels = gateway_labels(ctx)
        namespace = ctx.proxy.namespace
        chosen = [p for p in self.policies if p.applies_to(namespace, labels)]
        self._http(ctx, chain, [_policy(p) for p in chosen])

    def on_inbound_tcp(self, ctx: ChainContext, chain: TcpChain) -> None:
        policies = self._inbound(ctx)
        if not policies:
            return
        changed = sorted(p.name for p in policies if rbac.dropped_http_fields(p))
        if changed:
            ctx.report(HTTP_ONLY_ON_TCP.format(names=", ".join(changed), port=ctx.port))
        custom_authz.apply_tcp(ctx, chain, policies, self.mixer)
        prefix = f"inbound_tcp_{ctx.port}."
        for filt in rbac.network_filters(policies, prefix):
            chain.add_filter(filt)


def _policy(p: AuthorizationPolicy) -> rbac.Policy:
    return rbac.Policy(p.ref.split(" ", 1)[1], p.action, p.rules)
