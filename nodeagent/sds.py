"""The SDS server the local Envoy reads its certificate and trust bundle from.

Why: handing Envoy its key through files would leave a secret on disk and need a file watcher;
SDS over a Unix socket keeps the key in memory and lets the agent *push* a new certificate the
moment it has one, which Envoy applies to new connections without a restart or a drain.

Promises:
- Serves Envoy's Secret Discovery Service (``envoy.service.secret.v3``; state-of-the-world
  streams and unary fetch) with ``grpc.aio`` on ``unix:<path>``. The socket's folder is made
  0700 and the socket 0600: only the agent's user (the sidecar runs as that user) can connect.
- Two resource names: :data:`CERT_NAME` (``default``: certificate chain + private key) and
  :data:`ROOT_NAME` (``ROOTCA``: the trust bundle), the names Istio's sidecars use.
- Every :meth:`SDSServer.update` bumps one version and pushes the requested secrets to every
  open stream. A NACK is logged and not answered with a re-send of the same version; the
  version each stream last ACKed is kept for ``/debug`` and tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.protobuf import any_pb2
from prometheus_client import Counter, Gauge

log = logging.getLogger("meshfed.nodeagent.sds")

CERT_NAME = "default"
ROOT_NAME = "ROOTCA"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

PUSHES = Counter("meshfed_nodeagent_sds_pushes_total", "SDS responses sent to Envoy")
NACKS = Counter("meshfed_nodeagent_sds_nacks_total", "SDS responses Envoy rejected")
STREAMS = Gauge("meshfed_nodeagent_sds_streams", "Open SDS streams")


class SDSServer(sds_pb2_grpc.SecretDiscoveryServiceServicer):
    """Holds the current secrets and streams them to Envoy."""

    def __init__(self, socket_path: Path | str) -> None:
        self.socket_path = Path(socket_path)
        self.version = 0
        self._secrets: dict[str, secret_pb2.Secret] = {}
        self._changed = asyncio.Event()
        self._nonces = itertools.count(1)
        self._server: grpc.aio.Server | None = None
        # stream id -> {resource name -> last ACKed version}; read by tests and /debug.
        self.acked: dict[int, dict[str, str]] = {}
        self._stream_ids = itertools.count(1)

    # -- secrets ---------------------------------------------------------------------------
    def update(self, chain_pem: bytes, key_pem: bytes, root_pem: bytes) -> int:
        """Replace the certificate and trust bundle; every open stream gets them pushed."""
        self._secrets = {
            CERT_NAME: secret_pb2.Secret(
                name=CERT_NAME,
                tls_certificate=common_pb2.TlsCertificate(
                    certificate_chain=base_pb2.DataSource(inline_bytes=chain_pem),
                    private_key=base_pb2.DataSource(inline_bytes=key_pem),
                ),
            ),
            ROOT_NAME: secret_pb2.Secret(
                name=ROOT_NAME,
                validation_context=common_pb2.CertificateValidationContext(
                    trusted_ca=base_pb2.DataSource(inline_bytes=root_pem)
                ),
            ),
        }
        self.version += 1
        # Wake every stream; each waits on the event object it captured, so swap in a new one.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return self.version

    def acked_versions(self) -> set[str]:
        """Every version some stream has ACKed for some resource."""
        return {v for names in self.acked.values() for v in names.values()}

    def all_acked(self, version: int) -> bool:
        """True when every open stream has ACKed ``version`` for all it asked for."""
        return bool(self.acked) and all(
            names and all(v == str(version) for v in names.values())
            for names in self.acked.values()
        )

    def _response(self, names: list[str]) -> discovery_pb2.DiscoveryResponse:
        resources = []
        for name in names:
            secret = self._secrets.get(name)
            if secret is not None:
                packed = any_pb2.Any()
                packed.Pack(secret)
                resources.append(packed)
        return discovery_pb2.DiscoveryResponse(
            version_info=str(self.version),
            resources=resources,
            type_url=SECRET_TYPE,
            nonce=str(next(self._nonces)),
        )

    # -- SDS -------------------------------------------------------------------------------
    async def StreamSecrets(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        stream_id = next(self._stream_ids)
        self.acked[stream_id] = {}
        STREAMS.inc()
        requests: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await requests.put(request)
            finally:
                await requests.put(None)

        reader = asyncio.create_task(read())
        names: list[str] = []
        sent_version = -1
        last_nonce = ""
        try:
            while True:
                # Checked before every wait: an update that happened while this stream was
                # suspended in ``yield`` set an event we no longer hold, but moved the version.
                if names and self._secrets and sent_version != self.version:
                    response = self._response(names)
                    last_nonce, sent_version = response.nonce, self.version
                    PUSHES.inc()
                    yield response
                    continue
                get = asyncio.ensure_future(requests.get())
                wait = asyncio.ensure_future(self._changed.wait())
                try:
                    done, _ = await asyncio.wait({get, wait}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    # Also when the stream itself is cancelled: no waiter may outlive it.
                    wait.cancel()
                    if not get.done():
                        get.cancel()  # a cancelled get() has taken nothing from the queue
                if get not in done:
                    continue
                request = get.result()
                if request is None:
                    return
                if request.error_detail.code:
                    NACKS.inc()
                    log.warning(
                        "Envoy %s NACKed SDS nonce %s: %s",
                        request.node.id,
                        request.response_nonce,
                        request.error_detail.message,
                    )
                elif request.response_nonce and request.response_nonce == last_nonce:
                    for name in request.resource_names:
                        self.acked[stream_id][name] = request.version_info
                new_names = list(request.resource_names)
                if new_names != names or not request.response_nonce:
                    # A new subscription (or a fresh request after reconnect): answer it even
                    # when the version did not change.
                    names, sent_version = new_names, -1
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            self.acked.pop(stream_id, None)
            STREAMS.dec()

    async def FetchSecrets(
        self, request: discovery_pb2.DiscoveryRequest, context: grpc.aio.ServicerContext
    ) -> discovery_pb2.DiscoveryResponse:
        return self._response(list(request.resource_names))

    # -- server ----------------------------------------------------------------------------
    async def start(self) -> None:
        folder = self.socket_path.parent
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a stale socket from a crashed agent
        server = grpc.aio.server()
        sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(self, server)
        server.add_insecure_port(f"unix:{self.socket_path}")
        await server.start()
        os.chmod(self.socket_path, 0o600)
        self._server = server
        log.info("SDS serving on unix:%s", self.socket_path)

    async def stop(self, grace: float = 0.5) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    def describe(self) -> dict[str, Any]:
        return {"socket": str(self.socket_path), "version": self.version, "streams": self.acked}
