"""The embedded default's demo data: the sample articles and a few demo subscribers."""

from __future__ import annotations

from mailer.articles import ArticleStore
from mailer.config import Config
from mailer.db import Database
from mailer.subscribers import SubscriberStore

DEMO_SUBSCRIBERS = [
    ("ada@example.com", "Ada Lovelace"),
    ("grace@example.com", "Grace Hopper"),
    ("zoe@example.com", "Zoë Müller"),
]


def load(db: Database, cfg: Config) -> list[str]:
    """Import the seed folder and add the demo subscribers; safe to run again."""
    lines = []
    folder = cfg.resolve(cfg.articles.seed_folder)
    if folder.is_dir():
        reports = ArticleStore(db, cfg).import_paths([str(folder)])
        added = sum(r.added for r in reports)
        lines.append(f"sample articles: {added} new from {len(reports)} file(s) in {folder}")
    else:
        lines.append(f"sample articles: no folder {folder}")
    store = SubscriberStore(db)
    created = sum(store.add(email, name)[1] for email, name in DEMO_SUBSCRIBERS)
    lines.append(f"demo subscribers: {created} new, {len(DEMO_SUBSCRIBERS) - created} already there")
    return lines
