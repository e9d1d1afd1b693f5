"""`make run` (`mailer serve --demo`) and `init --demo`: demo readers go only into a new
database, never back into one where people left; the command they print runs as typed.
Real `.venv/bin/mailer` processes, as `make run` starts them."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from sqlalchemy import create_engine

from tests.conftest import ROOT, write_config

MAILER = ROOT / ".venv" / "bin" / "mailer"
# A shell whose PATH does not have the virtualenv on it, as after `make run`.
PLAIN_PATH = os.pathsep.join(
    p for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep) if ".venv" not in p
)


def new_database(database_url: str) -> str:
    """`database_url` with no schema in it yet, as a database an admin has just created:
    demo data only goes into such a one, and the PostgreSQL database the fixture gives is
    a copy of a migrated template."""
    if database_url.startswith("postgresql"):
        engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql("DROP SCHEMA public CASCADE")
            conn.exec_driver_sql("CREATE SCHEMA public")
        engine.dispose()
    return database_url


def _run(args: list[str], cwd: Path = ROOT, shell: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": PLAIN_PATH}
    return subprocess.run(
        args if not shell else ["sh", "-c", args[0]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _mailer(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Relative, as the Makefile's `$(BIN)/mailer serve --demo` runs it.
    proc = _run([str(MAILER.relative_to(ROOT)), "--config", str(config), *args])
    assert proc.returncode == 0, proc.stderr
    return proc


def _people(config: Path) -> dict[str, str]:
    rows = json.loads(_mailer(config, "subscribers", "list", "--json").stdout)
    return {r["email"]: r["status"] for r in rows}


def test_demo_readers_are_added_to_a_new_database_once(tmp_path, database_url):
    config = write_config(tmp_path, database_url=new_database(database_url))
    first = _mailer(config, "init", "--demo").stdout
    assert "demo subscribers: 3 added" in first
    everyone = ("ada@example.com", "grace@example.com", "zoe@example.com")
    assert _people(config) == dict.fromkeys(everyone, "active")

    _mailer(config, "subscribers", "forget", "ada@example.com", "--yes")
    _mailer(config, "subscribers", "remove", "grace@example.com")
    again = _mailer(config, "init", "--demo").stdout
    assert "demo data: not loaded" in again
    assert _people(config) == {"grace@example.com": "unsubscribed", "zoe@example.com": "active"}


def test_a_database_everyone_left_gets_no_demo_readers_again(tmp_path, database_url):
    config = write_config(tmp_path, database_url=new_database(database_url))
    _mailer(config, "init", "--demo")
    for email in ("ada@example.com", "grace@example.com", "zoe@example.com"):
        _mailer(config, "subscribers", "forget", email, "--yes")
    _mailer(config, "articles", "remove", "1")
    assert _people(config) == {}
    assert "demo data: not loaded" in _mailer(config, "init", "--demo").stdout
    assert _people(config) == {}
    articles = json.loads(_mailer(config, "articles", "list", "--json").stdout)
    assert 1 not in [a["id"] for a in articles]  # a removed sample article stays removed


def test_a_database_made_without_demo_data_does_not_get_it_later(tmp_path, database_url):
    config = write_config(tmp_path, database_url=new_database(database_url))
    _mailer(config, "init")
    assert "demo data: not loaded" in _mailer(config, "init", "--demo").stdout
    assert _people(config) == {}


def _printed_command(out: str) -> str:
    match = re.search(r"^commands:\s+(.+?) --help", out, re.MULTILINE)
    assert match, out
    return match.group(1)


def test_the_printed_command_runs_in_a_shell_without_the_virtualenv_on_path(tmp_path, database_url):
    config = write_config(tmp_path, database_url=new_database(database_url))
    command = _printed_command(_mailer(config, "init", "--demo").stdout)
    assert command == ".venv/bin/mailer"
    ran = _run([f"{command} --config {config} subscribers list"], shell=True)
    assert ran.returncode == 0, ran.stderr
    assert "ada@example.com" in ran.stdout


def test_the_printed_command_is_absolute_outside_the_checkout(tmp_path, database_url):
    config = write_config(tmp_path, database_url=new_database(database_url))
    proc = _run([str(MAILER), "--config", str(config), "init", "--demo"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    command = _printed_command(proc.stdout)
    assert command == str(MAILER)
    ran = _run([f"{command} --config {config} subscribers list"], cwd=tmp_path, shell=True)
    assert ran.returncode == 0 and "ada@example.com" in ran.stdout, ran.stderr
