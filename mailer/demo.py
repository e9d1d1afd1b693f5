"""The embedded default's demo data (the sample articles and three demo readers), and how to
type the `mailer` command after `make run`.

Invariant: demo data only ever goes into a database that the same command has just
created (no schema existed before it, so no subscriber row ever did) and that is still
empty. A database that existed before is never touched: `make run` (`serve --demo`) runs on
every start, and re-adding demo readers there would bring back a person who was forgotten
or unsubscribed. Nothing here updates an existing row either: only the person (the
unsubscribe page) or an explicit editor command changes a subscriber.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from sqlalchemy import func, select

from mailer.articles import ArticleStore
from mailer.config import Config
from mailer.db import Database
from mailer.models import Article, Subscriber
from mailer.subscribers import SubscriberStore

DEMO_SUBSCRIBERS = [
    ("ada@example.com", "Ada Lovelace"),
    ("grace@example.com", "Grace Hopper"),
    ("zoe@example.com", "Zoë Müller"),
]


def is_new(cfg: Config) -> bool:
    """True when the configured database has no schema yet (call before migrating it)."""
    db = Database(cfg.database_url)
    try:
        return db.revision() is None
    finally:
        db.dispose()


def load(db: Database, cfg: Config, new: bool) -> list[str]:
    """Import the seed folder and add the demo readers, if `new` (see is_new) and the
    database is still empty; else nothing. Returns the lines to print."""
    with db.session() as s:
        rows = s.scalar(select(func.count()).select_from(Subscriber)) or 0
        rows += s.scalar(select(func.count()).select_from(Article)) or 0
    lines = []
    if not new or rows:
        lines.append("demo data: not loaded (only a new, empty database gets it; this one already existed)")
    else:
        folder = cfg.resolve(cfg.articles.seed_folder)
        if folder.is_dir():
            reports = ArticleStore(db, cfg).import_paths([str(folder)])
            added = sum(r.added for r in reports)
            lines.append(f"sample articles: {added} new from {len(reports)} file(s) in {folder}")
        else:
            lines.append(f"sample articles: no folder {folder}")
        store = SubscriberStore(db)
        created = sum(store.add(email, name)[1] for email, name in DEMO_SUBSCRIBERS)
        lines.append(f"demo subscribers: {created} added (once: later starts leave the list alone)")
    lines.append(f"commands:     {command()} --help  (e.g. {command()} subscribers list)")
    return lines


def command() -> str:
    """What to type in a shell in the current folder to run this same `mailer`: `mailer`
    when PATH finds this very script, else its path (relative when under the current
    folder, so `.venv/bin/mailer` after `make run`), or `python -m mailer`."""
    script = Path(os.path.abspath(sys.argv[0]))
    if script.name == "__main__.py" or not script.is_file():
        return f"{_typed(Path(sys.executable))} -m mailer"
    found = shutil.which("mailer")
    if found and Path(found).resolve() == script.resolve():
        return "mailer"
    return _typed(script)


def _typed(path: Path) -> str:
    """`path` as typed in a shell here: relative under the current folder (with a slash, so
    PATH is not searched), else absolute; quoted when it needs to be."""
    try:
        relative = path.relative_to(Path.cwd())
    except ValueError:
        return shlex.quote(str(path))
    text = str(relative)
    return shlex.quote(text if "/" in text else f"./{text}")
