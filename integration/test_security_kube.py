"""The CA against a real Kubernetes API server (with etcd): TokenReview and Secret storage.

Service-account tokens are minted by the API server itself (TokenRequest); the CA checks them
with TokenReview and grants exactly the token's namespace/service account. The CA's root is
kept in a Secret in the system namespace and survives a "restart" (a second CA instance).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from meshfed.nodeagent.client import CAClient, CARefused
from meshfed.nodeagent.keys import generate_key, make_csr
from meshfed.security import identity
from meshfed.security.ca import CertificateAuthority
from meshfed.security.service import CAServer, KubernetesTokenReviewer, SigningService
from meshfed.security.storage import KubernetesSecretStorage

pytestmark = pytest.mark.timeout(300)
TD = "cluster.local"


@pytest.fixture
def kube(kube_apiserver: Any) -> Iterator[tuple[Any, str]]:
    """An API client and a fresh namespace with service accounts reviews and ratings."""
    from kubernetes import client

    api_client = kube_apiserver.api_client()
    core = client.CoreV1Api(api_client)
    ns = f"sec-{secrets.token_hex(3)}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    for sa in ("reviews", "ratings"):
        core.create_namespaced_service_account(
            ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=sa))
        )
    yield api_client, ns
    core.delete_namespace(ns)


def _sa_token(api_client: Any, ns: str, sa: str) -> str:
    from kubernetes import client

    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
    )
    answer = client.CoreV1Api(api_client).create_namespaced_service_account_token(sa, ns, request)
    return answer.status.token


@pytest.fixture
async def ca_server(kube: tuple[Any, str], tmp_path: Any) -> AsyncIterator[CAServer]:
    from meshfed.security.storage import FileStorage

    api_client, _ = kube
    ca = CertificateAuthority.load_or_create(FileStorage(tmp_path / "ca"), TD)
    server = CAServer(
        SigningService(ca, kubernetes=KubernetesTokenReviewer(api_client)),
        "127.0.0.1:0",
        "127.0.0.1:0",
    )
    await server.start()
    yield server
    await server.stop()


async def test_service_account_token_gets_exactly_its_identity(
    kube: tuple[Any, str], ca_server: CAServer
) -> None:
    api_client, ns = kube
    client = CAClient(
        ca_server.bootstrap_target, ca_server.renewal_target, ca_server.service.ca.root_pem
    )
    token = _sa_token(api_client, ns, "reviews")
    ok = await client.bootstrap(make_csr(generate_key()), kubernetes_token=token)
    assert ok.identity == f"spiffe://{TD}/ns/{ns}/sa/reviews"
    assert identity.spiffe_id_of(identity.load_pem_chain(ok.chain_pem)[0]) == ok.identity

    with pytest.raises(CARefused) as refused:
        await client.bootstrap(
            make_csr(generate_key()),
            kubernetes_token=token,
            identity=f"spiffe://{TD}/ns/{ns}/sa/ratings",
        )
    assert refused.value.code is grpc.StatusCode.PERMISSION_DENIED

    # A token the API server did not issue (signed by nobody it knows) is refused.
    header = base64.urlsafe_b64encode(b'{"alg":"RS256"}').rstrip(b"=").decode()
    with pytest.raises(CARefused) as refused:
        await client.bootstrap(
            make_csr(generate_key()), kubernetes_token=f"{header}.e30.c2lnbmF0dXJl"
        )
    assert refused.value.code is grpc.StatusCode.UNAUTHENTICATED


def test_root_kept_in_a_secret_survives_a_restart(kube: tuple[Any, str]) -> None:
    from kubernetes import client

    api_client, ns = kube
    system_ns = f"{ns}-system"  # does not exist yet: the storage creates it
    core = client.CoreV1Api(api_client)
    try:
        first = CertificateAuthority.load_or_create(KubernetesSecretStorage(core, system_ns), TD)
        secret = core.read_namespaced_secret("meshfed-ca", system_ns)
        assert secret.type == "Opaque"
        assert set(secret.data) == {"ca-key.pem", "ca-cert.pem", "root-cert.pem", "cert-chain.pem"}
        leaf = first.sign(identity.load_csr(make_csr(generate_key())), f"spiffe://{TD}/ns/a/sa/b")

        second = CertificateAuthority.load_or_create(KubernetesSecretStorage(core, system_ns), TD)
        assert second.root_pem == first.root_pem
        leaf.certificate.verify_directly_issued_by(second.signer_cert)
    finally:
        core.delete_namespace(system_ns)


def test_ca_serve_with_kubernetes_storage_keeps_its_root_across_restarts(
    kube_apiserver: Any, tmp_path: Any
) -> None:
    """``meshfed ca serve --storage kubernetes``, as a real process, twice."""
    from kubernetes import client

    from integration.peers.http import get_json
    from integration.peers.ports import free_ports
    from integration.security_helpers import ca_process

    system_ns = f"meshfed-sys-{secrets.token_hex(3)}"
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(
        "apiVersion: meshfed.io/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh}\n"
        f"spec:\n  trustDomain: {TD}\n  systemNamespace: {system_ns}\n"
    )
    extra = [
        "--config", str(mesh), "--storage", "kubernetes",
        "--kubeconfig", str(kube_apiserver.kubeconfig),
    ]  # fmt: skip
    core = client.CoreV1Api(kube_apiserver.api_client())
    host = "127.0.0.1"
    try:
        roots = []
        for run in range(2):
            ports = free_ports(3, host)
            with ca_process(
                tmp_path / f"state{run}", host, ports, tmp_path / f"ca{run}.log", extra
            ) as proc:
                info = get_json(f"http://{host}:{ports[2]}/debug/ca")
                roots.append(info["root_sha256"])
                assert proc.running()
        assert roots[0] == roots[1]  # two processes, two empty state folders, one root
        secret = core.read_namespaced_secret("meshfed-ca", system_ns)
        assert base64.b64decode(secret.data["root-cert.pem"]).startswith(b"-----BEGIN")
    finally:
        core.delete_namespace(system_ns)
