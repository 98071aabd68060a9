"""Root rotation: the phase arithmetic (pure), and the CA following a stored rotation.

The CA tests pass ``now`` explicitly, so a rotation of days is walked through in milliseconds.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from meshfed.cli import main
from meshfed.nodeagent.keys import generate_key, make_csr
from meshfed.security import identity
from meshfed.security.ca import (
    CertificateAuthority,
    RotationInProgress,
    complete_root_rotation,
    start_root_rotation,
)
from meshfed.security.rotation import (
    Phase,
    Schedule,
    check_durations,
    default_durations,
    default_margin,
)
from meshfed.security.storage import FileStorage

TD = "example.org"
ID = "spiffe://example.org/ns/shop/sa/cart"
T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
H = dt.timedelta(hours=1)


# -- pure phase computation -------------------------------------------------------------------
def test_phases_follow_the_clock_at_exact_boundaries() -> None:
    s = Schedule(T0, add=2 * H, switch=3 * H)
    assert s.switch_at == T0 + 2 * H and s.retire_at == T0 + 5 * H
    assert s.phase(T0 - H) is Phase.ADD  # a clock behind the start: still only adding
    assert s.phase(T0) is Phase.ADD
    assert s.phase(T0 + 2 * H - dt.timedelta(microseconds=1)) is Phase.ADD
    assert s.phase(T0 + 2 * H) is Phase.SWITCH
    assert s.phase(T0 + 5 * H - dt.timedelta(microseconds=1)) is Phase.SWITCH
    assert s.phase(T0 + 5 * H) is Phase.RETIRED
    assert s.phase(T0 + 1000 * H) is Phase.RETIRED
    assert s.next_change(T0) == T0 + 2 * H
    assert s.next_change(T0 + 3 * H) == T0 + 5 * H
    assert s.next_change(T0 + 5 * H) is None


def test_schedule_refuses_naive_times_and_empty_phases() -> None:
    with pytest.raises(ValueError, match="timezone"):
        Schedule(dt.datetime(2030, 1, 1), H, H)
    with pytest.raises(ValueError, match="positive"):
        Schedule(T0, dt.timedelta(0), H)


def test_default_durations_cover_the_longest_leaf_plus_a_margin() -> None:
    week = dt.timedelta(days=7)
    assert default_margin(week) == week / 10
    assert default_margin(dt.timedelta(seconds=20)) == dt.timedelta(minutes=1)  # the minimum
    add, switch = default_durations(week)
    assert add == switch == week + week / 10
    assert default_durations(H, margin=dt.timedelta(0)) == (H, H)
    assert check_durations(add, switch, week) == []
    problems = check_durations(H, 2 * H, 2 * H)
    assert len(problems) == 1 and "add phase" in problems[0]
    assert len(check_durations(H, H, 2 * H)) == 2


# -- the CA following a stored rotation -------------------------------------------------------
def _leaf(ca: CertificateAuthority, now: dt.datetime, ttl: dt.timedelta = H) -> x509.Certificate:
    return ca.sign(identity.load_csr(make_csr(generate_key())), ID, ttl, now=now).certificate


def _issued_by(leaf: x509.Certificate, root: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(root)
    except Exception:
        return False
    return True


def test_a_rotation_walks_add_switch_retire_in_every_replica(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "ca")
    ca = CertificateAuthority.load_or_create(storage, TD, max_ttl=H)
    old_root = ca.signer_cert
    start = dt.datetime.now(dt.UTC)
    before = _leaf(ca, start)  # an agent's leaf from before the rotation

    record = start_root_rotation(storage, TD, add=2 * H, switch=2 * H, now=start)
    new_root = x509.load_pem_x509_certificate(record.new_cert_pem)
    assert new_root != old_root
    assert ca.phase() is None  # not picked up until the running CA re-reads its storage
    assert ca.reload() is True
    assert ca.reload() is False  # nothing new the second time
    replica = CertificateAuthority.load_or_create(FileStorage(tmp_path / "ca"), TD, max_ttl=H)

    for each in (ca, replica):  # a running CA and a (re)started one agree at every moment
        add = start + dt.timedelta(minutes=30)
        assert each.phase(add) is Phase.ADD
        assert each.state(add).roots == (old_root, new_root)
        assert _issued_by(_leaf(each, add), old_root)  # the old root still signs
        assert each.verify_issued([before], now=add) == ID

        switch = start + 2 * H + dt.timedelta(minutes=10)
        assert each.phase(switch) is Phase.SWITCH
        assert each.state(switch).roots == (old_root, new_root)
        switched = _leaf(each, switch)
        assert _issued_by(switched, new_root)
        # Both generations renew during the switch phase.
        last_old = _leaf(each, start + 2 * H - dt.timedelta(minutes=10))
        assert _issued_by(last_old, old_root)
        assert each.verify_issued([last_old], now=switch) == ID
        assert each.verify_issued([switched], now=switch) == ID

        retired = start + 4 * H
        assert each.phase(retired) is Phase.RETIRED
        assert each.state(retired).roots == (new_root,)
        assert each.state(retired).root_pem == identity.chain_pem([new_root])
        assert _issued_by(_leaf(each, retired), new_root)
        with pytest.raises(ValueError, match="not issued by this CA"):
            # A (hypothetical, long-lived) leaf of the old root is no longer accepted.
            each.verify_issued(
                [_leaf_from(old_root_ca(tmp_path), retired - dt.timedelta(minutes=1))], retired
            )

    status = replica.status(start + 3 * H)
    assert status["phase"] == "switch"
    assert [r["serial"] for r in status["roots"]] == [  # type: ignore[index]
        f"{old_root.serial_number:x}",
        f"{new_root.serial_number:x}",
    ]


def old_root_ca(tmp_path: Path) -> CertificateAuthority:
    """The pre-rotation root as a plain CA (what the stored key still is until folded)."""
    return CertificateAuthority.from_material(FileStorage(tmp_path / "ca").load(), TD)  # type: ignore[arg-type]


def _leaf_from(ca: CertificateAuthority, now: dt.datetime) -> x509.Certificate:
    return _leaf(ca, now, dt.timedelta(days=1))


def test_a_second_rotation_is_refused_until_the_first_retires_then_folds_it(
    tmp_path: Path,
) -> None:
    storage = FileStorage(tmp_path / "ca")
    CertificateAuthority.load_or_create(storage, TD)
    first = start_root_rotation(storage, TD, add=H, switch=H, now=T0)
    with pytest.raises(RotationInProgress, match="phase switch"):
        start_root_rotation(storage, TD, add=H, switch=H, now=T0 + 90 * dt.timedelta(minutes=1))
    assert complete_root_rotation(storage, TD, now=T0 + H) is False  # not retired yet

    second = start_root_rotation(storage, TD, add=H, switch=H, now=T0 + 2 * H)
    # The first rotation's new root is now the stored root, and the old one of the second.
    assert second.old_cert_pem == first.new_cert_pem
    material = storage.load()
    assert material is not None and material.cert_pem == first.new_cert_pem
    assert material.root_pem == first.new_cert_pem
    assert (tmp_path / "ca" / "next-ca-key.pem").read_bytes() == second.new_key_pem


def test_a_half_folded_store_still_loads_after_retirement(tmp_path: Path) -> None:
    """complete_rotation writes file by file; a CA starting in between must still load."""
    storage = FileStorage(tmp_path / "ca")
    CertificateAuthority.load_or_create(storage, TD)
    past = dt.datetime.now(dt.UTC) - 3 * H
    record = start_root_rotation(storage, TD, add=H, switch=H, now=past)  # retired an hour ago
    (tmp_path / "ca" / "ca-cert.pem").write_bytes(record.new_cert_pem)  # key not yet written
    ca = CertificateAuthority.load_or_create(storage, TD)
    assert ca.roots == [x509.load_pem_x509_certificate(record.new_cert_pem)]


def test_reload_keeps_the_current_material_when_the_store_is_broken(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path / "ca")
    ca = CertificateAuthority.load_or_create(storage, TD)
    root = ca.root_pem
    (tmp_path / "ca" / "rotation.json").write_text("{not json")
    (tmp_path / "ca" / "next-ca-key.pem").write_text("junk")
    assert ca.reload() is False
    assert ca.root_pem == root and ca.phase() is None


def test_rotate_root_and_status_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = str(tmp_path / "ca")
    CertificateAuthority.load_or_create(FileStorage(state), TD)
    common = ["--state-dir", state, "--trust-domain", TD]
    # Phases shorter than the longest leaf lifetime would break traffic: refused.
    assert main(["ca", "rotate-root", *common, "--max-ttl", "1h", "--add-phase", "10m"]) == 2
    assert "add phase" in capsys.readouterr().err
    assert main(["ca", "rotate-root", *common, "--max-ttl", "1h", "-o", "json"]) == 0
    started = json.loads(capsys.readouterr().out)
    assert started["phase"] == "add" and len(started["roots"]) == 2
    # Derived from --max-ttl: 1 h plus the default margin (10 %, at least a minute).
    assert started["rotation"]["add_seconds"] == started["rotation"]["switch_seconds"] == 3960
    assert main(["ca", "rotate-root", *common, "--max-ttl", "1h"]) == 1
    assert "in progress" in capsys.readouterr().err
    assert main(["ca", "status", *common, "-o", "json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["phase"] == "add"
    assert status["signer"] == status["rotation"]["old_root"]
    assert main(["ca", "status", *common]) == 0  # a table by default, as istioctl prints
    table = capsys.readouterr().out
    assert "phase: add" in table
    rows = [line.split()[0] for line in table.splitlines() if line.startswith(("signer", "root"))]
    assert rows == ["signer", "root", "root"], table
    assert main(["ca", "status", *common, "-o", "yaml"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == status


def test_rotate_root_refuses_bring_your_own_material(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="bring-your-own"):
        main(["ca", "rotate-root", "--cacerts", str(tmp_path), "--trust-domain", TD])


def test_a_published_bundle_in_the_state_folder_does_not_confuse_the_store(
    tmp_path: Path,
) -> None:
    """``meshfed ca serve`` publishes the bundle as root-cert.pem in the state folder, the file
    the store also reads: after retirement it holds only the new root."""
    storage = FileStorage(tmp_path / "ca")
    CertificateAuthority.load_or_create(storage, TD)
    past = dt.datetime.now(dt.UTC) - 3 * H
    record = start_root_rotation(storage, TD, add=H, switch=H, now=past)
    (tmp_path / "ca" / "root-cert.pem").write_bytes(record.new_cert_pem)
    ca = CertificateAuthority.load_or_create(storage, TD)
    assert ca.phase() is Phase.RETIRED
    assert ca.status()["phase"] == "retired"
