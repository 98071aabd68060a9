"""Compare what Pilot sent a proxy with what its Envoy actually holds (``istioctl
proxy-status <pod>``-style), from Pilot's ``/debug/config_dump`` and Envoy's admin
``/config_dump?include_eds``.

Only names are compared, per kind: a name Pilot sent that Envoy lacks is *missing* (Envoy
rejected it, is still warming it, or never got it); a name Envoy has that Pilot did not send
is *extra* (a stale config from before a Pilot restart, or another control plane). Listeners
Envoy failed to add are reported with Envoy's own error.
"""

from __future__ import annotations

from typing import Any

import attrs

KINDS = ("cluster", "endpoint", "listener", "route")
_PILOT_KEYS = {"cluster": "cds", "endpoint": "eds", "listener": "lds", "route": "rds"}


@attrs.frozen(slots=True)
class KindDiff:
    kind: str
    pilot: int
    envoy: int
    missing: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def in_sync(self) -> bool:
        return not (self.missing or self.extra)

    def __str__(self) -> str:
        title = self.kind.capitalize() + "s"
        if self.in_sync:
            return f"{title} match ({self.pilot})"
        parts = [f"{title} differ: Pilot sent {self.pilot}, Envoy has {self.envoy}"]
        parts += [f"  missing in Envoy: {n}" for n in self.missing]
        parts += [f"  only in Envoy:    {n}" for n in self.extra]
        parts += [f"  Envoy error: {e}" for e in self.errors]
        return "\n".join(parts)


def envoy_names(dump: dict[str, Any]) -> tuple[dict[str, set[str]], list[str]]:
    """Dynamic resource names per kind in an Envoy ``/config_dump``, plus listener errors."""
    names: dict[str, set[str]] = {k: set() for k in KINDS}
    errors: list[str] = []
    # Envoy also lists the endpoints of a CDS cluster that carries them inline (STATIC, such
    # as an inbound cluster); Pilot sends endpoints by EDS only, so those are no difference.
    inline: set[str] = set()
    for config in dump.get("configs", []):
        kind = config.get("@type", "").rsplit(".", 1)[-1]
        if kind == "ClustersConfigDump":
            for entry in config.get("dynamic_active_clusters", []):
                cluster = entry["cluster"]
                names["cluster"].add(cluster["name"])
                if cluster.get("type") != "EDS" and "eds_cluster_config" not in cluster:
                    inline.add(cluster["name"])
        elif kind == "EndpointsConfigDump":
            for entry in config.get("dynamic_endpoint_configs", []):
                names["endpoint"].add(entry["endpoint_config"]["cluster_name"])
        elif kind == "ListenersConfigDump":
            for entry in config.get("dynamic_listeners", []):
                failed = entry.get("error_state", {})
                name = entry.get("name") or failed.get("failed_configuration", {}).get("name", "?")
                if "active_state" in entry:
                    names["listener"].add(name)
                if failed:
                    errors.append(f"listener {name}: {failed.get('details', 'rejected')}")
        elif kind == "RoutesConfigDump":
            for entry in config.get("dynamic_route_configs", []):
                names["route"].add(entry["route_config"]["name"])
    names["endpoint"] -= inline
    return names, errors


def pilot_names(dump: dict[str, Any]) -> dict[str, set[str]]:
    """Resource names per kind in Pilot's ``/debug/config_dump`` for one proxy."""
    configs = dump.get("configs", {})
    return {k: {r["name"] for r in configs.get(_PILOT_KEYS[k], [])} for k in KINDS}


def compare(pilot_dump: dict[str, Any], envoy_dump: dict[str, Any]) -> list[KindDiff]:
    sent = pilot_names(pilot_dump)
    have, errors = envoy_names(envoy_dump)
    out = []
    for kind in KINDS:
        out.append(
            KindDiff(
                kind,
                len(sent[kind]),
                len(have[kind]),
                tuple(sorted(sent[kind] - have[kind])),
                tuple(sorted(have[kind] - sent[kind])),
                tuple(dict.fromkeys(errors)) if kind == "listener" else (),
            )
        )
    return out
