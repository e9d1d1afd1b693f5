"""Shared fixtures: a config in a temporary folder, a real database (an SQLite file, and a
throw-away PostgreSQL database: see tests/databases.py), a real SMTP server."""

from __future__ import annotations

import contextlib
import os
import re
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from mailer.cli import cli
from mailer.config import Config, load_config
from mailer.db import Database
from tests import databases
from tests.smtp_server import SmtpServer

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "seeds"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only(reason): the test is about SQLite itself (its file, its locks)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`database_url` runs each test on SQLite and on PostgreSQL (SQLite only when marked)."""
    if "database_url" in metafunc.fixturenames:
        kinds = (
            ["sqlite"] if metafunc.definition.get_closest_marker("sqlite_only") else ["sqlite", "postgresql"]
        )
        metafunc.parametrize("database_url", kinds, indirect=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not databases.unreachable.cache_info().currsize or not databases.unreachable():
        databases.drop_template()


@contextlib.contextmanager
def throwaway_database(kind: str, folder: Path) -> Iterator[str]:
    """An SQLite file in `folder`, or a throw-away PostgreSQL database dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'mailer.db'}"
        return
    reason = databases.unreachable()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI must test PostgreSQL: see README, Development)")
        pytest.skip(reason)
    name = databases.create()
    try:
        yield databases.url_of(name)
    finally:
        databases.drop(name)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with throwaway_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MAILER_* variable of the developer's shell leaks into a test."""
    for key in list(os.environ):
        if key.upper().startswith("MAILER_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium (tests/chromium.py), one per test module that asks for it."""
    from tests.chromium import chromium

    with chromium() as launched:
        yield launched


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()


def write_config(
    folder: Path, smtp_port: int = 2525, database_url: str = "", **sections: dict[str, Any]
) -> Path:
    """The repository's config.toml with the test's paths and ports, plus overrides; the
    database is `database_url`, else the one of the config already in `folder` (a test
    that rewrites its config keeps its database), else an SQLite file in `folder`.

    `sections` maps a section name to {key: value}; values are written as TOML literals
    via repr-like quoting (strings, numbers, booleans, lists of strings)."""
    text = (ROOT / "config.toml").read_text(encoding="utf-8")
    overrides: dict[str, dict[str, Any]] = {
        "database": {"url": database_url or _database_of(folder) or f"sqlite:///{folder / 'mailer.db'}"},
        "smtp": {"port": smtp_port},
        "catcher": {"enabled": False, "folder": str(folder / "mail")},
        "web": {"port": 0},
        "articles": {"seed_folder": str(SEEDS)},
        "digest": {"templates": str(ROOT / "templates")},
        # A killed run's digest is taken over when its lease runs out: seconds, not a minute.
        "delivery": {"lease_seconds": 10},
    }
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    for section, values in overrides.items():
        for key, value in values.items():
            text = _set_key(text, section, key, value)
    path = folder / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _database_of(folder: Path) -> str:
    existing = folder / "config.toml"
    if not existing.exists():
        return ""
    return str(tomllib.loads(existing.read_text(encoding="utf-8")).get("database", {}).get("url", ""))


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _set_key(text: str, section: str, key: str, value: Any) -> str:
    """Replace `key = ...` inside [section], or add it at the section's top."""
    header = re.search(rf"^\[{re.escape(section)}\]\s*$", text, re.MULTILINE)
    if header is None:
        return text + f"\n[{section}]\n{key} = {_toml(value)}\n"
    start = header.end()
    nxt = re.search(r"^\[", text[start:], re.MULTILINE)
    end = start + nxt.start() if nxt else len(text)
    body = text[start:end]
    # A value runs to the end of its line, or to the closing bracket of a multi-line array.
    line = re.compile(rf"^{re.escape(key)}\s*=\s*(?:\[[ \t]*\n(?:.*\n)*?\][ \t]*|.*)$", re.MULTILINE)
    if line.search(body):
        body = line.sub(lambda _m: f"{key} = {_toml(value)}", body, count=1)
    else:
        body = f"\n{key} = {_toml(value)}" + body
    return text[:start] + body + text[end:]


@pytest.fixture
def config_path(tmp_path: Path, smtp_server: SmtpServer, database_url: str) -> Path:
    return write_config(tmp_path, smtp_port=smtp_server.port, database_url=database_url)


@pytest.fixture
def cfg(config_path: Path) -> Config:
    return load_config(str(config_path))


@pytest.fixture
def db(cfg: Config) -> Iterator[Database]:
    database = Database(cfg.database_url)
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture
def run_cli(config_path: Path) -> Callable[..., Result]:
    """Invoke the real CLI in-process against the test config."""

    def run(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(cli, ["--config", str(config_path), *args], input=input)

    return run


SUBSCRIBERS = [
    ("ada@example.com", "Ada Lovelace"),
    ("grace@example.com", "Grace Hopper"),
    ("zoe@example.com", "Zoë “Z” Müller"),
]


@pytest.fixture
def seeded(db: Database, cfg: Config) -> Database:
    """The sample articles imported and three active subscribers."""
    from mailer.articles import ArticleStore
    from mailer.subscribers import SubscriberStore

    ArticleStore(db, cfg).import_paths([str(SEEDS)])
    store = SubscriberStore(db)
    for email, name in SUBSCRIBERS:
        store.add(email, name)
    return db


def populate(config_path: Path, readers: int) -> Config:
    """A database (for the config at config_path) with the sample articles and `readers`
    active subscribers reader0000@example.com ...; for tests that run real processes."""
    from mailer.articles import ArticleStore
    from mailer.subscribers import SubscriberStore

    cfg = load_config(str(config_path))
    db = Database(cfg.database_url)
    db.migrate()
    ArticleStore(db, cfg).import_paths([str(SEEDS)])
    store = SubscriberStore(db)
    for i in range(readers):
        store.add(f"reader{i:04d}@example.com")
    db.dispose()
    return cfg
