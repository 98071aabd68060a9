"""The webhook's HTTPS side without an API server: the serving certificate the hub issues
itself from the mesh CA verifies against the mesh root for its IP and DNS names and carries
the hub's SPIFFE ID; a namespace it cannot read is an HTTP 500 (so ``failurePolicy``
decides), a body that is not an AdmissionReview a 400; the debug page shows the SANs.

What the API server does with it (caBundle, selection, patches) is in
``integration/test_kube_injection.py``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from pathlib import Path

import aiohttp
import pytest
import yaml
from cryptography import x509

from meshfed.config import MeshConfig
from meshfed.core.lifecycle import StartFailed
from meshfed.hub import Hub
from meshfed.injection.settings import InjectionSettings
from meshfed.injection.webhook import InjectionWebhook
from meshfed.security import identity
from meshfed.security.ca import CertificateAuthority
from meshfed.security.storage import FileStorage

HOST = "127.0.142.1"


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _unreachable_kubeconfig(path: Path) -> Path:
    server = f"https://127.0.142.2:{_free_port('127.0.142.2')}"  # nothing listens there
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "x"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    return path


def _peer_cert(root: bytes, server_hostname: str, port: int) -> x509.Certificate:
    context = ssl.create_default_context(cadata=root.decode())
    with (
        socket.create_connection((HOST, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


async def test_serving_certificate_from_the_mesh_ca_with_ip_and_dns_sans(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(FileStorage(tmp_path / "ca"), "cluster.local")
    port = _free_port(HOST)
    settings = InjectionSettings(
        listen=(HOST, port),
        kubeconfig=str(_unreachable_kubeconfig(tmp_path / "kubeconfig")),
        ca_state_dir=str(tmp_path / "ca"),
    )
    mesh = MeshConfig(
        monitoring_address="127.0.0.1:0", system_namespace="mesh-sys", injection=settings
    )
    webhook = InjectionWebhook(settings)
    hub = Hub(mesh, [webhook])
    await hub.start()
    try:
        # The API server dials an IP (a URL webhook) or the Service's DNS name.
        for name in (HOST, "meshfed-hub.mesh-sys.svc", "meshfed-hub.mesh-sys.svc.cluster.local"):
            cert = await asyncio.to_thread(_peer_cert, ca.root_pem, name, port)
            assert (
                identity.spiffe_id_of(cert) == "spiffe://cluster.local/ns/mesh-sys/sa/meshfed-hub"
            )
        # A name not in the certificate is refused by the client's verification.
        try:
            await asyncio.to_thread(_peer_cert, ca.root_pem, "evil.example", port)
        except ssl.SSLCertVerificationError as exc:
            assert "evil.example" in str(exc) or "match" in str(exc)
        else:
            raise AssertionError("a name outside the SANs was accepted")

        context = ssl.create_default_context(cadata=ca.root_pem.decode())
        url = f"https://{HOST}:{port}/inject"
        review = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "operation": "CREATE",
                "namespace": "shop",
                "object": {"metadata": {"name": "web"}, "spec": {"containers": [{"name": "a"}]}},
            },
        }
        async with aiohttp.ClientSession() as session:
            async with session.post(url, json=review, ssl=context) as r:
                assert r.status == 500 and "namespace shop unreadable" in await r.text()
            async with session.post(url, data=b"{not json", ssl=context) as r:
                assert r.status == 400 and "not an AdmissionReview" in await r.text()
            base = f"http://127.0.0.1:{hub.monitoring_port}"
            async with session.get(f"{base}/debug/injectz") as r:
                debug = json.loads(await r.text())
        assert debug["servingCertificate"]["ipAddresses"] == [HOST]
        assert "meshfed-hub.mesh-sys.svc" in debug["servingCertificate"]["dnsNames"]
        assert not debug["caBundle"].startswith("written")  # no API server to write to
        assert webhook.not_ready() == []
    finally:
        await hub.stop()


async def test_without_ca_material_the_hub_refuses_to_start_saying_where_it_looked(
    tmp_path: Path,
) -> None:
    settings = InjectionSettings(
        listen=(HOST, _free_port(HOST)),
        kubeconfig=str(_unreachable_kubeconfig(tmp_path / "kubeconfig")),
        ca_state_dir=str(tmp_path / "no-ca"),
    )
    mesh = MeshConfig(monitoring_address="127.0.0.1:0", injection=settings)
    hub = Hub(mesh, [InjectionWebhook(settings)])
    with pytest.raises(StartFailed) as failed:
        await hub.start()
    text = str(failed.value)
    assert "no CA material" in text and str(tmp_path / "no-ca") in text, text
    assert "meshfed ca serve" in text
