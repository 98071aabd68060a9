"""PeerAuthentication: parsed, refused naming the field, and folded into the mutual TLS policy
with Istio's precedence (port, workload, namespace, mesh), over the mesh config's policy."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from meshfed.pilot.config import peer_authentication as pa
from meshfed.pilot.config.store import ConfigSnapshot, parse_config_file
from meshfed.registry.model import Endpoint, Port, Protocol, Service
from meshfed.security import mtls

DOCS = """
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: secure}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: legacy, namespace: secure}
spec:
  selector: {matchLabels: {app: legacy}}
  mtls: {mode: DISABLE}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: metrics, namespace: secure}
spec:
  selector: {matchLabels: {app: web}}
  portLevelMtls: {9090: {mode: PERMISSIVE}}
"""
MESHED = {mtls.TLS_MODE_LABEL: mtls.TLS_MODE_MTLS}


def snapshot(tmp_path: Path, text: str) -> tuple[Path, ConfigSnapshot | None, list[str]]:
    path = tmp_path / "pa.yaml"
    path.write_text(textwrap.dedent(text))
    objects, errors = parse_config_file(path)
    return path, None if objects is None else ConfigSnapshot.of(objects), [str(e) for e in errors]


def svc(name: str, ns: str) -> Service:
    return Service(
        f"{name}.{ns}.svc.cluster.local", namespace=ns, ports=[Port(80, "http", Protocol.HTTP)]
    )


def ep(app: str) -> Endpoint:
    return Endpoint("127.0.0.9", {"http": 8080}, {**MESHED, "app": app}, identity="spiffe://x/a")


def test_mesh_namespace_workload_and_port_modes(tmp_path: Path) -> None:
    _, snap, errors = snapshot(tmp_path, DOCS)
    assert errors == [] and snap is not None
    folded = pa.policy(mtls.Policy(mtls.Mode.STRICT), snap.peer_authentications)
    p = folded.policy
    assert folded.notes == ()
    assert p.mode is mtls.Mode.PERMISSIVE  # the root namespace's object replaces the mesh config
    secure, other = svc("web", "secure"), svc("web", "default")
    assert p.endpoint_mode(secure, ep("web"), 8080) is mtls.Mode.STRICT
    assert p.endpoint_mode(secure, ep("web"), 9090) is mtls.Mode.PERMISSIVE  # port level
    assert p.endpoint_mode(secure, ep("legacy"), 8080) is mtls.Mode.OFF  # workload DISABLE
    assert p.endpoint_mode(other, ep("web"), 8080) is mtls.Mode.PERMISSIVE
    assert p.endpoint_mode(other, ep("legacy"), 8080) is mtls.Mode.PERMISSIVE  # other namespace
    # The sidecar's inbound mode on one port, for the services served there.
    assert mtls.inbound_mode_for(p, [(secure, ep("web"))], 8080, [secure]) is mtls.Mode.STRICT
    assert mtls.inbound_mode_for(p, [(other, ep("web"))], 8080, [other]) is mtls.Mode.PERMISSIVE
    # Clients do not originate mutual TLS to a workload that turned it off.
    cluster_socket = mtls.outbound_transport_socket(secure, [ep("legacy")], p)
    assert cluster_socket is None
    assert mtls.outbound_transport_socket(secure, [ep("web")], p) is not None


def test_without_objects_the_mesh_config_policy_is_unchanged() -> None:
    base = mtls.Policy(mtls.Mode.STRICT, {"a.default.svc.cluster.local": mtls.Mode.OFF})
    assert pa.policy(base, []).policy == base


def test_two_objects_for_one_scope_first_wins_and_is_reported(tmp_path: Path) -> None:
    text = (
        DOCS
        + """---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: zz-second, namespace: secure}
spec: {mtls: {mode: DISABLE}}
"""
    )
    _, snap, _ = snapshot(tmp_path, text)
    assert snap is not None
    folded = pa.policy(mtls.Policy(), snap.peer_authentications)
    assert folded.policy.namespaces["secure"] is mtls.Mode.STRICT
    assert folded.notes == (
        "PeerAuthentication secure/zz-second is not applied: PeerAuthentication secure/default "
        "sets the same scope",
    )
    assert snap.notes == folded.notes  # what validate reports


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ("{mtls: {mode: STRICTLY}}", "spec.mtls.mode"),
        ("{portLevelMtls: {8080: {mode: DISABLE}}}", "spec.selector"),
        (
            "{selector: {matchLabels: {app: a}}, portLevelMtls: {http: {mode: DISABLE}}}",
            "spec.portLevelMtls.http",
        ),
        ("{selector: {matchLabels: {app: a}}, portLevelMtls: {80: {}}}", "spec.portLevelMtls.80"),
        ("{mtls: {mode: STRICT}, action: ALLOW}", "spec.action"),
        ("{selector: {labels: {app: a}}}", "spec.selector.labels"),
    ],
)
def test_bad_objects_are_refused_naming_the_field(tmp_path: Path, spec: str, field: str) -> None:
    text = (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        f"metadata: {{name: x, namespace: shop}}\nspec: {spec}\n"
    )
    path, snap, errors = snapshot(tmp_path, text)
    assert snap is None
    assert any(e.startswith(f"{path}: PeerAuthentication shop/x: {field}") for e in errors), errors


def test_validate_warns_about_an_object_that_loses_its_scope(tmp_path: Path) -> None:
    from meshfed.validate import validate_files

    path = tmp_path / "two.yaml"
    path.write_text(
        "".join(
            "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
            f"metadata: {{name: {name}, namespace: shop}}\nspec: {{mtls: {{mode: {mode}}}}}\n"
            for name, mode in (("a", "STRICT"), ("b", "DISABLE"))
        )
    )
    count, errors, warnings = validate_files([path])
    assert count == 2 and errors == []
    assert any("PeerAuthentication shop/b is not applied" in w for w in warnings), warnings
