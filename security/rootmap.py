"""The mesh's trust bundle in a ConfigMap of the system namespace, written by the CA.

Why: a hub that asks the running CA for its webhook certificate must authenticate that CA
first, and must not read the CA's Secret to do so. The bundle is public; the CA keeps it in a
ConfigMap (``meshfed-ca-root-cert``, key ``root-cert.pem``, the name sidecars mount), and the
hub's pod mounts that ConfigMap. Written at start and after every root rotation the CA sees;
a write that fails is the caller's to retry (the CA's rotation follower retries it).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("meshfed.security.rootmap")

ROOT_KEY = "root-cert.pem"


class RootConfigMap:
    """Keeps ConfigMap ``namespace/name`` key ``root-cert.pem`` equal to the trust bundle."""

    def __init__(self, core_api: Any, namespace: str, name: str) -> None:
        self.core = core_api  # kubernetes.client.CoreV1Api
        self.namespace = namespace
        self.name = name
        self._written: bytes | None = None

    def describe(self) -> str:
        return f"configmap {self.namespace}/{self.name}"

    def publish(self, root_pem: bytes) -> None:
        """Create or update the ConfigMap (blocking); nothing is sent when it already matches."""
        from kubernetes import client as k8s

        if root_pem == self._written:
            return
        text = root_pem.decode()
        body = k8s.V1ConfigMap(
            metadata=k8s.V1ObjectMeta(
                name=self.name, labels={"app.kubernetes.io/managed-by": "meshfed-ca"}
            ),
            data={ROOT_KEY: text},
        )
        try:
            current = self.core.read_namespaced_config_map(
                self.name, self.namespace, _request_timeout=10
            )
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise
            self.core.create_namespaced_config_map(self.namespace, body, _request_timeout=10)
        else:
            if (current.data or {}).get(ROOT_KEY) != text:
                self.core.patch_namespaced_config_map(
                    self.name, self.namespace, {"data": {ROOT_KEY: text}}, _request_timeout=10
                )
        self._written = root_pem
        log.info("trust bundle written to %s", self.describe())
