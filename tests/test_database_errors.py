"""A database that cannot be used is one line naming it and the problem, exit status 1,
no traceback: an unreachable server, a refused login, a missing database, no driver, a
schema made by a newer mailer (on SQLite and on PostgreSQL)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import text

from mailer.db import Database
from tests import databases
from tests.conftest import ROOT, write_config
from tests.smtp_server import free_port


def mailer(config, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailer", "--config", str(config), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    return proc.stderr.strip()


def _postgres(database: str, user: str = "postgres", port: int = 0) -> str:
    url = databases.url_of(database).replace("postgres@", f"{user}@", 1)
    return url.replace(":5432/", f":{port}/") if port else url


@pytest.fixture
def reachable():
    if databases.unreachable():
        pytest.skip(databases.unreachable())


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param(
            lambda: _postgres("postgres", port=free_port()),
            'connection failed: connection to server at "127.0.0.1", port {port} failed: Connection refused',
            id="unreachable",
        ),
        pytest.param(
            lambda: _postgres("postgres", user="nobody:secret"),
            'role "nobody" does not exist',
            id="unknown-role",
        ),
        pytest.param(
            lambda: _postgres("mailer_no_such_database"),
            'database "mailer_no_such_database" does not exist',
            id="missing-database",
        ),
    ],
)
def test_a_postgresql_server_that_cannot_be_used_is_one_line_naming_it(tmp_path, reachable, url, expected):
    database = url()
    line = one_line(mailer(write_config(tmp_path, database_url=database), "subscribers", "list"))
    assert line.startswith("error: database postgresql+psycopg://"), line
    assert "secret" not in line  # the password is never printed
    port = database.rsplit(":", 1)[1].split("/")[0]
    assert expected.format(port=port) in line


def test_a_database_url_without_a_driver_is_one_line(tmp_path):
    line = one_line(mailer(write_config(tmp_path, database_url="mysql://x@127.0.0.1/y"), "init"))
    assert line.startswith("error: database.url 'mysql://x@127.0.0.1/y': no driver for it")


def test_a_schema_made_by_a_newer_mailer_is_refused_with_one_line(tmp_path, database_url):
    config = write_config(tmp_path, database_url=database_url)
    assert mailer(config, "init").returncode == 0
    db = Database(database_url)
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0999'"))
    db.dispose()
    line = one_line(mailer(config, "subscribers", "list"))
    assert "its schema is revision 0999, made by a newer mailer" in line
    assert "upgrade mailer to use it" in line


def test_the_service_waits_for_a_database_that_is_not_there_yet(tmp_path, reachable):
    """`mailer serve` outlives a database that is down at start: one line per attempt,
    then it serves as soon as the database is there."""
    import os
    import signal

    from psycopg import sql

    name = f"{databases.PREFIX}late"
    config = write_config(tmp_path, database_url=databases.url_of(name), web={"port": free_port()})
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailer", "--config", str(config), "serve"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        first = proc.stderr.readline()
        assert f'database "{name}" does not exist; trying again in 1 s' in first, first
        with databases._connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        assert "mailer is running" in proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
        databases.drop(name)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
