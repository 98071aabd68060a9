"""The hub's sidecar-injection webhook: a hub component serving ``POST /inject`` over HTTPS.

What it does, and why each part is here:

- **Serving certificate** issued by the mesh CA, SPIFFE ID ``.../ns/<system-ns>/sa/meshfed-hub``
  plus the DNS names the API server dials (``meshfed-hub.<system-ns>.svc`` ...) and the listen
  IP (``$POD_IP`` when listening on 0.0.0.0). Either from the running CA (``ca.address``): a
  CSR over the CA's API with the hub's service-account token, as a node agent does, and the CA
  adds the Service's DNS names because it is configured to for the hub's identity; the hub
  needs no CA material and no Secret access. Or signed here with the CA's material from its
  storage (the state folder or the ``meshfed-ca`` Secret). Re-issued at half its lifetime; new
  handshakes get the new one.
- **caBundle**: the hub writes the mesh's trust bundle into every webhook of the
  ``MutatingWebhookConfiguration`` (default ``meshfed-sidecar-injector``) and keeps it there
  (a chart upgrade that resets it is repaired within seconds).
- **Template**: the ``config`` key of the ``meshfed-sidecar-injector`` ConfigMap in the system
  namespace, re-read every ``templateRefresh``; absent means the built-in one. A template that
  does not parse keeps the last good one in force, and the error is on ``/debug/injectz``.
- **Answer**: :func:`injection.admission.review`, given the namespace's labels read from the
  API server at each request (a label set a moment ago counts). A namespace that cannot be read
  is an HTTP 500, so the webhook's ``failurePolicy`` decides, as when the hub is down.
- **Trust bundle for the pods**: the sidecar mounts ConfigMap ``meshfed-ca-root-cert``; the hub
  writes it into each namespace it injects into and each namespace labelled for injection.
- **Outside the mesh**: every ``auditInterval`` the hub lists the pods of namespaces labelled
  for injection; a pod the selection says should have a sidecar and that has none (created
  while the webhook was down with ``failurePolicy: Ignore``, or before the label) is listed on
  ``/debug/injectz`` and counted by ``meshfed_pods_outside_mesh``.

Every blocking Kubernetes call runs in a worker thread; every loop runs on the hub's supervisor.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import datetime as dt
import hashlib
import ipaddress
import logging
import os
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import Counter, Gauge

from meshfed.core.component import HubContext
from meshfed.injection import annotations as A
from meshfed.injection.admission import MAX_BODY, BadReview, parse_request, review
from meshfed.injection.inject import decide
from meshfed.injection.settings import (
    ROOT_CONFIGMAP,
    ROOT_KEY,
    SERVICE_ACCOUNT,
    TEMPLATE_CONFIGMAP,
    TEMPLATE_KEY,
    InjectionSettings,
    default_dns_names,
)
from meshfed.injection.template import Template, TemplateError, default_template, parse_template
from meshfed.registry.model import spiffe_id

log = logging.getLogger("meshfed.injection")

REQUESTS = Counter(
    "meshfed_injection_requests_total",
    "Admission requests answered by the injection webhook, by result",
    ["result"],
)
OUTSIDE = Gauge(
    "meshfed_pods_outside_mesh",
    "Pods in namespaces selected for injection that run without the sidecar",
)
TEMPLATE_ERRORS = Gauge(
    "meshfed_injection_template_invalid",
    "1 while the template ConfigMap does not parse (the last good template is in force)",
)
SERVING_TTL = dt.timedelta(hours=24)
RECENT = 50


class InjectionWebhook:
    """The injection webhook as a hub component (``start``, ``stop``, ``routes``, ``not_ready``)."""

    def __init__(self, settings: InjectionSettings) -> None:
        self.settings = settings
        self.template: Template = default_template()
        self.template_error = ""
        self.template_seen: str | None = None  # the ConfigMap text last parsed
        self.ca: Any = None  # local signing only
        self.root_pem = b""  # the mesh's trust bundle, as of the last issue
        self.api: Any = None
        self._runner: web.AppRunner | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._ssl: ssl.SSLContext | None = None
        self.addresses: list[tuple[str, int]] = []
        self.ca_bundle_state = "not written yet"
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT)
        self.outside: list[str] = []
        self.published: dict[str, str] = {}  # namespace -> sha256 of the root it holds
        self.serving_not_after: dt.datetime | None = None
        self.system_namespace = "meshfed-system"
        self.trust_domain = "cluster.local"
        self._supervisor: Any = None
        self._stopping = asyncio.Event()

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self, hub: HubContext) -> None:
        from meshfed.adapters.kubernetes.client import load_api_client

        s = self.settings
        self.system_namespace = hub.mesh.system_namespace
        self.trust_domain = hub.mesh.trust_domain
        self.api = await asyncio.to_thread(load_api_client, s.kubeconfig or None, s.context or None)
        if not s.ca_address:
            self.ca = await asyncio.to_thread(self._load_ca)
        await asyncio.to_thread(self._refresh_template)
        self._tmp = tempfile.TemporaryDirectory(prefix="meshfed-injector-")
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        await self._issue_serving()
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/inject", self._inject)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, port = s.listen
        site = web.TCPSite(self._runner, host, port, ssl_context=self._ssl)
        await site.start()
        self.addresses = [(str(a[0]), int(a[1])) for a in self._runner.addresses]
        log.info("sidecar injection webhook on https://%s:%d/inject", *self.addresses[0][:2])
        self._stopping.clear()
        self._supervisor = hub.supervisor
        for name, loop in self._loops().items():
            hub.supervisor.spawn(name, loop)

    def _loops(self) -> dict[str, Any]:
        return {
            "injection template": self._follow_template,
            "injection caBundle": self._keep_ca_bundle,
            "injection audit": self._audit,
            "injection serving certificate": self._renew_serving,
        }

    async def _pause(self, seconds: float) -> bool:
        """Sleep ``seconds``; True when the component is stopping (the loop should return)."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        # The loops first: none may use the API client or the CA after they are released.
        if self._supervisor is not None:
            retiring = asyncio.gather(*(self._supervisor.retire(n) for n in self._loops()))
            await asyncio.sleep(0)  # each marked retired before its loop sees the stop
            self._stopping.set()
            await retiring
            self._supervisor = None
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        if self.api is not None:
            await asyncio.to_thread(self.api.close)
            self.api = None

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/debug/injectz", self._debug)]

    def not_ready(self) -> list[str]:
        if self._runner is None or not self.addresses:
            return ["injection: the webhook is not serving"]
        return []

    # -- certificates -----------------------------------------------------------------------
    def _load_ca(self) -> Any:
        from kubernetes import client as k8s

        from meshfed.security.ca import CertificateAuthority
        from meshfed.security.storage import FileStorage, KubernetesSecretStorage

        s = self.settings
        storage: Any
        if s.ca_storage == "kubernetes":
            storage = KubernetesSecretStorage(
                k8s.CoreV1Api(self.api), self.system_namespace, s.ca_secret
            )
        else:
            storage = FileStorage(s.ca_state_dir, read_only=True)
        material = storage.load()
        if material is None:
            raise RuntimeError(
                f"injection: no CA material in {storage.describe()} (start `meshfed ca serve` "
                "first, or set spec.injection.ca)"
            )
        return CertificateAuthority.from_storage(storage, material, self.trust_domain)

    def serving_sans(self) -> tuple[list[str], list[str]]:
        s = self.settings
        names = list(s.dns_names or default_dns_names(self.system_namespace))
        ips = list(s.ip_addresses)
        host = s.listen[0]
        candidates = [host] if host not in ("0.0.0.0", "::") else []
        if os.environ.get("POD_IP"):
            candidates.append(os.environ["POD_IP"])
        for candidate in candidates:
            try:
                ip = str(ipaddress.ip_address(candidate))
            except ValueError:
                continue
            if ip not in ips:
                ips.append(ip)
        return names, ips

    async def _issue_serving(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        assert self._tmp is not None and self._ssl is not None
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(key, hashes.SHA256())
        )
        names, ips = self.serving_sans()
        identity = spiffe_id(self.trust_domain, self.system_namespace, SERVICE_ACCOUNT)
        if self.settings.ca_address:
            chain_pem, self.root_pem, not_after = await self._from_running_ca(
                csr.public_bytes(serialization.Encoding.PEM), identity, ips
            )
        else:
            issued = self.ca.sign(csr, identity, SERVING_TTL, dns_names=names, ip_addresses=ips)
            chain_pem, self.root_pem = issued.chain_pem, self.ca.root_pem
            not_after = issued.certificate.not_valid_after_utc
        folder = Path(self._tmp.name)
        key_path, chain_path = folder / "key.pem", folder / "chain.pem"
        key_path.touch(mode=0o600)
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        chain_path.write_bytes(chain_pem)
        self._ssl.load_cert_chain(str(chain_path), str(key_path))  # for new handshakes
        self.serving_not_after = not_after
        leaf = x509.load_pem_x509_certificates(chain_pem)[0]
        got = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        log.info(
            "webhook serving certificate for %s, %s until %s",
            got.get_values_for_type(x509.DNSName),
            [str(ip) for ip in got.get_values_for_type(x509.IPAddress)],
            not_after.isoformat(),
        )

    async def _from_running_ca(
        self, csr_pem: bytes, identity: str, ips: list[str]
    ) -> tuple[bytes, bytes, dt.datetime]:
        """A serving certificate from ``meshfed ca serve``, asked for with the hub's token."""
        from meshfed.security.caclient import CAClient, CARefused

        s = self.settings
        try:
            root, token = await asyncio.to_thread(
                lambda: (Path(s.ca_root_file).read_bytes(), Path(s.ca_token_file).read_text())
            )
        except OSError as exc:
            raise RuntimeError(
                f"injection: reading spec.injection.ca file {exc.filename}: {exc.strerror}"
            ) from None
        # The bootstrap address serves both ports' roles for a token; renewal is by token too,
        # so a hub restarted with a fresh token never depends on an old certificate.
        client = CAClient(s.ca_address, s.ca_address, self.root_pem or root)
        try:
            answer = await client.bootstrap(
                csr_pem,
                kubernetes_token=token.strip(),
                identity=identity,
                ttl=SERVING_TTL,
                ip_addresses=ips,
            )
        except CARefused as exc:
            raise RuntimeError(
                f"injection: the CA at {s.ca_address} refused the serving certificate: {exc}"
            ) from None
        return answer.chain_pem, answer.root_pem, answer.not_after

    async def _renew_serving(self) -> None:
        while True:
            left = (self.serving_not_after or dt.datetime.now(dt.UTC)) - dt.datetime.now(dt.UTC)
            # Half the lifetime the CA granted (it may clamp ours), at least a second.
            if await self._pause(max(1.0, left.total_seconds() / 2)):
                return
            await self._issue_serving()

    @property
    def ca_bundle(self) -> str:
        return base64.b64encode(self.root_pem).decode()

    # -- template ---------------------------------------------------------------------------
    def _refresh_template(self) -> None:
        from kubernetes import client as k8s

        where = f"configmap {self.system_namespace}/{TEMPLATE_CONFIGMAP} key {TEMPLATE_KEY}"
        try:
            cm = k8s.CoreV1Api(self.api).read_namespaced_config_map(
                TEMPLATE_CONFIGMAP, self.system_namespace, _request_timeout=10
            )
            text = (cm.data or {}).get(TEMPLATE_KEY)
        except k8s.ApiException as exc:
            if exc.status != 404:
                self.template_error = f"reading {where}: {exc.status} {exc.reason}"
                return
            text = None
        except Exception as exc:  # the API server unreachable: keep the template in force
            self.template_error = f"reading {where}: {exc}"
            return
        if text == self.template_seen:
            return
        if text is None:
            self.template, self.template_error = default_template(), ""
        else:
            try:
                self.template, self.template_error = parse_template(text, where), ""
            except TemplateError as exc:
                self.template_error = str(exc)
                log.error("injection template not used (the last good one stays): %s", exc)
        TEMPLATE_ERRORS.set(1 if self.template_error else 0)
        self.template_seen = text
        if not self.template_error:
            log.info(
                "injection template %s (%s) from %s",
                self.template.version,
                self.template.digest,
                self.template.source,
            )

    async def _follow_template(self) -> None:
        while not await self._pause(self.settings.template_refresh):
            await asyncio.to_thread(self._refresh_template)

    # -- caBundle ---------------------------------------------------------------------------
    def _write_ca_bundle(self) -> None:
        from kubernetes import client as k8s

        api = k8s.AdmissionregistrationV1Api(self.api)
        name = self.settings.webhook_configuration
        try:
            config = api.read_mutating_webhook_configuration(name, _request_timeout=10)
        except k8s.ApiException as exc:
            self.ca_bundle_state = (
                f"MutatingWebhookConfiguration {name} not found"
                if exc.status == 404
                else f"reading MutatingWebhookConfiguration {name}: {exc.status} {exc.reason}"
            )
            return
        bundle = self.ca_bundle
        ops: list[dict[str, Any]] = []
        for i, hook in enumerate(config.webhooks or []):
            if (hook.client_config.ca_bundle or "") != bundle:
                ops.append({"op": "test", "path": f"/webhooks/{i}/name", "value": hook.name})
                ops.append(
                    {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": bundle}
                )
        if ops:
            api.patch_mutating_webhook_configuration(name, ops, _request_timeout=10)
            log.info("wrote the mesh trust bundle into MutatingWebhookConfiguration %s", name)
        self.ca_bundle_state = f"written into {len(config.webhooks or [])} webhook(s) of {name}"

    async def _keep_ca_bundle(self) -> None:
        while not self._stopping.is_set():
            try:
                await asyncio.to_thread(self._write_ca_bundle)
            except Exception as exc:  # a conflicting writer or the API server away: retry
                self.ca_bundle_state = f"writing caBundle failed: {exc}"
                log.warning("%s", self.ca_bundle_state)
            await self._pause(5.0)

    # -- the pods' trust bundle -------------------------------------------------------------
    def _publish_root(self, namespace: str) -> None:
        from kubernetes import client as k8s

        root = self.root_pem.decode()
        digest = hashlib.sha256(root.encode()).hexdigest()
        if self.published.get(namespace) == digest:
            return
        core = k8s.CoreV1Api(self.api)
        body = {
            "metadata": {
                "name": ROOT_CONFIGMAP,
                "labels": {"app.kubernetes.io/managed-by": "meshfed"},
            },
            "data": {ROOT_KEY: root},
        }
        try:
            current = core.read_namespaced_config_map(
                ROOT_CONFIGMAP, namespace, _request_timeout=10
            )
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise
            core.create_namespaced_config_map(namespace, body, _request_timeout=10)
        else:
            if (current.data or {}).get(ROOT_KEY) != root:
                core.patch_namespaced_config_map(
                    ROOT_CONFIGMAP, namespace, {"data": body["data"]}, _request_timeout=10
                )
        self.published[namespace] = digest

    # -- admission --------------------------------------------------------------------------
    def _namespace_labels(self, namespace: str) -> dict[str, str]:
        from kubernetes import client as k8s

        ns = k8s.CoreV1Api(self.api).read_namespace(namespace, _request_timeout=5)
        return dict(ns.metadata.labels or {})

    async def _inject(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            req = parse_request(raw)
        except BadReview as exc:
            REQUESTS.labels("bad_request").inc()
            return web.Response(status=400, text=f"not an AdmissionReview: {exc}\n")
        try:
            labels = await asyncio.to_thread(self._namespace_labels, req.namespace)
        except Exception as exc:
            REQUESTS.labels("error").inc()
            log.warning("namespace %s unreadable, answering 500: %s", req.namespace, exc)
            return web.Response(status=500, text=f"namespace {req.namespace} unreadable\n")
        answer = review(req, self.template, labels)
        result = (
            "injected"
            if answer.injected
            else ("refused" if not answer.body["response"]["allowed"] else "skipped")
        )
        REQUESTS.labels(result).inc()
        if answer.injected and not req.dry_run:
            try:
                await asyncio.to_thread(self._publish_root, req.namespace)
            except Exception as exc:  # the pod still gets its sidecar; the audit retries
                log.warning("could not publish %s in %s: %s", ROOT_CONFIGMAP, req.namespace, exc)
        self.recent.append(
            {
                "time": time.time(),
                "namespace": answer.namespace,
                "pod": answer.pod,
                "result": result,
                "reason": answer.reason[:300],
                "dryRun": req.dry_run,
            }
        )
        log.info("%s %s/%s: %s", result, answer.namespace, answer.pod, answer.reason[:300])
        return web.json_response(answer.body)

    # -- pods outside the mesh --------------------------------------------------------------
    def _scan(self) -> list[str]:
        from kubernetes import client as k8s

        core = k8s.CoreV1Api(self.api)
        namespaces = {
            ns.metadata.name: dict(ns.metadata.labels or {})
            for ns in core.list_namespace(_request_timeout=30).items
        }
        selected = {
            name
            for name, labels in namespaces.items()
            if any(labels.get(label) == A.ENABLED for label in A.NAMESPACE_LABELS)
        }
        for name in sorted(selected):
            try:
                self._publish_root(name)
            except Exception as exc:
                log.warning("could not publish %s in %s: %s", ROOT_CONFIGMAP, name, exc)
        outside = []
        for pod in core.list_pod_for_all_namespaces(_request_timeout=30).items:
            meta, spec = pod.metadata, pod.spec
            if meta.namespace not in selected or spec.host_network:
                continue
            if pod.status is not None and pod.status.phase in ("Succeeded", "Failed"):
                continue
            annotations = dict(meta.annotations or {})
            if A.STATUS in annotations:
                continue
            should, _ = decide(dict(meta.labels or {}), annotations, namespaces[meta.namespace])
            if should:
                outside.append(f"{meta.namespace}/{meta.name}")
        return sorted(outside)

    async def _audit(self) -> None:
        while not self._stopping.is_set():
            try:
                outside = await asyncio.to_thread(self._scan)
            except Exception as exc:  # keep the last figures; the next round tries again
                log.warning("pod audit failed: %s", exc)
            else:
                fresh = set(outside) - set(self.outside)
                for name in sorted(fresh):
                    log.warning("pod %s runs without the sidecar (outside the mesh)", name)
                self.outside = outside
                OUTSIDE.set(len(outside))
            await self._pause(self.settings.audit_interval)

    async def _debug(self, request: web.Request) -> web.Response:
        names, ips = self.serving_sans()
        return web.json_response(
            {
                "listen": [f"{h}:{p}" for h, p in self.addresses],
                "path": "/inject",
                "servingCertificate": {
                    "dnsNames": names,
                    "ipAddresses": ips,
                    "notAfter": self.serving_not_after.isoformat()
                    if self.serving_not_after
                    else None,
                },
                "webhookConfiguration": self.settings.webhook_configuration,
                "caBundle": self.ca_bundle_state,
                "template": {
                    "source": self.template.source,
                    "version": self.template.version,
                    "digest": self.template.digest,
                    "error": self.template_error,
                },
                "outsideMesh": self.outside,
                "recent": list(self.recent),
            }
        )
