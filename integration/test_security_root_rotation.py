"""Root rotation under continuous traffic: real ``meshfed ca serve``, real Envoys, no failure.

A real CA process (self-signed root in a state folder, 12 s leaves, re-reading its storage every
half second) and two in-process node agents writing two Envoys' secret files; the client
sidecar originates mutual TLS to the server sidecar (STRICT) and opens a new upstream connection
every few requests, so handshakes keep happening with whatever is current. While a bounded stream of
requests runs, the operator's ``meshfed ca rotate-root`` (a separate process, the CA is not
restarted) walks the mesh through add -> switch -> retire. Asserted:

- every request answered 200;
- both Envoys' ``ROOTCA`` (read back from Envoy's config dump) held both roots during the
  overlap, and only the new root after retirement; the published ``root-cert.pem`` (the hub's
  trust bundle) likewise;
- after the switch the certificate the server sidecar presents in a real handshake chains to
  the new root (and before the rotation to the old one);
- a client whose certificate comes from the old root gets an answer during the overlap and is
  refused after retirement; a client that trusts only the old root refuses the server;
- ``meshfed ca status`` reports the phases.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from integration.peers.envoy import start_envoy
from integration.peers.http import get
from integration.peers.ports import free_ports, loopback_host
from integration.security_helpers import (
    MESHFED,
    TRUST_DOMAIN,
    BackgroundLoop,
    ca_process,
    client_sidecar,
    create_token,
    envoy_secret_pems,
    http_echo,
    json_line,
    limit_requests_per_connection,
    server_sidecar,
)
from meshfed.nodeagent import keys
from meshfed.nodeagent.agent import AgentConfig, NodeAgent
from meshfed.registry.model import spiffe_id
from meshfed.security import identity, mtls

pytestmark = pytest.mark.timeout(240)

LEAF_TTL = dt.timedelta(seconds=12)  # also the CA's --max-ttl
ADD = SWITCH = dt.timedelta(seconds=16)  # max TTL + 4 s margin each
REQUEST_INTERVAL = 0.02  # bounded load: at most ~50 requests per second
SETTLE = 10.0  # after retirement: one bundle poll (1 s) and one renewal (<= 7.2 s) at most


def _serials(pem: bytes) -> set[int]:
    return {c.serial_number for c in identity.load_pem_chain(pem)} if pem else set()


def _issued_by(leaf: x509.Certificate, root: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(root)
    except Exception:
        return False
    return True


def _presented_leaf(host: str, port: int) -> x509.Certificate:
    """The certificate the server sidecar presents in a real TLS handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # we only look at what is presented
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der
    return x509.load_der_x509_certificate(der)


def _mtls_get(host: str, port: int, cert_file: Path, key_file: Path, ca_pem: bytes) -> bytes:
    """A raw HTTP request over mutual TLS with our own certificate and trust."""
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    ctx.check_hostname = False
    ctx.load_cert_chain(cert_file, key_file)
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return tls.recv(4096)


def _refused(call: Any) -> str:
    """'' when ``call`` got an HTTP answer; the reason otherwise (TLS 1.3 reports a refused
    client certificate on the first read, as an alert or a closed connection)."""
    try:
        answer = call()
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as exc:
        return repr(exc)
    return "" if answer.startswith(b"HTTP/") else f"no HTTP answer: {answer!r}"


def _ca_cli(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [*MESHFED, "ca", *args, "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


def test_root_rotation_under_traffic_without_a_failed_request(tmp_path: Path) -> None:
    state = tmp_path / "ca"
    ca_host = loopback_host()
    ttl = f"{int(LEAF_TTL.total_seconds())}s"
    extra = ["--max-ttl", ttl, "--default-ttl", ttl, "--reload-interval", "0.5s"]
    loop = BackgroundLoop()
    agents: list[NodeAgent] = []
    server_host, client_host = loopback_host(), loopback_host()
    try:
        with (
            ca_process(state, ca_host, free_ports(3, ca_host), tmp_path / "ca.log", extra) as ca,
            http_echo(server_host) as backend,
        ):
            ports = json_line(ca, "bootstrap")
            published = state / "root-cert.pem"
            old_root = x509.load_pem_x509_certificate(published.read_bytes())

            def agent(name: str, account: str) -> NodeAgent:
                root = published.read_bytes()
                config = AgentConfig(
                    ca_address=ports["bootstrap"],
                    ca_renewal_address=ports["renewal"],
                    ca_root_pem=root,
                    trust_domain=TRUST_DOMAIN,
                    namespace="shop",
                    service_account=account,
                    secrets_dir=tmp_path / f"agent-{name}",
                    join_token=create_token(state, "shop", account),
                    ttl=LEAF_TTL,
                    bundle_refresh=1.0,
                    ca_timeout=5.0,
                )
                started = NodeAgent(config)
                loop.run(started.start())
                agents.append(started)
                return started

            server_agent = agent("server", "reviews")
            client_agent = agent("client", "productpage")
            s_admin, s_port = free_ports(2, server_host)
            c_admin, c_port = free_ports(2, client_host)
            server_boot = server_sidecar(
                "reviews",
                server_host,
                s_admin,
                s_port,
                backend,
                server_agent.config.secrets_dir,
                mtls.Mode.STRICT,
            )
            client_boot = limit_requests_per_connection(
                client_sidecar(
                    "productpage",
                    client_host,
                    c_admin,
                    c_port,
                    (server_host, s_port),
                    client_agent.config.secrets_dir,
                    mtls.upstream_transport_socket([spiffe_id(TRUST_DOMAIN, "shop", "reviews")]),
                ),
                5,
            )
            with (
                start_envoy(tmp_path / "server", server_boot) as server,
                start_envoy(tmp_path / "client", client_boot) as client,
            ):
                _run_rotation(
                    tmp_path,
                    state,
                    old_root,
                    server,
                    client,
                    (server_host, s_port),
                    f"http://{client_host}:{c_port}/",
                    [server_agent, client_agent],
                )
    finally:
        for each in reversed(agents):
            loop.run(each.stop())
        loop.close()


def _run_rotation(
    tmp_path: Path,
    state: Path,
    old_root: x509.Certificate,
    server: Any,
    client: Any,
    server_addr: tuple[str, int],
    url: str,
    agents: list[NodeAgent],
) -> None:
    published = state / "root-cert.pem"
    results: list[int] = []
    failures: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            try:
                status, body = get(url, timeout=5)
                results.append(status)
                if status != 200:
                    failures.append(f"{status}: {body[:200]!r}")
            except Exception as exc:  # any error is a failed request
                failures.append(repr(exc))
            time.sleep(REQUEST_INTERVAL)

    # Before: one root everywhere, the server presents a leaf of it.
    assert _serials(envoy_secret_pems(server.admin_url, "ROOTCA")) == {old_root.serial_number}
    assert _issued_by(_presented_leaf(*server_addr), old_root)
    # A client with a (long-lived, hand-made) certificate of the old root, for later.
    old_key = serialization.load_pem_private_key((state / "ca-key.pem").read_bytes(), None)
    leaf_key = keys.generate_key()
    old_client = identity.issue_svid(
        identity.load_csr(keys.make_csr(leaf_key)),
        spiffe_id(TRUST_DOMAIN, "shop", "legacy"),
        old_root,
        old_key,  # type: ignore[arg-type]
        dt.timedelta(minutes=10),
        dt.datetime.now(dt.UTC),
    )
    cert_file, key_file = tmp_path / "old-client.pem", tmp_path / "old-client-key.pem"
    cert_file.write_bytes(old_client.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(keys.key_pem(leaf_key))
    old_pem = old_root.public_bytes(serialization.Encoding.PEM)

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    samples: list[dict[str, Any]] = []
    try:
        time.sleep(2)
        ttl = f"{int(LEAF_TTL.total_seconds())}s"
        started = _ca_cli(
            "rotate-root", "--state-dir", str(state), "--trust-domain", TRUST_DOMAIN,
            "--max-ttl", ttl, "--add-phase", f"{int(ADD.total_seconds())}s",
            "--switch-phase", f"{int(SWITCH.total_seconds())}s",
        )  # fmt: skip
        rotation = started["rotation"]
        assert started["phase"] == "add"
        assert rotation["old_root"]["serial"] == f"{old_root.serial_number:x}"
        new_serial = int(rotation["new_root"]["serial"], 16)
        switch_at = dt.datetime.fromisoformat(rotation["switch_at"])
        retire_at = dt.datetime.fromisoformat(rotation["retire_at"])
        both = {old_root.serial_number, new_serial}

        overlap_checked = False
        deadline = retire_at + dt.timedelta(seconds=SETTLE)
        while dt.datetime.now(dt.UTC) < deadline and not failures:
            now = dt.datetime.now(dt.UTC)
            sample = {
                "t": now,
                "server_roots": _serials(envoy_secret_pems(server.admin_url, "ROOTCA")),
                "client_roots": _serials(envoy_secret_pems(client.admin_url, "ROOTCA")),
                "published": _serials(published.read_bytes()),
                "presented": _presented_leaf(*server_addr),
            }
            samples.append(sample)
            in_switch = switch_at + dt.timedelta(seconds=1) < now < retire_at
            if in_switch and not overlap_checked and sample["server_roots"] == both:
                # Overlap: the server trusts both roots, so an old-root client still gets in,
                # and a server leaf from the new root is accepted by a both-roots client.
                answer = _mtls_get(*server_addr, cert_file, key_file, old_pem + b"".join(
                    c.public_bytes(serialization.Encoding.PEM)
                    for c in identity.load_pem_chain(published.read_bytes())
                ))  # fmt: skip
                assert answer.startswith(b"HTTP/1.1 200"), answer
                overlap_checked = True
            time.sleep(0.25)
        status = _ca_cli("status", "--state-dir", str(state), "--trust-domain", TRUST_DOMAIN)
    finally:
        stop.set()
        worker.join(15)

    assert not failures, f"{len(failures)} failed of {len(results)}: {failures[:5]}"
    assert len(results) > 500, len(results)  # the load ran throughout (~40 s at <= 50/s)
    assert overlap_checked, "never saw the server Envoy trusting both roots in the switch phase"

    def during(start: dt.datetime, end: dt.datetime) -> list[dict[str, Any]]:
        return [s for s in samples if start <= s["t"] < end]

    add_phase = during(switch_at - dt.timedelta(seconds=6), switch_at)
    switch_phase = during(switch_at, retire_at)
    assert add_phase and switch_phase
    # By the end of the add phase every Envoy and the hub's bundle trust both roots ...
    for sample in add_phase[-3:]:
        assert sample["server_roots"] == sample["client_roots"] == both, sample
        assert sample["published"] == both, sample
    # ... and the old root still signs: the server presents an old-root leaf.
    assert all(_issued_by(s["presented"], old_root) for s in add_phase)
    # During the switch phase both roots stay trusted; the presented leaf moves to the new root.
    for sample in switch_phase:
        assert sample["server_roots"] == sample["client_roots"] == both, sample
    new_root = next(
        c for c in identity.load_pem_chain(published.read_bytes()) if c.serial_number == new_serial
    )
    switched = [s for s in switch_phase if _issued_by(s["presented"], new_root)]
    assert switched, "the server never presented a leaf of the new root during the switch"
    assert _issued_by(switch_phase[-1]["presented"], new_root)  # all old leaves replaced
    # After retirement: only the new root, in both Envoys and in the published bundle.
    last = samples[-1]
    assert last["t"] >= retire_at + dt.timedelta(seconds=SETTLE - 1)
    assert last["server_roots"] == last["client_roots"] == last["published"] == {new_serial}
    assert _issued_by(last["presented"], new_root)
    assert status["phase"] == "retired"
    assert [r["serial"] for r in status["roots"]] == [f"{new_serial:x}"]

    # A client holding the old root's certificate is refused now (it was served in the
    # overlap), and a client trusting only the old root refuses the server.
    both_pem = old_pem + published.read_bytes()
    reason = _refused(lambda: _mtls_get(*server_addr, cert_file, key_file, both_pem))
    assert reason, "the server still accepts a client certificate of the retired root"
    with pytest.raises(ssl.SSLCertVerificationError):
        _mtls_get(*server_addr, cert_file, key_file, old_pem)
    for each in agents:
        assert each.rotator.rotations >= 5, each.serials  # several renewals spanned it
    print(
        json.dumps(
            {
                "requests": len(results),
                "failed": len(failures),
                "add_seconds": ADD.total_seconds(),
                "switch_seconds": SWITCH.total_seconds(),
                "leaf_ttl_seconds": LEAF_TTL.total_seconds(),
                "renewals": [a.rotator.rotations for a in agents],
                "bundle_updates_between_renewals": [a.bundle_updates for a in agents],
                "samples": len(samples),
            }
        )
    )


def test_rotation_kept_in_a_kubernetes_secret_is_shared_by_replicas(kube_apiserver: Any) -> None:
    """The Secret backend against a real kube-apiserver: a rotation stored by one CA is seen by
    another replica, a concurrent second start is refused, and a retired one is folded in."""
    import secrets as pysecrets

    from kubernetes import client

    from meshfed.security.ca import (
        CertificateAuthority,
        RotationInProgress,
        complete_root_rotation,
        start_root_rotation,
    )
    from meshfed.security.rotation import Phase
    from meshfed.security.storage import KubernetesSecretStorage

    core = client.CoreV1Api(kube_apiserver.api_client())
    ns = f"rot-{pysecrets.token_hex(3)}"
    hour = dt.timedelta(hours=1)
    try:
        storage = KubernetesSecretStorage(core, ns)
        first = CertificateAuthority.load_or_create(storage, TRUST_DOMAIN)
        old_root = first.signer_cert
        past = dt.datetime.now(dt.UTC) - 90 * dt.timedelta(minutes=1)  # in the switch phase
        record = start_root_rotation(storage, TRUST_DOMAIN, hour, hour, now=past)
        with pytest.raises(RotationInProgress):
            start_root_rotation(KubernetesSecretStorage(core, ns), TRUST_DOMAIN, hour, hour)
        secret = core.read_namespaced_secret("meshfed-ca", ns)
        assert {"rotation.json", "next-ca-key.pem"} <= set(secret.data)

        assert first.reload() is True  # the running CA picks it up
        replica = CertificateAuthority.load_or_create(
            KubernetesSecretStorage(core, ns), TRUST_DOMAIN
        )
        new_root = x509.load_pem_x509_certificate(record.new_cert_pem)
        for ca in (first, replica):
            assert ca.phase() is Phase.SWITCH
            assert ca.roots == [old_root, new_root]
            assert ca.signer_cert == new_root
            assert ca.phase(past + 2 * hour) is Phase.RETIRED
            assert ca.state(past + 2 * hour).roots == (new_root,)

        # Once retired, the rotation is folded into the four stored keys.
        assert complete_root_rotation(storage, TRUST_DOMAIN, now=past + 2 * hour) is True
        secret = core.read_namespaced_secret("meshfed-ca", ns)
        assert set(secret.data) == {"ca-key.pem", "ca-cert.pem", "root-cert.pem", "cert-chain.pem"}
        folded = CertificateAuthority.load_or_create(
            KubernetesSecretStorage(core, ns), TRUST_DOMAIN
        )
        assert folded.phase() is None and folded.roots == [new_root]
    finally:
        core.delete_namespace(ns)
