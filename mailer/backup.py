"""`mailer backup` and `mailer restore`: a consistent copy of the database while the
service runs, and putting one back.

Invariants, and why they hold:

- A backup is one consistent snapshot, never a file copied while it changes. SQLite: the
  online backup API copies every page in one step (`pages=-1`), inside one read
  transaction on the source; in WAL mode that transaction sees the database as of one
  commit while the service goes on writing. PostgreSQL: pg_dump reads everything in one
  repeatable-read transaction.
- Nothing half-written is ever at FILE: the copy is written to a temporary name beside it
  (same folder, so same file system), fsync'd, renamed into place, and the folder fsync'd.
  On any failure the temporary file is removed and FILE is as it was. An existing FILE is
  replaced only with `force`.
- The source database is never written by a backup: SQLite is opened read-only
  (`mode=ro`), pg_dump only reads.
- A restore changes nothing of the target until the input has been checked: it is a
  regular file, an SQLite database (or a pg_dump archive) holding mailer's schema, at a
  revision this mailer knows (not one made by a newer mailer). A target holding any
  subscriber, article or digest is replaced only with `force`.
- SQLite is restored with the backup API INTO the configured database, not by renaming a
  file over it: a running service (or any other process) holding the database open would
  keep its open file after a rename, go on writing to the old inode, and its -wal and -shm
  files would then belong to the wrong database. The backup API writes through SQLite's
  own locks in one write transaction, so every connection sees either the old database or
  the restored one, whole. PostgreSQL: pg_restore --single-transaction, for the same reason.
- After the copy the restored database is migrated to this mailer's newest revision.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mailer.db import BUSY_TIMEOUT_MS, HEAD_REVISION, Database, known_revisions
from mailer.errors import InputError, MailerError, database_where, sqlite_file

SQLITE_MAGIC = b"SQLite format 3\x00"
# pg_dump's custom format starts with these bytes.
PGDUMP_MAGIC = b"PGDMP"
# Rows in any of these make a database "not empty": restoring over it needs --force.
CONTENT_TABLES = ("subscribers", "articles", "digests")
PG_CLIENT_MISSING = (
    "{tool} not found on the PATH: install the PostgreSQL client tools "
    "(Debian/Ubuntu: apt install postgresql-client), of the server's major version or newer"
)


class BackupError(MailerError):
    """A backup or restore that cannot be done; nothing of its target was changed."""


def backup(url: str, target: Path, force: bool = False) -> str:
    """Write a consistent copy of the database at `url` to `target`; what was done, one line."""
    if target.is_dir():
        raise BackupError(f"{target} is a folder")
    if target.exists() and not force:
        raise BackupError(f"{target} exists: give --force to replace it")
    if not target.parent.is_dir():
        raise BackupError(f"no such folder {target.parent}")
    file = sqlite_file(url)
    with _temporary_beside(target) as tmp:
        if file is not None:
            _sqlite_backup(file, tmp)
        elif url.startswith("postgresql"):
            _pg_dump(url, tmp)
        else:
            raise BackupError(f"database {database_where(url)}: backups support SQLite and PostgreSQL")
        _fsync(tmp)
        os.replace(tmp, target)
        _fsync(target.parent)
    return f"backup of {database_where(url)} written to {target} ({target.stat().st_size} bytes)"


def restore(url: str, source: Path, force: bool = False) -> str:
    """Replace the database at `url` with the backup in `source`; what was done, one line."""
    if not source.exists():
        raise InputError(f"{source}: no such file")
    if not source.is_file():
        raise InputError(f"{source}: not a file")
    file = sqlite_file(url)
    if file is not None:
        revision = _check_sqlite_backup(source)
    elif url.startswith("postgresql"):
        revision = _check_pg_backup(source)
    else:
        raise BackupError(f"database {database_where(url)}: backups support SQLite and PostgreSQL")
    db = Database(url)
    try:
        if not force:
            held = _content(db)
            if held:
                raise BackupError(
                    f"database {database_where(url)} is not empty ({held}): give --force to replace it"
                )
    finally:
        db.dispose()
    if file is not None:
        _sqlite_restore(source, file)
    else:
        _pg_restore(url, source)
    db = Database(url)
    try:
        db.migrate()
    finally:
        db.dispose()
    upgraded = f", migrated from revision {revision} to {HEAD_REVISION}" if revision != HEAD_REVISION else ""
    return f"database {database_where(url)} restored from {source}{upgraded}"


# --- SQLite ------------------------------------------------------------------------------


def _sqlite_backup(file: Path, tmp: Path) -> None:
    if not file.is_file():
        raise BackupError(f"database {file}: no such file")
    src = _open_read_only(file)
    try:
        dst = sqlite3.connect(tmp, isolation_level=None)
        try:
            src.backup(dst)  # pages=-1: every page in one step, one snapshot
            # One self-contained file: no -wal beside it to lose when it is copied away.
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()


def _open_read_only(file: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(
        f"{file.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
    )
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return conn


def _check_sqlite_backup(source: Path) -> str:
    """The backup's schema revision, once it is known to be a whole mailer SQLite database."""
    with source.open("rb") as f:
        if f.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
            raise InputError(f"{source}: not an SQLite database (a backup made by `mailer backup`?)")
    try:
        conn = _open_read_only(source)
        try:
            if conn.execute("PRAGMA quick_check").fetchone() != ("ok",):
                raise InputError(f"{source}: the SQLite database is damaged (PRAGMA quick_check failed)")
            has_version = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
            ).fetchone()
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone() if has_version else None
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise InputError(f"{source}: not a readable SQLite database ({exc})") from None
    if row is None:
        raise InputError(f"{source}: an SQLite database, but not mailer's (no schema revision in it)")
    return _known(source, str(row[0]))


def _sqlite_restore(source: Path, file: Path) -> None:
    src = _open_read_only(source)
    try:
        dst = sqlite3.connect(file, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            dst.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            src.backup(dst)  # one write transaction on the target: old or new, whole
            dst.execute("PRAGMA journal_mode=WAL")  # as mailer.db opens it
        finally:
            dst.close()
    finally:
        src.close()


# --- PostgreSQL --------------------------------------------------------------------------


def _pg_tool(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        raise BackupError(PG_CLIENT_MISSING.format(tool=tool))
    return found


def _pg_target(url: str) -> tuple[str, dict[str, str]]:
    """libpq's URI for `url` without its password, and the environment that carries the
    password (PGPASSWORD: never on a command line another user's `ps` shows)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    env = dict(os.environ)
    if parsed.password is not None:
        env["PGPASSWORD"] = str(parsed.password)
    plain = parsed._replace(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise BackupError(f"{Path(args[0]).name}: {lines[0] if lines else f'exit status {proc.returncode}'}")
    return proc


def _pg_dump(url: str, tmp: Path) -> None:
    tool = _pg_tool("pg_dump")
    conninfo, env = _pg_target(url)
    _run([tool, "--format=custom", f"--file={tmp}", f"--dbname={conninfo}"], env)


def _check_pg_backup(source: Path) -> str:
    with source.open("rb") as f:
        if f.read(len(PGDUMP_MAGIC)) != PGDUMP_MAGIC:
            raise InputError(f"{source}: not a pg_dump archive (a backup made by `mailer backup`?)")
    tool = _pg_tool("pg_restore")
    # The archive's alembic_version rows, as the COPY block pg_restore would run.
    listing = _run([tool, "--data-only", "--table=alembic_version", "--file=-", str(source)]).stdout
    found = re.search(r"^COPY \S*alembic_version \(version_num\) FROM stdin;\n([^\n\\]+)\n", listing, re.M)
    if found is None:
        raise InputError(f"{source}: a pg_dump archive, but not of mailer's database (no schema revision)")
    return _known(source, found.group(1).strip())


def _pg_restore(url: str, source: Path) -> None:
    tool = _pg_tool("pg_restore")
    conninfo, env = _pg_target(url)
    _run(
        [
            tool,
            "--clean",
            "--if-exists",
            "--single-transaction",  # and so --exit-on-error: the old database, or the new whole
            "--no-owner",
            "--no-privileges",
            f"--dbname={conninfo}",
            str(source),
        ],
        env,
    )


# --- shared ------------------------------------------------------------------------------


def _known(source: Path, revision: str) -> str:
    if revision not in known_revisions():
        raise InputError(
            f"{source}: its schema is revision {revision}, made by a newer mailer "
            f"(this one knows up to {HEAD_REVISION}): restore it with that mailer"
        )
    return revision


def _content(db: Database) -> str:
    """What the database holds of subscribers, articles and digests ("" when none)."""
    from sqlalchemy import inspect, text

    with db.engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
        counts = {
            table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()  # fixed names
            for table in CONTENT_TABLES
            if table in tables
        }
    return ", ".join(f"{n} {table}" for table, n in counts.items() if n)


@contextlib.contextmanager
def _temporary_beside(target: Path) -> Iterator[Path]:
    """A new temporary file name in target's folder, removed unless renamed away."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)  # empty, mode 0600: SQLite takes it as an empty database, pg_dump overwrites it
    tmp = Path(name)
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
