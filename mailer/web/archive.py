"""The public archive (issue 10, "Read online"): /archive lists the issues sent, newest
first; /archive/<issue> shows one as it was mailed, with public pages in place of every
reader's own links (mailer.archive); /archive.atom is their Atom feed.

Each view parses the request, asks mailer.archive once and renders. `web.archive = false`
turns all three into 404s; it is read per request, so a reload switches it.
"""

from __future__ import annotations

import re

from flask import Blueprint, Response, abort, render_template

from mailer import archive
from mailer.config import Config
from mailer.db import Database

# The issue page is the mail's own HTML document: it runs no script, and neither may
# anything injected into it; the mail's images and inline styles load as they did.
ISSUE_CSP = "script-src 'none'; object-src 'none'; base-uri 'none'; form-action 'none'"
_BODY = re.compile(r"<body\b[^>]*>", re.IGNORECASE)


def blueprint(db: Database, cfg: Config) -> Blueprint:
    bp = Blueprint("archive", __name__)

    @bp.before_request
    def _switched_on() -> None:
        if not cfg.web.archive:
            abort(404)

    @bp.get("/archive")
    def issues() -> str:
        return render_template("web_archive.html", issues=archive.sent_issues(db, cfg))

    @bp.get(f"/archive/<int(max={archive.MAX_ISSUE}):number>")
    def issue(number: int) -> Response:
        html = archive.public_issue(db, cfg, number)
        if html is None:
            abort(404)
        bar = render_template("web_archive_bar.html", number=number)
        page = _BODY.sub(lambda m: m.group(0) + bar, html, count=1)
        return Response(page, mimetype="text/html", headers={"Content-Security-Policy": ISSUE_CSP})

    @bp.get("/archive.atom")
    def feed() -> Response:
        issues = archive.sent_issues(db, cfg, limit=archive.FEED_ENTRIES)
        return Response(archive.atom(cfg, issues), mimetype="application/atom+xml")

    return bp
