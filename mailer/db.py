"""Engine, sessions and migrations.

SQLite is shared by the service and the CLI at the same time, so: WAL (readers never
block the writer), a busy timeout, and BEGIN IMMEDIATE for every writing transaction so a
writer waits for the lock up front instead of failing half-way on an upgrade.

Reads that must never wait (the web server's pages while a long import or another process
holds the write lock) run read-only: inside `Database.read_only()` every transaction this
thread begins is a deferred BEGIN on a connection with `PRAGMA query_only`. In WAL a
deferred transaction that only reads takes no lock a writer holds, so it never waits for
one; query_only turns an accidental write into an error instead of a lock wait. The flag
is a ContextVar (per thread and per context), so a read-only block can call domain
functions that open their own `session()` without them waiting either.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import NoSuchModuleError, SAWarning
from sqlalchemy.orm import Session, sessionmaker

from mailer.errors import ConfigError, database_where

BUSY_TIMEOUT_MS = 30_000
SQLITE_CACHE_KIB = 512  # page cache per SQLite connection (see _on_connect)
# The newest Alembic revision (tests/test_db.py checks it against migrations/). Knowing it
# lets a command skip importing Alembic (~11 MB, ~0.2 s) when the schema is current.
HEAD_REVISION = "0011"
# True inside Database.read_only(): transactions begun here are deferred and read-only.
_READ_ONLY: ContextVar[bool] = ContextVar("mailer_db_read_only", default=False)


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        # PostgreSQL (psycopg 3): room for every worker's connection as for SQLite below,
        # and a ping before reuse, so a server restart costs a reconnect, not an error.
        try:
            return create_engine(url, pool_size=5, max_overflow=100, pool_pre_ping=True)
        except (ImportError, NoSuchModuleError) as exc:
            raise ConfigError(
                f"database.url {parsed.render_as_string()!r}: no driver for it ({exc}); "
                "for PostgreSQL use postgresql+psycopg://"
            ) from None
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    # Each SMTP connection's worker keeps a database connection for the whole run, beside
    # the web server's threads: room for smtp.connections up to its maximum of 64.
    engine = create_engine(
        url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000}, pool_size=5, max_overflow=100
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take over transaction control from pysqlite so we can issue BEGIN IMMEDIATE.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        # NORMAL in WAL mode survives a process crash (not a power cut) and is much faster.
        cur.execute("PRAGMA synchronous=NORMAL")
        # SQLite's default page cache is 2 MB a connection, and a sending process holds one
        # per SMTP connection plus the pool's: at 100,000 readers the caches alone grew its
        # peak memory by ~8 MB (bench/throughput.py). Pages missed are read from the OS's
        # cache, which costs a full scan of 100,000 deliveries a few milliseconds.
        cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        reading = _READ_ONLY.get()
        # query_only belongs to the pooled connection: switch it only when this transaction
        # needs the other setting, so writers pay nothing extra.
        if conn.info.get("query_only", False) != reading:
            conn.exec_driver_sql(f"PRAGMA query_only={'ON' if reading else 'OFF'}")
            conn.info["query_only"] = reading
        conn.exec_driver_sql("BEGIN" if reading else "BEGIN IMMEDIATE")

    return engine


class Database:
    """The engine and a session factory for one database URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A short transaction: committed on success, rolled back on any error."""
        with self.sessions() as s, s.begin():
            yield s

    @contextmanager
    def read_only(self) -> Iterator[None]:
        """Every transaction begun in this block (this thread's) reads only and never waits
        for a writer; a write inside it fails at once."""
        token = _READ_ONLY.set(True)
        try:
            yield
        finally:
            _READ_ONLY.reset(token)

    @contextmanager
    def reader(self) -> Iterator[Session]:
        """A read-only transaction (see read_only): a consistent snapshot, never waiting."""
        with self.read_only(), self.sessions() as s, s.begin():
            yield s

    def revision(self) -> str | None:
        with self.engine.connect() as conn:
            try:
                return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            except Exception:  # no table yet: a new database
                return None

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (idempotent)."""
        current = self.revision()
        if current == HEAD_REVISION:
            return
        if current is not None and current not in known_revisions():
            # Another mailer's schema: upgrading would fail, and writing to it could lose data.
            raise ConfigError(
                f"database {database_where(self.url)}: its schema is revision {current}, made by a "
                f"newer mailer (this one knows up to {HEAD_REVISION}): upgrade mailer to use it"
            )
        from alembic import command

        cfg = alembic_config(self.url)
        sqlite = self.engine.dialect.name == "sqlite"
        with self.engine.connect() as conn:
            # The driver's own connection: through SQLAlchemy the pragma would open a
            # transaction first (autobegin), inside which SQLite ignores it.
            raw = conn.connection.driver_connection
            if sqlite:
                # Batch migrations rebuild tables (copy, drop, rename): with foreign keys on,
                # dropping the old `subscribers` would cascade to every delivery. The pragma
                # only works outside a transaction, so it is set before the migration's.
                raw.execute("PRAGMA foreign_keys=OFF")
            try:
                with conn.begin(), warnings.catch_warnings():
                    # SQLite's table rebuild cannot reflect the lower(email) index; 0008
                    # puts it back itself, so SQLAlchemy's warning is noise on stderr.
                    warnings.filterwarnings("ignore", "Skipped unsupported reflection", SAWarning)
                    cfg.attributes["connection"] = conn
                    command.upgrade(cfg, "head")
                    if sqlite and conn.exec_driver_sql("PRAGMA foreign_key_check").first():
                        raise ConfigError(
                            f"database {database_where(self.url)}: migration broke a foreign key"
                        )
            finally:
                if sqlite:
                    raw.execute("PRAGMA foreign_keys=ON")

    def dispose(self) -> None:
        self.engine.dispose()


def serialise(s: Session, name: str) -> None:
    """Make the rest of this transaction exclusive among all processes that ask for the
    same `name`. SQLite needs nothing: every writing transaction already holds its single
    write lock (BEGIN IMMEDIATE). PostgreSQL takes a transaction-level advisory lock,
    released at commit or rollback, so a check-then-insert cannot race."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": f"mailer:{name}"})


def known_revisions() -> set[str]:
    """The revisions this mailer's migrations know (their files are named after them)."""
    folder = resources.files("mailer.migrations.versions")
    return {entry.name.split("_", 1)[0] for entry in folder.iterdir() if entry.name[:4].isdigit()}


def alembic_config(url: str) -> Any:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    location = resources.files("mailer.migrations")
    cfg.set_main_option("script_location", str(location))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg
