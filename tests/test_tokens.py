"""Unsubscribe tokens: HMAC over the subscriber and their nonce, keyed by a kept secret."""

from __future__ import annotations

import stat

from mailer.tokens import Tokens, load_secret


def test_the_embedded_default_generates_one_owner_only_key_and_keeps_it(tmp_path):
    first = load_secret(tmp_path)
    key = tmp_path / "secret.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert load_secret(tmp_path) == first and len(first) == 64


def test_the_environment_key_wins_and_no_file_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("MAILER_SECRET_KEY", "from-the-environment")
    assert load_secret(tmp_path) == b"from-the-environment"
    assert not (tmp_path / "secret.key").exists()


def test_a_token_verifies_only_for_its_subscriber_nonce_and_key():
    tokens = Tokens(b"k" * 32)
    token = tokens.make(7, "nonce-a")
    assert Tokens.subscriber_id(token) == 7
    assert tokens.verify(token, 7, "nonce-a")
    assert not tokens.verify(token, 7, "nonce-b")  # a new nonce revokes old links
    assert not tokens.verify(token, 8, "nonce-a")
    assert not Tokens(b"other key").verify(token, 7, "nonce-a")
    for bad in (token[:-1], token + "x", "7." + "A" * 43, "0." + token.split(".")[1], "", "7"):
        assert Tokens.subscriber_id(bad) is None or not tokens.verify(bad, 7, "nonce-a")
