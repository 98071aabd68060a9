"""Authorization as a listener plugin: where Pilot applies :mod:`security.rbac`.

Every inbound HTTP port of a sidecar gets the RBAC filters of the AuthorizationPolicies that
select one of the workloads it serves there (by namespace and endpoint labels; mesh-wide
policies apply everywhere), before the router: ``CUSTOM`` first (:mod:`pilot.custom_authz`:
Mixer's Check for the requests those policies match), then AUDIT, DENY, ALLOW. The policies
come from the config stores;
Pilot sets :attr:`AuthorizationPlugin.policies` when they change, and the plugin's version
moves with them, so only the listeners whose bytes change are pushed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from meshfed.pilot import custom_authz
from meshfed.pilot.config.authorization import AuthorizationPolicy
from meshfed.pilot.mixer_plugin import MixerDataPath
from meshfed.pilot.plugins import ChainContext, HttpChain, PluginBase
from meshfed.security import rbac


class AuthorizationPlugin(PluginBase):
    """AuthorizationPolicy for the mesh's inbound HTTP ports."""

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

    def on_inbound_http(self, ctx: ChainContext, chain: HttpChain) -> None:
        served = {s.hostname for s in ctx.services}
        pairs = [(s, e) for s, e in ctx.own if not served or s.hostname in served]
        chosen = [
            p for p in self.policies if any(p.applies_to(s.namespace, e.labels) for s, e in pairs)
        ]
        policies = [rbac.Policy(p.ref.split(" ", 1)[1], p.action, p.rules) for p in chosen]
        custom_authz.apply(ctx, chain, policies, self.mixer)
        for filt in rbac.http_filters(policies):
            chain.add_filter(filt)
