"""``meshfed ca token create|list`` and the CLI's parsing, through ``meshfed.cli.main``."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import pytest

from meshfed.cli import main
from meshfed.cli_security import parse_duration
from meshfed.security.tokens import JoinTokenStore


def test_durations() -> None:
    assert parse_duration("20s") == dt.timedelta(seconds=20)
    assert parse_duration("90") == dt.timedelta(seconds=90)
    assert parse_duration("15m") == dt.timedelta(minutes=15)
    assert parse_duration("1h") == dt.timedelta(hours=1)
    assert parse_duration("7d") == dt.timedelta(days=7)
    assert parse_duration("500ms") == dt.timedelta(milliseconds=500)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration("soon")


def test_token_create_prints_a_token_the_ca_accepts_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = str(tmp_path / "ca")
    assert main(["ca", "token", "create", "--state-dir", state, "-n", "shop", "-s", "cart"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("mfjt.")
    grant = JoinTokenStore(Path(state) / "tokens.json").redeem(token)
    assert (grant.namespace, grant.service_account) == ("shop", "cart")
    assert main(["ca", "token", "list", "--state-dir", state, "-o", "json"]) == 0
    listing = capsys.readouterr().out
    records = json.loads(listing)
    assert [(r["namespace"], r["service_account"]) for r in records] == [("shop", "cart")]
    assert token.split(".")[2] not in listing
    assert main(["ca", "token", "list", "--state-dir", state]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[0] == "ID" and "NAMESPACE" in table[0], table
    assert len(table) == 2 and "shop" in table[1].split() and token.split(".")[2] not in table[1]
    assert table[0].split()[-1] == "USED" and table[1].split()[-1].startswith("20")  # redeemed
    assert main(["ca", "token", "create", "--state-dir", state, "-n", "shop", "-s", "web"]) == 0
    capsys.readouterr()
    assert main(["ca", "token", "list", "--state-dir", state]) == 0
    (unused,) = [r.split() for r in capsys.readouterr().out.splitlines() if " web " in r]
    assert unused[-1] == "-", unused  # never redeemed: no time, and not Python's None


def test_nodeagent_refuses_to_start_without_a_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MESHFED_JOIN_TOKEN", raising=False)
    root = tmp_path / "root.pem"
    root.write_text("")
    with pytest.raises(SystemExit, match="no credential"):
        main(["nodeagent", "--ca-root", str(root), "-n", "shop", "-s", "cart"])


def test_token_create_makes_its_state_folder_0700_whatever_the_umask(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import os
    import stat

    state = tmp_path / "fresh" / "deeper" / "ca"
    old = os.umask(0)
    try:
        assert main(["ca", "token", "create", "--state-dir", str(state), "-n", "a", "-s", "b"]) == 0
    finally:
        os.umask(old)
    assert capsys.readouterr().out.startswith("mfjt.")
    for folder in (state, state.parent, state.parent.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for name in ("tokens.json", "tokens.json.lock"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name

    # A state folder that exists but is open to others (made under umask 000) is tightened.
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    assert main(["ca", "token", "create", "--state-dir", str(loose), "-n", "a", "-s", "b"]) == 0
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700


@pytest.mark.parametrize("namespace", ["a/b", "", "..", "shop ns", "ns\x00", "é"])
def test_token_create_refuses_an_identity_the_ca_could_not_issue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], namespace: str
) -> None:
    state = str(tmp_path / "ca")
    assert main(["ca", "token", "create", "--state-dir", state, "-n", namespace, "-s", "b"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: namespace")
    assert "Traceback" not in captured.err


def test_hub_service_account_names_the_hub_service_dns_names() -> None:
    from meshfed.cli_security import _serving_names

    def names(account: str | None, dns: list[str]) -> dict[str, tuple[str, ...]]:
        args = argparse.Namespace(
            hub_service_account=account, hub_dns_name=dns, trust_domain="example.org"
        )
        return _serving_names(args)

    assert names("mesh/meshfed-hub", []) == {
        "spiffe://example.org/ns/mesh/sa/meshfed-hub": (
            "meshfed-hub.mesh.svc",
            "meshfed-hub.mesh.svc.cluster.local",
        )
    }
    assert names("mesh/hub", ["hub.example"]) == {
        "spiffe://example.org/ns/mesh/sa/hub": ("hub.example",)
    }
    assert names(None, []) == {}
    for bad in ("mesh", "mesh/", "/hub", "a/b/c"):
        with pytest.raises(SystemExit, match="NAMESPACE/NAME"):
            names(bad, [])
    with pytest.raises(SystemExit, match="needs --hub-service-account"):
        names(None, ["hub.example"])


def test_ca_serve_help_names_the_defaults_docs_security_states(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["ca", "serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, default in [
        ("--max-ttl", "7d"),
        ("--default-ttl", "1h"),
        ("--reload-interval", "10s"),
        ("--listen", "127.0.0.1:15012"),
        ("--renew-listen", "127.0.0.1:15013"),
        ("--monitoring", "127.0.0.1:15016"),
    ]:
        after = text.split(f"{flag} {flag.lstrip('-').upper().replace('-', '_')} ", 1)[1]
        assert f"(default {default})" in after.split(" --", 1)[0] or (
            f"default {default})" in after.split(" --", 1)[0]
        ), (flag, after[:120])


def test_token_list_of_a_missing_state_dir_says_so_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "typo" / "ca"
    assert main(["ca", "token", "list", "--state-dir", str(state)]) == 0
    assert f"no join tokens in {state}" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()
    assert main(["ca", "token", "list", "--state-dir", str(state), "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
