"""/metrics: the service's numbers in Prometheus' text format (mailer.metrics).

An editor's page: the blueprint is not in mailer.web.app.PUBLIC_BLUEPRINTS, so the app's
rule (mailer.web.access.require_editor) serves it without a password only to a local
request on a loopback-only setup, and otherwise asks for the web password (404 with none
set), before this view runs. Every number is read from the database at scrape time, so
any instance sharing the database answers the same (only the up-time is this process's).
"""

from __future__ import annotations

import time

from flask import Blueprint, Response, current_app
from prometheus_client import generate_latest

from mailer import metrics
from mailer.db import Database

NAME = "metrics"
# The text format every Prometheus reads (our names are plain ASCII, so generate_latest's
# output is this format; prometheus_client's CONTENT_TYPE_LATEST now names version 1.0.0).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def blueprint(db: Database) -> Blueprint:
    bp = Blueprint(NAME, __name__)
    created = time.time()  # the app's start, for an app that no `mailer serve` runs

    @bp.get("/metrics")
    def scrape() -> Response:
        service = current_app.extensions.get(metrics.HEALTH_KEY)
        return Response(generate_latest(metrics.registry(db, created, service)), content_type=CONTENT_TYPE)

    return bp
