"""The web server: public pages (articles of sent digests, unsubscribe) and the editor's
pages (dashboard, preview, past digests, mail catcher).

* mailer.web.app: the app factory and the rules every request passes;
* mailer.web.access: who may see the editor's pages, and which POSTs are cross-site;
* mailer.web.public, mailer.web.editor: the two blueprints;
* mailer.web.subscription: unsubscribe and resubscribe, through the durable outbox
  (mailer.unsubscribe_outbox, below the web: delivery reads it too) that makes an
  unsubscribe survive a locked database and a crash.

This package module imports no Flask: `create_app` loads the app on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from mailer.config import Config
    from mailer.db import Database

MAX_BODY_BYTES = 16 * 1024


def create_app(db: Database, cfg: Config) -> Flask:
    from mailer.web.app import create_app as factory

    return factory(db, cfg)
