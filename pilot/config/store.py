"""The file config store: traffic-management kinds read from watched YAML files.

A snapshot of every valid RouteRule, DestinationPolicy, EgressRule and Gateway/Ingress, rebuilt on
each change, is what Pilot translates. Files are handled by :mod:`meshfed.core.filestore`, so a
document with an error keeps its object's last good version in force while the file's other
documents apply. Kinds owned by other stores (ServiceEntry and WorkloadEntry belong to the static
registry) are skipped here. Subscribers are told only when the
snapshot really changed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from meshfed.core.filestore import WatchedFiles, parse_file
from meshfed.core.resources import ConfigError
from meshfed.pilot.config import peer_authentication
from meshfed.pilot.config.authorization import AuthorizationPolicy
from meshfed.pilot.config.conflicts import RuleConflict, find_conflicts, ordered_rules
from meshfed.pilot.config.istio import (
    DestinationRule,
    GatewayRoute,
    L4Route,
    VirtualService,
    resolve,
)
from meshfed.pilot.config.istio_gateway import IstioGateway, binding_notes
from meshfed.pilot.config.model import (
    DestinationPolicy,
    EgressRule,
    Gateway,
    RouteRule,
)
from meshfed.pilot.config.parse import PARSERS, ConfigObject, Parser
from meshfed.pilot.config.peer_authentication import PeerAuthentication
from meshfed.pilot.config.sidecar import Sidecar
from meshfed.security import mtls

log = logging.getLogger("meshfed.pilot.config")


@attrs.frozen(slots=True)
class ConfigSnapshot:
    route_rules: tuple[RouteRule, ...] = ()  # in application order (see conflicts.py)
    destination_policies: tuple[DestinationPolicy, ...] = ()
    egress_rules: tuple[EgressRule, ...] = ()
    gateways: tuple[Gateway, ...] = ()
    conflicts: tuple[RuleConflict, ...] = ()
    # Where today's Istio objects override Istio 0.2's, and routes to undefined subsets.
    notes: tuple[str, ...] = ()
    peer_authentications: tuple[PeerAuthentication, ...] = ()
    authorization_policies: tuple[AuthorizationPolicy, ...] = ()
    sidecars: tuple[Sidecar, ...] = ()
    # Today's Istio Gateways and what VirtualServices bound to them route (never sidecars').
    istio_gateways: tuple[IstioGateway, ...] = ()
    gateway_routes: tuple[GatewayRoute, ...] = ()
    l4_routes: tuple[L4Route, ...] = ()

    @classmethod
    def of(cls, objects: Iterable[ConfigObject | GatewayRoute | L4Route]) -> ConfigSnapshot:
        objects = list(objects)

        def key(o: Any) -> tuple[str, str]:
            return (o.namespace, o.name)

        resolved = resolve(
            [o for o in objects if isinstance(o, RouteRule)],
            [o for o in objects if isinstance(o, DestinationPolicy)],
            [o for o in objects if isinstance(o, VirtualService)],
            [o for o in objects if isinstance(o, DestinationRule)],
        )
        rules = resolved.route_rules
        # Several stores' snapshots are merged by handing their contents back to this function:
        # gateway routes arrive already resolved then.
        gateway_routes: tuple[GatewayRoute, ...] = (
            *resolved.gateway_routes,
            *(o for o in objects if isinstance(o, GatewayRoute)),
        )
        l4_routes: tuple[L4Route, ...] = (
            *resolved.l4_routes,
            *(o for o in objects if isinstance(o, L4Route)),
        )
        peer = tuple(sorted((o for o in objects if isinstance(o, PeerAuthentication)), key=key))
        # Two PeerAuthentications for one scope: the one not applied is reported like an
        # override between API generations.
        peer_notes = peer_authentication.policy(mtls.Policy(), peer).notes
        istio_gateways = tuple(sorted((o for o in objects if isinstance(o, IstioGateway)), key=key))
        ingresses = tuple(sorted((o for o in objects if isinstance(o, Gateway)), key=key))
        bindings = [(r.rule.ref, r.host, r.gateways) for r in gateway_routes]
        bindings += [(r.ref, h, r.gateways) for r in l4_routes for h in r.sni_hosts]
        gateway_notes = binding_notes(istio_gateways, bindings, ingresses)
        return cls(
            route_rules=ordered_rules(rules),
            destination_policies=tuple(sorted(resolved.destination_policies, key=key)),
            egress_rules=tuple(sorted((o for o in objects if isinstance(o, EgressRule)), key=key)),
            gateways=ingresses,
            conflicts=find_conflicts(rules),
            notes=tuple(sorted({*resolved.notes, *peer_notes, *gateway_notes})),
            peer_authentications=peer,
            authorization_policies=tuple(
                sorted((o for o in objects if isinstance(o, AuthorizationPolicy)), key=key)
            ),
            sidecars=tuple(sorted((o for o in objects if isinstance(o, Sidecar)), key=key)),
            istio_gateways=istio_gateways,
            gateway_routes=gateway_routes,
            l4_routes=l4_routes,
        )


def parse_config_file(
    path: Path, parsers: Mapping[str, Parser] = PARSERS
) -> tuple[tuple[ConfigObject, ...] | None, list[ConfigError]]:
    """One file's routing objects on their own (None when any document has an error); the
    store itself applies files per object (:mod:`meshfed.core.filestore`)."""
    parsed = parse_file(path, parsers)
    if parsed.errors:
        return None, list(parsed.errors)
    return tuple(obj for _, obj in parsed.objects), []


class FileConfigStore:
    """Routing config from files and folders, applied live."""

    def __init__(
        self, paths: Iterable[Path | str], parsers: Mapping[str, Parser] = PARSERS
    ) -> None:
        self.files: WatchedFiles[ConfigObject] = WatchedFiles(
            paths, parsers, self._apply, what="routing config"
        )
        self.snapshot = ConfigSnapshot()
        self._subscribers: list[Callable[[ConfigSnapshot], None]] = []

    @property
    def errors(self) -> list[ConfigError]:
        return self.files.errors

    def subscribe(self, callback: Callable[[ConfigSnapshot], None]) -> None:
        self._subscribers.append(callback)

    def _apply(self) -> None:
        snapshot = ConfigSnapshot.of(self.files.objects())
        if snapshot == self.snapshot:
            return
        for conflict in set(snapshot.conflicts) - set(self.snapshot.conflicts):
            log.warning("routing config conflict: %s", conflict)
        for note in set(snapshot.notes) - set(self.snapshot.notes):
            log.warning("routing config: %s", note)
        self.snapshot = snapshot
        for callback in list(self._subscribers):
            callback(snapshot)

    def load(self) -> None:
        """Read every file now (blocking: for callers without an event loop)."""
        self.files.reload()

    async def refresh(self) -> None:
        """Read every file in a worker thread and apply the result (for callers on the loop)."""
        await self.files.refresh()

    async def run(self) -> None:
        await self.files.watch()

    def stop(self) -> None:
        self.files.stop()

    def describe(self) -> dict[str, Any]:
        snap = self.snapshot
        return {
            "paths": [str(p) for p in self.files.paths],
            "route_rules": [r.ref for r in snap.route_rules],
            "destination_policies": [p.ref for p in snap.destination_policies],
            "egress_rules": [e.ref for e in snap.egress_rules],
            "gateways": [g.ref for g in snap.gateways] + [g.ref for g in snap.istio_gateways],
            "conflicts": [str(c) for c in snap.conflicts],
            "notes": list(snap.notes),
            "errors": [str(e) for e in self.errors],
        }
