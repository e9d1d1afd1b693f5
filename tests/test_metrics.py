"""/metrics, /healthz and JSON log lines (issue 14, "Metrics and health"), over real HTTP:
the app behind the service's waitress settings (tests/web_server.py) after a real send to a
real SMTP server, and a real `mailer serve` for the scheduler check and the log lines.

/metrics is read with prometheus_client's own parser, and its numbers are the database's:
deliveries by status, the send rate, the last digest, its bounce and complaint rates,
feeds by result. It is an editor's page (the password off loopback). /healthz answers
"ok", or 503 naming the database when the database cannot be opened and the relay when a
digest is in back-off, as text or JSON; /livez only says the process serves.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from mailer import campaign, metrics
from mailer.articles import ArticleStore
from mailer.bounces import ledger
from mailer.bounces.report import BounceKind, Report, Source
from mailer.config import Config, load_config
from mailer.db import Database
from mailer.models import Digest, Feed, FeedStatus, utcnow
from mailer.subscribers import SubscriberStore
from tests.conftest import ROOT, SEEDS, populate
from tests.smtp_server import SmtpServer, free_port
from tests.web_server import Servers, WebServer, write_test_config

READERS = ["ada@example.org", "bob@example.org", "cy@example.org", "di@example.org"]
PASSWORD = "correct horse battery"
PUBLIC_BASE = "https://news.example.org"
JSON = {"Accept": "application/json"}


def scrape(web: WebServer, headers: dict[str, str] | None = None) -> dict[tuple[str, tuple[str, ...]], float]:
    """{(sample name, its label values sorted by label name): value} from GET /metrics."""
    reply = web.get("/metrics", headers=headers)
    assert reply.status == 200, reply.body[:300]
    assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(v for _, v in sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(reply.body)
        for sample in family.samples
    }


def basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"editor:{password}".encode()).decode()}


def health(web: WebServer, path: str = "/healthz", headers: dict[str, str] | None = None) -> tuple[int, dict]:
    reply = web.get(path, headers=headers if headers is not None else JSON)
    assert reply.headers["Content-Type"] == "application/json", reply.body[:300]
    return reply.status, json.loads(reply.body)


@pytest.fixture
def web(db: Database, cfg: Config) -> Iterator[WebServer]:
    server = WebServer(db, cfg).start()
    yield server
    server.close()


@pytest.fixture
def serve(tmp_path: Path, smtp_server: SmtpServer, db: Database) -> Iterator[Callable[..., WebServer]]:
    servers = Servers(tmp_path, smtp_server.port, db)
    yield servers.start
    servers.close()


def send_to_readers(db: Database, cfg: Config) -> None:
    ArticleStore(db, cfg).import_paths([str(SEEDS)])
    for email in READERS:
        SubscriberStore(db).add(email)
    (summary,) = campaign.send_now(db, cfg, utcnow())
    assert summary.finished and summary.sent == len(READERS), summary


def test_metrics_after_a_real_send_are_the_databases_numbers(
    db: Database, cfg: Config, smtp_server: SmtpServer, web: WebServer
) -> None:
    send_to_readers(db, cfg)
    by_rcpt = {r.recipients[0]: r.message for r in smtp_server.received}
    # One hard bounce and one complaint, matched by the Message-ID the readers received.
    for kind, email in ((BounceKind.HARD, READERS[0]), (BounceKind.COMPLAINT, READERS[1])):
        report = Report(kind, Source.MX, f"event-{email}", message_id=by_rcpt[email]["Message-ID"])
        assert ledger.record(db, cfg, report).outcome == ledger.APPLIED
    now = utcnow()
    with db.session() as s:
        s.add_all(
            [
                Feed(listed_url="https://a.example/feed", url="https://a.example/feed", origin="cli"),
                Feed(
                    listed_url="https://b.example/feed",
                    url="https://b.example/feed",
                    origin="cli",
                    last_polled_at=now,
                    last_status=200,
                ),
                Feed(
                    listed_url="https://c.example/feed",
                    url="https://c.example/feed",
                    origin="cli",
                    last_polled_at=now,
                    last_status=503,
                    failures=2,
                ),
                Feed(
                    listed_url="https://d.example/feed",
                    url="https://d.example/feed",
                    origin="cli",
                    status=FeedStatus.GONE,
                    last_polled_at=now,
                    last_status=410,
                ),
            ]
        )
    with db.reader() as s:
        digest = s.scalars(select(Digest)).one()
    assert digest.finished_at is not None

    got = scrape(web)

    assert {k: v for k, v in got.items() if k[0] == "mailer_deliveries"} == {
        ("mailer_deliveries", ("queued",)): 0,
        ("mailer_deliveries", ("sending",)): 0,
        ("mailer_deliveries", ("sent",)): 4,
        ("mailer_deliveries", ("retry",)): 0,
        ("mailer_deliveries", ("failed",)): 0,
        ("mailer_deliveries", ("skipped",)): 0,
    }
    assert got[("mailer_queue_depth", ())] == 0
    assert got[("mailer_messages_sent", ("1m",))] == 4
    assert got[("mailer_messages_sent", ("5m",))] == 4
    assert got[("mailer_digests", ("sent",))] == 1 and got[("mailer_digests", ("sending",))] == 0
    assert got[("mailer_last_digest_finished_timestamp_seconds", ())] == digest.finished_at.timestamp()
    assert got[("mailer_last_digest_status", ("sent",))] == 1
    assert got[("mailer_last_digest_status", ("failed",))] == 0
    assert got[("mailer_last_digest_status", ("skipped",))] == 0
    assert got[("mailer_last_sent_digest_issue", ())] == digest.issue_number == 1
    assert got[("mailer_last_sent_digest_delivered", ())] == 4
    assert got[("mailer_last_sent_digest_bounce_rate", ())] == 0.25
    assert got[("mailer_last_sent_digest_complaint_rate", ())] == 0.25
    assert got[("mailer_relay_backoff", ())] == 0
    assert {k[1][0]: v for k, v in got.items() if k[0] == "mailer_feeds"} == {
        "ok": 1,
        "failing": 1,
        "gone": 1,
        "never_polled": 1,
    }
    assert {k[1][0]: v for k, v in got.items() if k[0] == "mailer_feeds_last_http_status"} == {
        "200": 1,
        "503": 1,
        "410": 1,
    }
    assert got[("mailer_database_up", ())] == 1
    assert 0 <= got[("mailer_uptime_seconds", ())] < 120
    assert abs(got[("mailer_start_time_seconds", ())] + got[("mailer_uptime_seconds", ())] - time.time()) < 5


def test_before_anything_was_sent_there_is_no_last_digest(web: WebServer) -> None:
    got = scrape(web)
    assert got[("mailer_queue_depth", ())] == 0
    assert got[("mailer_messages_sent", ("1m",))] == 0
    assert not [name for name, _ in got if name.startswith("mailer_last_")]


def test_metrics_need_the_password_off_loopback(serve: Callable[..., WebServer]) -> None:
    assert serve().get("/metrics").status == 200  # loopback only: a local request

    closed = serve(digest={"base_url": PUBLIC_BASE})
    assert closed.get("/metrics").status == 404  # no password: the editor's pages do not exist

    guarded = serve(digest={"base_url": PUBLIC_BASE}, web={"password": PASSWORD})
    assert guarded.get("/metrics").status == 401
    assert guarded.get("/metrics", headers=basic("wrong")).status == 401
    assert scrape(guarded, basic(PASSWORD))[("mailer_database_up", ())] == 1
    # /healthz stays public, its checks' details the editor's.
    status, body = health(guarded)
    assert status == 200 and body["checks"]["scheduler"] == {"status": "skipped"}
    status, body = health(guarded, headers={**JSON, **basic(PASSWORD)})
    assert status == 200 and "detail" in body["checks"]["scheduler"]


def test_healthz_is_ok_when_healthy(web: WebServer) -> None:
    plain = web.get("/healthz")
    assert (plain.status, plain.body, plain.headers["Content-Type"]) == (
        200,
        "ok\n",
        "text/plain; charset=utf-8",
    )
    expected = {
        "status": "ok",
        "checks": {
            "database": {"status": "ok"},
            "scheduler": {
                "status": "skipped",
                "detail": "this process runs no scheduler (not `mailer serve`)",
            },
            "relay": {"status": "ok"},
        },
    }
    assert health(web) == (200, expected)
    assert health(web, "/healthz?format=json", headers={}) == (200, expected)


def test_healthz_names_the_relay_while_a_digest_waits_out_its_back_off(tmp_path: Path) -> None:
    relay = free_port()  # nothing listens there
    cfg = load_config(str(write_test_config(tmp_path, relay)))
    db = Database(cfg.database_url)
    db.migrate()
    ArticleStore(db, cfg).import_paths([str(SEEDS)])
    SubscriberStore(db).add(READERS[0])
    (summary,) = campaign.send_now(db, cfg, utcnow())
    assert summary.stopped and "unreachable" in summary.stopped
    with db.session() as s:  # the back-off runs for a minute: room for a slow machine
        s.scalars(select(Digest)).one().next_run_at = utcnow() + timedelta(minutes=10)
    web = WebServer(db, cfg).start()
    try:
        status, body = health(web)
        assert status == 503 and body["status"] == "unhealthy"
        assert body["checks"]["database"] == {"status": "ok"}
        assert body["checks"]["relay"]["status"] == "unhealthy"
        assert f"127.0.0.1:{relay} unreachable" in body["checks"]["relay"]["detail"]
        assert body["checks"]["relay"]["detail"].startswith("issue 1 waits for the relay until ")
        assert scrape(web)[("mailer_relay_backoff", ())] == 1
        assert scrape(web)[("mailer_queue_depth", ())] == 1
        plain = web.get("/healthz")  # as text: the failed check named, then its detail
        assert plain.status == 503
        assert plain.body.splitlines()[:1] == ["unhealthy: relay"]
        assert plain.body.splitlines()[1] == f"relay: {body['checks']['relay']['detail']}"
        assert web.get("/livez").body == "ok\n"  # the liveness answer is the process's
    finally:
        web.close()
        db.dispose()


@pytest.mark.sqlite_only("an SQLite file whose folder is removed")
def test_healthz_names_the_database_when_it_cannot_be_opened(tmp_path: Path, smtp_server: SmtpServer) -> None:
    folder = tmp_path / "data"
    cfg = load_config(str(write_test_config(tmp_path, smtp_server.port, f"sqlite:///{folder / 'mailer.db'}")))
    db = Database(cfg.database_url)
    db.migrate()
    web = WebServer(db, cfg).start()
    try:
        assert health(web)[0] == 200
        shutil.rmtree(folder)
        db.engine.dispose()  # the pool's open connections would still read the removed file
        status, body = health(web)
        assert status == 503 and body["status"] == "unhealthy"
        assert body["checks"]["database"]["status"] == "unhealthy"
        assert str(folder / "mailer.db") in body["checks"]["database"]["detail"]
        assert body["checks"]["relay"]["status"] == "skipped"
        got = scrape(web)  # still answers: the up-time, and that the database did not
        assert got[("mailer_database_up", ())] == 0
        assert "mailer_deliveries" not in {name for name, _ in got}
        plain = web.get("/healthz")
        assert plain.status == 503 and plain.body.startswith("unhealthy: database\n")
        assert web.get("/livez").status == 200  # the process is alive
    finally:
        web.close()
        db.dispose()


def _get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def test_mailer_serve_logs_json_lines_and_its_scheduler_is_checked(
    tmp_path: Path, smtp_server: SmtpServer
) -> None:
    port = free_port()
    config = write_test_config(tmp_path, smtp_server.port, web={"port": port}, log={"format": "json"})
    populate(config, 0)
    serve = subprocess.Popen(
        [sys.executable, "-m", "mailer", "--config", str(config), "serve"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert serve.poll() is None, serve.communicate()
            try:
                status, body = _get(port, "/healthz?format=json")
                break
            except OSError:
                assert time.monotonic() < deadline, "the web server did not start"
                time.sleep(0.2)
        report = json.loads(body)
        assert status == 200, report
        assert report["checks"]["scheduler"] == {"status": "ok"}
        metrics = {
            s.name: s.value
            for family in text_string_to_metric_families(_get(port, "/metrics")[1])
            for s in family.samples
        }
        assert metrics["mailer_database_up"] == 1 and 0 < metrics["mailer_uptime_seconds"] < 60
    finally:
        serve.send_signal(signal.SIGTERM)
        _, err = serve.communicate(timeout=30)
    assert serve.returncode == 0, err
    lines = [json.loads(line) for line in err.splitlines()]  # every line is one JSON object
    assert lines and all(set(line) >= {"time", "level", "logger", "message"} for line in lines), lines
    assert {"level": "INFO", "logger": "mailer.service", "message": "stopped"}.items() <= lines[-1].items()
    assert lines[-1]["time"].endswith("+00:00")


def test_healthz_text_names_the_failed_checks_and_gives_their_detail_to_the_editor() -> None:
    report = metrics.Health()
    report.add("database", "ok")
    report.add("scheduler", "unhealthy", "the minute job is 5 minutes overdue")
    report.add("relay", "unhealthy", "issue 1 waits for the relay")
    assert report.as_text(details=False) == "unhealthy: scheduler, relay\n"
    assert report.as_text() == (
        "unhealthy: scheduler, relay\n"
        "scheduler: the minute job is 5 minutes overdue\n"
        "relay: issue 1 waits for the relay\n"
    )
    healthy = metrics.Health()
    healthy.add("database", "ok")
    healthy.add("scheduler", "skipped", "not `mailer serve`")
    assert healthy.as_text() == "ok\n"
