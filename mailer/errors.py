"""User-facing errors: each carries one line that names the problem and where it is.

A database failure becomes such a line too (`database_problem`): `database <where>: <reason>`.
It has to be worked out here because the failure arrives in two shapes that must read the
same: SQLAlchemy's wrappers (the ORM) and the driver's own DB-API exceptions (the delivery
workers use raw connections). Any exception of a PEP 249 driver is recognised by its module
(`apilevel` and `Error`), so sqlite3 today and psycopg later need no code here.

SQLite says "unable to open database file" for a read-only disk, a folder without write
permission, a missing folder and a folder where the file should be alike. For the errors
that mean "cannot open or write", `diagnose_path` asks the file system what stands in the
way, checking what SQLite needs: every folder up to the file exists and is a folder, the
file's folder is writable (SQLite creates its -wal, -shm and journal files there), and the
file itself is readable and writable. It only reports what it can see; when everything
looks fine it says nothing, and the driver's own words are shown alone.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError


class MailerError(Exception):
    """An error the CLI prints as one line (no traceback) before exiting with status 1."""


class ConfigError(MailerError):
    """The configuration is invalid; the service refuses to start."""


class InputError(MailerError):
    """Bad user input: an article file, a CSV row, a command-line value."""


class NotFound(MailerError):
    """A referenced article, subscriber or digest does not exist."""


# SQLite result codes (Python 3.11+: `sqlite_errorname`) that mean the file cannot be opened
# or written; the extended codes (SQLITE_READONLY_DIRECTORY, SQLITE_IOERR_WRITE...) share them.
_CANNOT_WRITE = ("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM", "SQLITE_IOERR")
_CANNOT_WRITE_WORDS = ("unable to open", "readonly", "read-only", "disk i/o error", "permission")
# access(2) checks the real user unless told otherwise; the files are opened as the effective one.
_EFFECTIVE = os.access in os.supports_effective_ids


def is_dbapi_error(exc: BaseException) -> bool:
    """An exception raised by a PEP 249 database driver (sqlite3, psycopg...)."""
    module = sys.modules.get(type(exc).__module__.split(".")[0])
    driver_error = getattr(module, "Error", None)
    return (
        getattr(module, "apilevel", None) == "2.0"
        and isinstance(driver_error, type)
        and isinstance(exc, driver_error)
    )


def sqlite_file(url: str) -> Path | None:
    """The database file of an SQLite URL (None for other databases and in-memory ones)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def database_where(url: str) -> str:
    """How a database is named in an error: its file, or its URL without the password."""
    file = sqlite_file(url)
    if file is not None:
        return str(file)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparsable URL)"


def database_problem(exc: BaseException, url: str | None) -> str:
    """`database <where>: <reason>` for a SQLAlchemy or DB-API error, on one line."""
    driver_exc = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = str(driver_exc).strip().splitlines()
    reason = lines[0] if lines else type(driver_exc).__name__
    if url is None:
        return f"database: {reason}"
    file = sqlite_file(url)
    if file is not None and _cannot_write(driver_exc, reason):
        cause = diagnose_path(file)
        if cause:
            reason = f"{cause} ({reason})"
    return f"database {database_where(url)}: {reason}"


def database_os_problem(exc: OSError, url: str) -> str | None:
    """`database <file>: <reason>` for an OSError about the SQLite file or one of its folders
    (met while creating the folder), else None."""
    file = sqlite_file(url)
    name = exc.filename
    if file is None or not isinstance(name, (str, bytes)) or not file.is_relative_to(os.fsdecode(name)):
        return None
    return f"database {file}: {diagnose_path(file) or f'{exc.filename}: {exc.strerror or exc}'}"


def _cannot_write(exc: BaseException, reason: str) -> bool:
    name = getattr(exc, "sqlite_errorname", None)
    if isinstance(name, str):
        return name.startswith(_CANNOT_WRITE)
    return any(word in reason.lower() for word in _CANNOT_WRITE_WORDS)


def diagnose_path(file: Path) -> str | None:
    """What stops this process from opening `file` as a writable SQLite database, or None."""
    try:
        if file.is_dir():
            return "it is a folder, not a database file"
        folder, missing = file.parent, False
        while True:  # up to the nearest folder that exists
            try:
                mode = os.stat(folder).st_mode
                break
            except (FileNotFoundError, NotADirectoryError):
                folder, missing = folder.parent, True
            except PermissionError:
                return f"permission denied: {folder} cannot be reached by this user"
        if not stat.S_ISDIR(mode):
            return f"{folder} is not a folder"
        blocked = _not_writable(folder, os.W_OK | os.X_OK)
        if missing:
            created = f", and it cannot be created: {blocked}" if blocked else ""
            return f"no such folder {file.parent}{created}"
        if blocked:
            return blocked
        if file.exists():
            return _not_writable(file, os.R_OK | os.W_OK)
    except OSError:
        return None  # the question itself failed: leave the driver's words alone
    return None


def _not_writable(path: Path, mode: int) -> str | None:
    if os.access(path, mode, effective_ids=_EFFECTIVE):
        return None
    if hasattr(os, "statvfs") and os.statvfs(path).f_flag & os.ST_RDONLY:
        return f"read-only file system at {path}"
    return f"permission denied: {path} is not writable by this user"
