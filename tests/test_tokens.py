"""Tokens and the key that signs them: HMAC unsubscribe tokens over the subscriber and their
nonce, short-lived resubscribe tokens, and a key file that real processes starting at once
all read whole and the same."""

from __future__ import annotations

import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from freezegun import freeze_time

from mailer.errors import ConfigError
from mailer.models import utcnow
from mailer.tokens import RESUBSCRIBE_MAX_AGE, Tokens, load_secret
from tests.conftest import ROOT

PROCESSES = 6
ROUNDS = 60
# Each process imports first, then calls load_secret(folder) for every folder it is sent.
KEY_READER = """
import sys
from mailer.errors import ConfigError
from mailer.tokens import load_secret
from pathlib import Path
print("ready", flush=True)
for line in sys.stdin:
    try:
        print(load_secret(Path(line.strip())).decode(), flush=True)
    except ConfigError as exc:
        print("ERROR " + str(exc), flush=True)
"""


def test_the_embedded_default_generates_one_owner_only_key_and_keeps_it(tmp_path):
    first = load_secret(tmp_path)
    key = tmp_path / "secret.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert load_secret(tmp_path) == first and len(first) == 64
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]  # no temporary file left


def test_the_environment_key_wins_and_no_file_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("MAILER_SECRET_KEY", "from-the-environment-0123456789")
    assert load_secret(tmp_path) == b"from-the-environment-0123456789"
    assert not (tmp_path / "secret.key").exists()


def test_processes_starting_at_once_all_read_the_same_whole_key(tmp_path: Path) -> None:
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", KEY_READER],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    try:
        assert [r.stdout.readline() for r in readers] == ["ready\n"] * PROCESSES  # type: ignore[union-attr]
        for n in range(ROUNDS):
            folder = tmp_path / f"var{n}"
            for r in readers:  # one line each, as close together as we can
                r.stdin.write(f"{folder}\n")  # type: ignore[union-attr]
                r.stdin.flush()  # type: ignore[union-attr]
            keys = [r.stdout.readline().strip() for r in readers]  # type: ignore[union-attr]
            assert len(set(keys)) == 1 and len(keys[0]) == 64, (n, keys)
            assert keys[0] == (folder / "secret.key").read_text()
    finally:
        for r in readers:
            r.stdin.close()  # type: ignore[union-attr]
            r.wait(timeout=10)


@pytest.mark.parametrize("content", ["", "\n", "short-key"], ids=["empty", "blank", "short"])
def test_an_empty_or_short_key_file_is_refused_naming_the_file(tmp_path: Path, content: str) -> None:
    (tmp_path / "secret.key").write_text(content)

    with pytest.raises(ConfigError) as err:
        load_secret(tmp_path)

    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'secret.key'}: the secret key is ")
    assert "at least 24 characters" in message


def test_a_short_environment_key_is_refused_naming_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("MAILER_SECRET_KEY", "x" * 23)

    with pytest.raises(ConfigError, match=r"^MAILER_SECRET_KEY: the secret key is too short"):
        load_secret(tmp_path)
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


def test_one_readers_mac_under_another_readers_id_is_refused():
    # Even with equal nonces, the MAC binds the id: a MAC over the nonce alone would pass.
    tokens = Tokens(b"k" * 32)
    mac = tokens.make(7, "same-nonce").split(".")[1]

    assert not tokens.verify(f"8.{mac}", 8, "same-nonce")
    assert tokens.make(8, "same-nonce") != f"8.{mac}"


def test_a_resubscribe_token_is_bound_to_its_reader_their_nonce_and_the_hour():
    tokens = Tokens(b"k" * 32)
    fresh = tokens.resubscribe(7, "nonce-a")
    assert Tokens.resubscribe_id(fresh) == 7
    assert tokens.verify_resubscribe(fresh, 7, "nonce-a")
    assert not tokens.verify_resubscribe(fresh, 7, "nonce-b")
    assert not tokens.verify_resubscribe("8" + fresh[1:], 8, "nonce-a")
    assert not Tokens(b"o" * 32).verify_resubscribe(fresh, 7, "nonce-a")
    # The unsubscribe token in every mail is no resubscribe token.
    assert not tokens.verify_resubscribe(tokens.make(7, "nonce-a"), 7, "nonce-a")
    with freeze_time(utcnow() - timedelta(seconds=RESUBSCRIBE_MAX_AGE + 60)):
        old = tokens.resubscribe(7, "nonce-a")
    assert not tokens.verify_resubscribe(old, 7, "nonce-a")
