"""Instances on one database agree on the secret key and the schedule: the first one
stores them, one that disagrees refuses to start with one line naming the setting, and
`mailer settings adopt` makes a deliberate change the stored one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, write_config

KEY_A = "a" * 40
KEY_B = "b" * 40


def mailer(config, *args: str, key: str = KEY_A) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailer", "--config", str(config), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MAILER_SECRET_KEY": key},
    )


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    return proc.stderr.strip()


@pytest.fixture
def first(tmp_path, smtp_server, database_url):
    """A database whose first instance has stored its settings (a send with no digest)."""
    for host in ("a", "b"):  # each instance's own folder: config, var/
        (tmp_path / host).mkdir()
    config = write_config(tmp_path / "a", smtp_server.port, database_url)
    result = mailer(config, "digest", "send", "--now")
    assert "no digest" in result.stderr, result.stderr  # nothing to send, but it got that far
    return database_url


def test_an_instance_with_another_secret_key_refuses_to_send(tmp_path, smtp_server, first):
    other = write_config(tmp_path / "b", smtp_server.port, first)
    line = one_line(mailer(other, "digest", "send", "--now", key=KEY_B))
    assert line.startswith("error: the secret key (MAILER_SECRET_KEY or var/secret.key) differs from")
    assert KEY_A not in line and KEY_B not in line


def test_an_instance_with_another_schedule_refuses_to_serve_naming_the_setting(tmp_path, smtp_server, first):
    other = write_config(tmp_path / "b", smtp_server.port, first, schedule={"cron": "0 9 * * tue"})
    line = one_line(mailer(other, "serve"))
    assert line == (
        "error: schedule.cron differs from the one the other instances on this database use "
        "('0 9 * * tue' here, '0 8 * * mon' there): make them the same, or run "
        "`mailer settings adopt` to make this config's the one for all"
    )


def test_settings_adopt_makes_a_deliberate_change_the_one_for_all(tmp_path, smtp_server, first):
    other = write_config(tmp_path / "b", smtp_server.port, first, schedule={"timezone": "Europe/Paris"})
    adopted = mailer(other, "settings", "adopt")
    assert adopted.stdout == "now stored for all instances: schedule.timezone\n", adopted
    assert "no digest" in mailer(other, "digest", "send", "--now").stderr
    old = write_config(tmp_path / "a", smtp_server.port, first)
    assert "schedule.timezone differs" in one_line(mailer(old, "digest", "send", "--now"))
