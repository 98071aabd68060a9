"""Join tokens: bound to one identity, single use, expiring, stored hashed."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest

from meshfed.security.tokens import JoinTokenStore, TokenError


def test_token_grants_its_identity_once(tmp_path: Path) -> None:
    store = JoinTokenStore(tmp_path / "tokens.json")
    token = store.create("shop", "cart")
    grant = store.redeem(token)
    assert (grant.namespace, grant.service_account) == ("shop", "cart")
    with pytest.raises(TokenError, match="already used"):
        store.redeem(token)


def test_token_is_stored_hashed_in_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    token = JoinTokenStore(path).create("shop", "cart")
    secret = token.split(".")[2]
    assert secret not in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_token_bound_to_a_cannot_get_b_and_is_not_burnt(tmp_path: Path) -> None:
    store = JoinTokenStore(tmp_path / "tokens.json")
    token = store.create("shop", "cart")
    with pytest.raises(TokenError, match="bound to ns/shop/sa/cart"):
        store.redeem(token, want=("shop", "payments"))
    assert store.redeem(token, want=("shop", "cart")).service_account == "cart"


def test_expired_wrong_and_malformed_tokens_are_refused(tmp_path: Path) -> None:
    store = JoinTokenStore(tmp_path / "tokens.json")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    old = store.create("shop", "cart", dt.timedelta(minutes=5), now=past)
    with pytest.raises(TokenError, match="expired"):
        store.redeem(old)
    good = store.create("shop", "cart")
    forged = good.rsplit(".", 1)[0] + ".AAAAsecretguess"
    with pytest.raises(TokenError, match="wrong secret"):
        store.redeem(forged)
    for bad in ("", "nonsense", "mfjt.", "mfjt.abc"):
        with pytest.raises(TokenError):
            store.redeem(bad)


def test_tokens_created_by_another_process_are_seen(tmp_path: Path) -> None:
    # The CLI and the CA are separate processes sharing the file; two stores model that.
    cli, ca = JoinTokenStore(tmp_path / "t.json"), JoinTokenStore(tmp_path / "t.json")
    token = cli.create("shop", "cart")
    assert ca.redeem(token).namespace == "shop"
    assert [r["used"] is not None for r in cli.list()] == [True]
