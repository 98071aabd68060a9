"""A real Kubernetes API server backed by a real etcd, on loopback, without a kubelet.

Tests create Services, EndpointSlices and Pods as objects that point at processes on
loopback; nothing schedules or runs them. The API server gets a throw-away PKI (see
:mod:`integration.peers.certs`), a service-account key pair, a static token and an
admin client certificate; :class:`KubeAPIServer` carries a kubeconfig that both the
``kubernetes`` Python client and ``kubectl`` accept. Starting costs ~10-20 s, so the
fixture is session-scoped; tests use their own namespaces.

Admission: the ``ServiceAccount`` plugin is disabled because no controller-manager
creates the ``default`` service account that it would insist on for every Pod.
"""

from __future__ import annotations

import secrets
import shutil
import ssl
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from integration.peers.artifacts import (
    etcd_path,
    kube_apiserver_path,
    kubectl_path,
    require_binary,
)
from integration.peers.certs import KubePki, make_pki
from integration.peers.http import get
from integration.peers.ports import free_ports, loopback_host
from integration.peers.process import PeerProcess

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

ETCD_TIMEOUT = 60.0
APISERVER_TIMEOUT = 180.0


@dataclass
class EtcdServer:
    """A single-member etcd."""

    host: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    process: PeerProcess

    @property
    def client_url(self) -> str:
        """The client URL (what ``--etcd-servers`` takes)."""
        return f"http://{self.host}:{self.client_port}"


@dataclass
class KubeAPIServer:
    """Connection details of a running API server."""

    host: str
    port: int
    token: str
    kubeconfig: Path
    pki: KubePki
    etcd: EtcdServer
    log_path: Path
    process: PeerProcess

    @property
    def url(self) -> str:
        """``https://host:port``."""
        return f"https://{self.host}:{self.port}"

    @property
    def ca_cert(self) -> Path:
        """CA bundle that verifies the serving certificate."""
        return self.pki.ca_cert

    def api_client(self) -> ApiClient:
        """A ``kubernetes.client.ApiClient`` built from the kubeconfig (client cert auth)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def kubectl(self) -> Path:
        """The kubectl binary to use with :attr:`kubeconfig` (built, else the system one)."""
        return kubectl_binary()


def kubectl_binary() -> Path:
    """The cached kubectl if provisioned, else a ``kubectl`` on PATH, else skip/fail."""
    built = kubectl_path()
    if built.exists():
        return built
    found = shutil.which("kubectl")
    return require_binary(Path(found) if found else built, f"kubectl {built.name}", "go", "kube")


@contextmanager
def start_etcd(base: Path, host: str | None = None) -> Iterator[EtcdServer]:
    """Start a one-member etcd on loopback and yield once ``/health`` is true."""
    binary = require_binary(etcd_path(), "etcd", "go", "kube")
    host = host or loopback_host()
    client_port, peer_port = free_ports(2, host)
    data_dir = base / "etcd-data"
    client_url = f"http://{host}:{client_port}"
    peer_url = f"http://{host}:{peer_port}"
    argv = [
        binary,
        "--name=meshfed",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=meshfed={peer_url}",
        "--initial-cluster-state=new",
        "--unsafe-no-fsync",
        "--log-level=warn",
        "--quota-backend-bytes=1073741824",
    ]
    proc = PeerProcess(f"etcd@{host}:{client_port}", argv, base / "etcd.log").start()
    etcd = EtcdServer(host, client_port, peer_port, data_dir, proc.log_path, proc)

    def healthy() -> bool:
        status, body = get(f"{client_url}/health", timeout=2.0)
        return status == 200 and b'"health":"true"' in body

    try:
        proc.wait_until(healthy, "for etcd /health", ETCD_TIMEOUT)
        yield etcd
    finally:
        proc.stop()


def _write_kubeconfig(path: Path, url: str, pki: KubePki, token: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "meshfed-test",
                "cluster": {"server": url, "certificate-authority": str(pki.ca_cert)},
            }
        ],
        "users": [
            {
                "name": "admin",
                "user": {
                    "client-certificate": str(pki.admin_cert),
                    "client-key": str(pki.admin_key),
                },
            },
            {"name": "admin-token", "user": {"token": token}},
        ],
        "contexts": [
            {"name": "meshfed-test", "context": {"cluster": "meshfed-test", "user": "admin"}},
            {
                "name": "meshfed-test-token",
                "context": {"cluster": "meshfed-test", "user": "admin-token"},
            },
        ],
        "current-context": "meshfed-test",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


@contextmanager
def start_kube_apiserver(base: Path, host: str | None = None) -> Iterator[KubeAPIServer]:
    """Start etcd and kube-apiserver; yield once ``/readyz`` answers ok to the admin token."""
    binary = require_binary(kube_apiserver_path(), "kube-apiserver", "go", "kube")
    host = host or loopback_host()
    base.mkdir(parents=True, exist_ok=True)
    pki = make_pki(base / "pki", host)
    token = secrets.token_hex(16)
    token_file = base / "tokens.csv"
    token_file.write_text(f'{token},meshfed-admin,meshfed-admin-uid,"system:masters"\n')
    token_file.chmod(0o600)
    with ExitStack() as stack:
        etcd = stack.enter_context(start_etcd(base, host))
        (port,) = free_ports(1, host)
        argv = [
            binary,
            f"--etcd-servers={etcd.client_url}",
            f"--bind-address={host}",
            f"--advertise-address={host}",
            f"--secure-port={port}",
            f"--cert-dir={base / 'cert-dir'}",
            f"--tls-cert-file={pki.server_cert}",
            f"--tls-private-key-file={pki.server_key}",
            f"--client-ca-file={pki.ca_cert}",
            f"--token-auth-file={token_file}",
            f"--service-account-issuer={'https://kubernetes.default.svc.cluster.local'}",
            f"--service-account-key-file={pki.sa_public}",
            f"--service-account-signing-key-file={pki.sa_private}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--authorization-mode=RBAC",
            "--disable-admission-plugins=ServiceAccount",
            "--allow-privileged=true",
            "--profiling=false",
            "--enable-priority-and-fairness=false",
            "--endpoint-reconciler-type=none",
            "--v=1",
        ]
        proc = PeerProcess(f"kube-apiserver@{host}:{port}", argv, base / "kube-apiserver.log")
        proc.start()
        stack.callback(proc.stop)
        kubeconfig = base / "kubeconfig"
        _write_kubeconfig(kubeconfig, f"https://{host}:{port}", pki, token)
        server = KubeAPIServer(host, port, token, kubeconfig, pki, etcd, proc.log_path, proc)
        context = ssl.create_default_context(cafile=str(pki.ca_cert))

        def ready() -> bool:
            status, _ = get(
                f"{server.url}/readyz",
                headers={"Authorization": f"Bearer {token}"},
                timeout=3.0,
                context=context,
            )
            return status == 200

        proc.wait_until(ready, "for /readyz (with the admin token)", APISERVER_TIMEOUT, 0.5)
        # The bootstrap controller creates the default namespace shortly after /readyz.
        proc.wait_until(
            lambda: (
                get(
                    f"{server.url}/api/v1/namespaces/default",
                    headers={"Authorization": f"Bearer {token}"},
                    context=context,
                )[0]
                == 200
            ),
            "for namespace default",
            60.0,
        )
        yield server
