"""The web app served by a real waitress server on loopback, for the HTTP and browser tests,
with the very waitress settings the service uses (mailer.service.web_server).

Also the few helpers the web test files share: plain HTTP requests (http.client, which
never follows redirects or keeps cookies), HTML parsing with lxml, servers started with
config overrides, and the unsubscribe links a real digest send put in each subscriber's
List-Unsubscribe header.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlsplit

import lxml.html

from mailer import campaign
from mailer.articles import ArticleStore
from mailer.config import Config, load_config
from mailer.db import Database
from mailer.models import utcnow
from mailer.service import web_server
from mailer.subscribers import SubscriberStore
from mailer.web import create_app
from mailer.web.app import close_app
from tests.conftest import SEEDS, write_config
from tests.smtp_server import SmtpServer

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
ONE_CLICK = b"List-Unsubscribe=One-Click"
# Room for every seed article in one digest (the seeds are at config.toml's maximum of 40
# already), so "every unsent article is in the preview" keeps holding as the seeds grow.
MAX_ARTICLES = 500


def write_test_config(
    folder: Path, smtp_port: int, database_url: str = "", **sections: dict[str, object]
) -> Path:
    """tests.conftest.write_config with MAX_ARTICLES (unless `digest` says otherwise)."""
    digest = {"max_articles": MAX_ARTICLES, **sections.pop("digest", {})}
    return write_config(folder, smtp_port, database_url, digest=digest, **sections)


@dataclass
class Reply:
    request: str  # "METHOD path", for assertion messages
    status: int
    headers: http.client.HTTPMessage
    body: str

    def doc(self) -> lxml.html.HtmlElement:
        return lxml.html.document_fromstring(self.body)


class WebServer:
    """create_app(db, cfg) behind waitress on 127.0.0.1 and a free port, in a daemon thread."""

    def __init__(self, db: Database, cfg: Config) -> None:
        self.cfg = cfg
        self.app = create_app(db, cfg)
        self.server = web_server(self.app, "127.0.0.1", 0)
        self.port = int(self.server.effective_port)  # type: ignore[union-attr]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.run, name="test-web", daemon=True)

    def start(self) -> WebServer:
        self.thread.start()
        return self

    def close(self) -> None:
        # Close the sockets from inside the server's loop (closing them from here races
        # with its select()); with nothing left to watch, the loop and the thread end.
        # pull_trigger queues the callback before it writes to the trigger's pipe, so a
        # wake-up already pending can run it (closing that pipe) before the write: EBADF.
        with contextlib.suppress(OSError):
            self.server.trigger.pull_trigger(self._close_all)  # type: ignore[union-attr]
        self.thread.join(timeout=5)
        assert not self.thread.is_alive(), "the test web server did not stop"
        close_app(self.app)
        self.server.task_dispatcher.shutdown(timeout=5)  # type: ignore[union-attr]

    def _close_all(self) -> None:
        for channel in list(self.server._map.values()):  # type: ignore[union-attr]
            channel.close()

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return Reply(f"{method} {path}", resp.status, resp.headers, resp.read().decode("utf-8"))
        finally:
            conn.close()

    def get(self, path: str, headers: dict[str, str] | None = None) -> Reply:
        return self.request("GET", path, headers=headers)

    def post(self, path: str, body: bytes = ONE_CLICK, headers: dict[str, str] | None = None) -> Reply:
        return self.request("POST", path, body=body, headers={**FORM, **(headers or {})})

    def raw(self, data: bytes) -> bytes:
        """Send bytes as they are over a plain socket; everything the server answers."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(data)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)

    def local(self, url: str) -> str:
        """A URL the app generated from digest.base_url, pointed at this server instead."""
        parts = urlsplit(url)
        assert f"{parts.scheme}://{parts.netloc}" == self.cfg.digest.base_url, url
        return self.base + parts.path


def unsubscribe_url(message: EmailMessage) -> str:
    """The one-click URL of RFC 8058 from a message as the subscriber received it."""
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    value = str(message["List-Unsubscribe"]).strip()
    assert value.startswith("<") and value.endswith(">"), value
    return value[1:-1]


def unsubscribe_paths(smtp_server: SmtpServer) -> dict[str, str]:
    """{recipient: path of their unsubscribe URL} from every message the server received."""
    out = {}
    for received in smtp_server.received:
        (rcpt,) = received.recipients
        out[rcpt] = urlsplit(unsubscribe_url(received.message)).path
    return out


def statuses(db: Database) -> dict[str, str]:
    return {s.email: s.status for s in SubscriberStore(db).list()}


class Servers:
    """Servers for one test: the app with the test config plus overrides (written next to
    it, so the database and the secret key are the same); all closed by close()."""

    def __init__(self, folder: Path, smtp_port: int, db: Database) -> None:
        self.folder = folder
        self.smtp_port = smtp_port
        self.db = db
        self.running: list[WebServer] = []

    def start(self, **sections: dict[str, object]) -> WebServer:
        cfg = load_config(str(write_test_config(self.folder, self.smtp_port, **sections)))
        server = WebServer(self.db, cfg).start()
        self.running.append(server)
        return server

    def close(self) -> None:
        for server in self.running:
            server.close()


def mail_links(db: Database, cfg: Config, smtp_server: SmtpServer, emails: list[str]) -> dict[str, str]:
    """The sample articles, `emails` subscribed and a digest really sent to them:
    {subscriber: path of the unsubscribe URL in their mail}."""
    ArticleStore(db, cfg).import_paths([str(SEEDS)])
    for email in emails:
        SubscriberStore(db).add(email)
    campaign.send_now(db, cfg, utcnow())
    return unsubscribe_paths(smtp_server)


@contextlib.contextmanager
def running_site(
    folder: Path, smtp_port: int, database_url: str, **sections: dict[str, object]
) -> Iterator[tuple[WebServer, Database]]:
    """A migrated database with the sample articles, served by a WebServer: closed after."""
    from mailer.articles import ArticleStore

    cfg = load_config(str(write_test_config(folder, smtp_port, database_url=database_url, **sections)))
    db = Database(cfg.database_url)
    db.migrate()
    ArticleStore(db, cfg).import_paths([str(SEEDS)])
    server = WebServer(db, cfg).start()
    try:
        yield server, db
    finally:
        server.close()
        db.dispose()
