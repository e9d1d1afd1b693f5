"""Feeds end to end: a real `mailer serve` process polls the feeds its config lists from a
real HTTP server, and the next digest, sent to a real SMTP server, links their items."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from mailer import campaign
from mailer.config import load_config
from mailer.db import Database
from mailer.models import Article, Feed, utcnow
from mailer.subscribers import SubscriberStore
from tests.conftest import ROOT, write_config
from tests.feed_server import FeedServer
from tests.smtp_server import SmtpServer
from tests.test_feeds import item, rss


def test_the_service_polls_its_feeds_and_the_next_digest_links_their_items(
    tmp_path: Path, smtp_server: SmtpServer, database_url: str
) -> None:
    with FeedServer() as feeds:
        url = feeds.route("/wire.xml", body=rss(item(1), item(2), item(3)))
        config = write_config(tmp_path, smtp_server.port, database_url, digest={"min_articles": 1})
        with config.open("a", encoding="utf-8") as fh:
            fh.write(f'\n[[feeds.sources]]\nurl = "{url}"\nname = "The Wire"\ntheme = "chips"\n')
        cfg = load_config(str(config))
        db = Database(cfg.database_url)
        db.migrate()
        SubscriberStore(db).add("ada@example.com")

        service = subprocess.Popen(
            [sys.executable, "-m", "mailer", "--config", str(config), "serve"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            deadline = time.monotonic() + 30
            while _count(db) < 3:
                assert service.poll() is None, service.communicate()[1]
                assert time.monotonic() < deadline, "the service did not import the feed's items"
                time.sleep(0.1)
        finally:
            service.send_signal(signal.SIGTERM)
            _, log = service.communicate(timeout=30)
        assert service.returncode == 0, log
        with db.reader() as s:
            [feed] = s.scalars(select(Feed))
            assert (feed.last_status, feed.items_imported, feed.last_error) == (200, 3, "")

        campaign.send_now(db, cfg, utcnow())
        db.dispose()

    [message] = smtp_server.handler.to("ada@example.com")
    mail = message.message
    html = mail.get_body(("html",)).get_content()
    text = mail.get_body(("plain",)).get_content()
    for n in (1, 2, 3):
        assert f"Story number {n} about chips" in html and f"https://wire.example/{n}" in html
        assert f"https://wire.example/{n}" in text


def _count(db: Database) -> int:
    with db.reader() as s:
        return s.scalar(select(func.count()).select_from(Article)) or 0
