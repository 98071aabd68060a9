"""The ``spec.injection`` section of the mesh config (see :mod:`injection.webhook`).

Kept apart from the webhook so reading the mesh config imports no server code.

```yaml
injection:
  enabled: true
  listen: 0.0.0.0:15017                  # the webhook's HTTPS port
  kubeconfig: ~/.kube/config              # default: the first kind: kubernetes registry's
  webhookConfiguration: meshfed-sidecar-injector   # its caBundle is written by the hub
  dnsNames: [meshfed-hub.meshfed-system.svc, ...]  # serving certificate SANs (default below)
  ipAddresses: []                          # besides the listen IP (and $POD_IP)
  ca: {stateDir: ~/.meshfed/ca}           # or {storage: kubernetes, secretName: meshfed-ca}
  # or from the running CA (`meshfed ca serve --hub-service-account`), as a node agent does:
  # ca: {address: meshfed-ca.meshfed-system.svc:15012, rootFile: ..., tokenFile: ...}
  templateRefresh: 5s                      # re-reading the template ConfigMap
  auditInterval: 10s                       # looking for pods that started without a sidecar
```
"""

from __future__ import annotations

from pathlib import Path

import attrs

from meshfed.core import validators
from meshfed.core.resources import FieldReader

FIELDS = {
    "enabled",
    "listen",
    "kubeconfig",
    "context",
    "webhookConfiguration",
    "dnsNames",
    "ipAddresses",
    "ca",
    "templateRefresh",
    "auditInterval",
}
DEFAULT_LISTEN = "0.0.0.0:15017"
WEBHOOK_CONFIGURATION = "meshfed-sidecar-injector"
TEMPLATE_CONFIGMAP = "meshfed-sidecar-injector"
TEMPLATE_KEY = "config"
ROOT_CONFIGMAP = "meshfed-ca-root-cert"
ROOT_KEY = "root-cert.pem"
SERVICE_NAME = "meshfed-hub"
SERVICE_ACCOUNT = "meshfed-hub"


@attrs.frozen(slots=True)
class InjectionSettings:
    enabled: bool = True
    listen: tuple[str, int] = ("0.0.0.0", 15017)
    kubeconfig: str = ""
    context: str = ""
    webhook_configuration: str = WEBHOOK_CONFIGURATION
    dns_names: tuple[str, ...] = ()  # empty: the contract's defaults for the system namespace
    ip_addresses: tuple[str, ...] = ()
    ca_state_dir: str = "~/.meshfed/ca"
    ca_storage: str = "file"  # or "kubernetes": Secret ``ca_secret`` in the system namespace
    ca_secret: str = "meshfed-ca"
    # The running CA: its bootstrap address, the trust bundle that authenticates it, and the
    # hub's service-account token file (re-read at each issue: projected tokens rotate).
    ca_address: str = ""
    ca_root_file: str = ""
    ca_token_file: str = ""
    template_refresh: float = 5.0
    audit_interval: float = 10.0


def default_dns_names(system_namespace: str) -> tuple[str, ...]:
    svc = f"{SERVICE_NAME}.{system_namespace}.svc"
    return (svc, f"{svc}.cluster.local")


def parse_settings(
    reader: FieldReader, base: Path, registries: list[dict[str, object]]
) -> InjectionSettings:
    """``spec.injection``; ``registries`` are the mesh's registry entries (for a kubeconfig)."""
    reader.unknown_fields(FIELDS)
    listen = reader.checked("listen", validators.listen_address, default=None) or ("0.0.0.0", 15017)
    kubeconfig = reader.str("kubeconfig")
    context = reader.str("context")
    if not kubeconfig:
        kube = next((r for r in registries if r.get("kind") == "kubernetes"), None)
        if kube is not None:
            kubeconfig = str(kube.get("kubeconfig") or "")
            context = context or str(kube.get("context") or "")
    if kubeconfig:
        path = Path(kubeconfig).expanduser()
        kubeconfig = str(path if path.is_absolute() else base / path)
    ca = reader.reader("ca")
    state_dir, storage, secret = "~/.meshfed/ca", "file", "meshfed-ca"
    address = root_file = token_file = ""
    if ca is not None:
        ca.unknown_fields({"stateDir", "storage", "secretName", "address", "rootFile", "tokenFile"})
        address = ca.str("address")
        if address:
            for local in ("stateDir", "storage", "secretName"):
                if ca.data.get(local) is not None:
                    ca.error(local, "expected either address (the running CA) or CA storage")
            root_file = _path(ca.str("rootFile"), base)
            token_file = _path(ca.str("tokenFile"), base)
            if not root_file:
                ca.error("rootFile", "expected the trust bundle that authenticates the CA")
            if not token_file:
                ca.error("tokenFile", "expected the hub's service-account token file")
        state_dir = ca.str("stateDir", default=state_dir)
        storage = ca.str("storage", default="file")
        if storage not in ("file", "kubernetes"):
            ca.error("storage", f"expected file or kubernetes, got {validators.show(storage)}")
        secret = ca.checked("secretName", validators.resource_name, default=secret)
    path = Path(state_dir).expanduser()
    state_dir = str(path if path.is_absolute() else base / path)
    return InjectionSettings(
        enabled=reader.bool("enabled", default=True),
        listen=listen,
        kubeconfig=kubeconfig,
        context=context,
        webhook_configuration=reader.checked(
            "webhookConfiguration", validators.resource_name, default=WEBHOOK_CONFIGURATION
        ),
        dns_names=tuple(reader.checked_list("dnsNames", validators.hostname)),
        ip_addresses=tuple(reader.checked_list("ipAddresses", validators.ip_address)),
        ca_state_dir=state_dir,
        ca_storage=storage,
        ca_secret=secret,
        ca_address=address,
        ca_root_file=root_file,
        ca_token_file=token_file,
        template_refresh=reader.checked(
            "templateRefresh", lambda v: validators.duration(v, 0.1, 3600.0), default=5.0
        ),
        audit_interval=reader.checked(
            "auditInterval", lambda v: validators.duration(v, 0.1, 3600.0), default=10.0
        ),
    )


def _path(value: str, base: Path) -> str:
    if not value:
        return ""
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)
