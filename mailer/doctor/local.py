"""The checks that need no network: the config, the database, the secret key.

Each only looks: the database is opened but neither created nor migrated (`mailer init`
does that), and a missing secret key is not generated (`mailer serve` does that on its
first start), so running the doctor leaves no trace behind.
"""

from __future__ import annotations

import os
from pathlib import Path

from mailer.config import Config, load_config
from mailer.doctor import Check, error, ok, warning
from mailer.errors import ConfigError, MailerError


def config(config_path: str | None) -> tuple[Config | None, Check]:
    """The config, and the line about it (None and an error line when it does not load)."""
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        return None, error("config", str(exc), "correct it; every other check needs the config")
    where = str(cfg.path) if cfg.path is not None else "no config file: the built-in defaults"
    return cfg, ok("config", f"{where} loaded")


def database(cfg: Config) -> Check:
    """Reachable, and its schema at the head revision this mailer knows."""
    from sqlalchemy.exc import SQLAlchemyError

    from mailer.db import HEAD_REVISION, Database, known_revisions
    from mailer.errors import database_problem, database_where, sqlite_file

    url = cfg.database_url
    where = database_where(url)
    file = sqlite_file(url)
    if file is not None and not file.is_file():
        return error("database", f"{where}: no such database file", "create it with `mailer init`")
    db = None
    try:
        db = Database(url)
        revision = db.revision()
    except (SQLAlchemyError, MailerError, OSError) as exc:
        detail = str(exc) if isinstance(exc, MailerError) else database_problem(exc, url)
        return error("database", detail, "check database.url, and that the server runs and lets this user in")
    finally:
        if db is not None:
            db.dispose()
    if revision == HEAD_REVISION:
        return ok("database", f"{where}: reachable, schema at revision {revision} (head)")
    if revision is None:
        return error("database", f"{where}: reachable, but it has no schema", "create it with `mailer init`")
    if revision in known_revisions():
        return error(
            "database",
            f"{where}: schema at revision {revision}, head is {HEAD_REVISION}",
            "upgrade it with `mailer init` (back it up first: `mailer backup FILE`)",
        )
    return error(
        "database",
        f"{where}: schema at revision {revision}, of a newer mailer (this one knows up to {HEAD_REVISION})",
        "upgrade mailer",
    )


def secret_key(cfg: Config) -> Check:
    """MAILER_SECRET_KEY, else var/secret.key: there and long enough (mailer.tokens)."""
    from mailer.tokens import load_secret

    path = cfg.var_dir / "secret.key"
    from_env = bool(os.environ.get("MAILER_SECRET_KEY", ""))
    if not from_env and not path.exists():
        return warning(
            "secret key",
            f"{path} does not exist yet",
            "`mailer serve` creates it on its first start; several instances on one database "
            "need the same one (copy the file, or set MAILER_SECRET_KEY on each)",
        )
    try:
        key = load_secret(cfg.var_dir)  # reads only: the file exists, or the variable is set
    except ConfigError as exc:
        return error("secret key", str(exc), _secret_fix(from_env, path))
    source = "MAILER_SECRET_KEY" if from_env else str(path)
    mode = "" if from_env else _loose_mode(path)
    if mode:
        return warning("secret key", f"{source}: {len(key)} characters, {mode}", f"chmod 600 {path}")
    return ok("secret key", f"{source}: {len(key)} characters")


def _secret_fix(from_env: bool, path: Path) -> str:
    if from_env:
        return "set MAILER_SECRET_KEY to at least 24 random characters (e.g. `openssl rand -hex 32`)"
    return f"delete {path} to have a new one generated, or set MAILER_SECRET_KEY"


def _loose_mode(path: Path) -> str:
    """ "readable by other users (mode 644)" when anyone but the owner may read it."""
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        return ""
    return f"readable by other users (mode {mode:o})" if os.name == "posix" and mode & 0o077 else ""
