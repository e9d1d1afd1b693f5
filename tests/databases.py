"""The databases the tests run on: an SQLite file, and a throw-away PostgreSQL database.

Every test that takes the `database_url` fixture (directly, or through `config_path`,
`cfg`, `db`, `seeded`) runs twice: on SQLite and on PostgreSQL. The server comes from
MAILER_TEST_POSTGRES_URL (any database on it; default: the local server's `postgres`).
Each PostgreSQL test gets its own database, copied from a template migrated once per run
(CREATE DATABASE … TEMPLATE is a file copy: far quicker than migrating each time), and
dropped afterwards. Names carry the pytest process's pid, so runs side by side never
meet, and databases left by a run that was killed are dropped by the next one.

When the server cannot be reached, the PostgreSQL half is skipped with the reason, except
under CI (CI=true), where that is a failure: CI must never pass having skipped it.
"""

from __future__ import annotations

import itertools
import os
from functools import cache

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

# Read at import: the tests' autouse fixture clears every MAILER_* variable.
POSTGRES_URL = os.environ.get(
    "MAILER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
PREFIX = f"mailer_t{os.getpid()}_"
_names = itertools.count()


def _connect(database: str = "") -> psycopg.Connection:
    url = make_url(POSTGRES_URL)
    if database:
        url = url.set(database=database)
    return psycopg.connect(
        url.set(drivername="postgresql").render_as_string(hide_password=False),
        autocommit=True,
        connect_timeout=5,
    )


def url_of(database: str) -> str:
    return make_url(POSTGRES_URL).set(database=database).render_as_string(hide_password=False)


@cache
def unreachable() -> str:
    """Why the PostgreSQL server cannot be used ("" when it can)."""
    try:
        with _connect() as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL at {make_url(POSTGRES_URL).render_as_string()} unreachable: {exc}".strip()
    return ""


@cache
def template() -> str:
    """A database migrated to the newest revision, to copy for each test."""
    from mailer.db import Database

    _drop_leftovers()
    name = f"{PREFIX}template"
    with _connect() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    db = Database(url_of(name))
    db.migrate()
    db.dispose()
    return name


def create() -> str:
    """A new database (a copy of the migrated template); its name."""
    name = f"{PREFIX}{next(_names)}"
    with _connect() as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template()))
        )
    return name


def drop(name: str) -> None:
    with _connect() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def drop_template() -> None:
    if template.cache_info().currsize:
        drop(template())


def _drop_leftovers() -> None:
    """Databases of earlier test runs whose process is gone (killed before cleaning up)."""
    with _connect() as conn:
        names = [
            row[0] for row in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'mailer_t%'")
        ]
    for name in names:
        pid = name.removeprefix("mailer_t").split("_", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            drop(name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
