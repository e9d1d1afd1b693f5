"""POST /webhooks/<provider>: the mail services' bounce and complaint events
(mailer.bounces.webhooks says what each provider must prove, and what it means;
mailer.bounces.sns and mailer.bounces.providers, why that is enough).

The view reads the raw body, since signatures are over the bytes as sent, and calls
Webhooks.receive; it answers one line of plain text: 200 once everything in the request is
recorded (a replay too: providers retry anything else), else the refusal's status. What
the app lets through for this blueprint alone (mailer.web.app), and why:

* no editor password: the providers prove themselves by signature or credentials;
* no same-site check on the POST: it comes from the provider's servers, never a page;
* bodies up to MAX_BODY_BYTES (1 MB) instead of the app's 16 KB: SNS messages can be
  256 KB and SendGrid batches events.

The SNS certificate client trusts certifi's CAs. A test serving the certificate from
loopback with its own CA names that CA's PEM file in `app.config[CA_FILE]` before the
first request; nothing else sets it (an environment variable such as SSL_CERT_FILE would
change what a production server trusts without anyone noticing).
"""

from __future__ import annotations

import logging
import threading

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from mailer.bounces.webhooks import MAX_BODY_BYTES, Refused, Webhooks, shown
from mailer.config import Config
from mailer.db import Database
from mailer.models import utcnow
from mailer.tokens import Tokens

__all__ = ["CA_FILE", "MAX_BODY_BYTES", "blueprint"]

CA_FILE = "MAILER_WEBHOOKS_CA_FILE"
NAME = "webhooks"
log = logging.getLogger("mailer.bounces.webhooks")


def blueprint(db: Database, cfg: Config, tokens: Tokens) -> Blueprint:
    bp = Blueprint(NAME, __name__)
    made: list[Webhooks] = []
    lock = threading.Lock()

    def hooks() -> Webhooks:
        # Made on the first request, when app.config holds whatever the app was given.
        with lock:
            if not made:
                made.append(Webhooks(current_app.config.get(CA_FILE)))
                current_app.extensions["mailer.webhooks"] = made[0]  # closed by close_app
            return made[0]

    @bp.post("/webhooks/<provider>")
    def receive(provider: str) -> Response:
        request.max_content_length = MAX_BODY_BYTES
        try:
            body = request.get_data(cache=False)
        except RequestEntityTooLarge:
            log.warning("webhook %s refused (413): a body over %d bytes", shown(provider), MAX_BODY_BYTES)
            return _text(413, "Request Entity Too Large")
        got = hooks().receive(db, cfg, provider, body, request.headers, utcnow(), tokens)
        return _text(200, got.summary())

    @bp.errorhandler(Refused)
    def refused(exc: Refused) -> Response:
        # The reason helps whoever reads the provider's delivery log; a 404 says no more
        # than that (which providers are set up is nobody else's business).
        resp = _text(exc.status, "Not Found" if exc.status == 404 else exc.reason)
        if exc.status == 401:
            resp.headers["WWW-Authenticate"] = 'Basic realm="mailer webhooks"'
        return resp

    return bp


def _text(status: int, line: str) -> Response:
    return Response(line + "\n", status=status, mimetype="text/plain")
