"""Delivery over a real SMTP server on loopback: once per subscriber, retries, failures."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time
from sqlalchemy import select, update

from mailer import campaign, delivery, render
from mailer import digest as digests
from mailer.config import load_config
from mailer.models import Article, Delivery, Digest, Subscriber
from mailer.subscribers import SubscriberStore
from mailer.tokens import Tokens, load_secret
from tests.conftest import SUBSCRIBERS, write_config
from tests.smtp_server import DROP

T0 = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)
EMAILS = [e for e, _ in SUBSCRIBERS]


def _rows(db, digest_id=None):
    with db.session() as s:
        q = select(Subscriber.email, Delivery.status, Delivery.attempts, Delivery.last_reply).join(
            Subscriber, Subscriber.id == Delivery.subscriber_id
        )
        if digest_id is not None:
            q = q.where(Delivery.digest_id == digest_id)
        return {email: (status, attempts, reply) for email, status, attempts, reply in s.execute(q)}


def _digest(db) -> Digest:
    with db.session() as s:
        return s.scalars(select(Digest).order_by(Digest.id.desc())).first()


def test_every_active_subscriber_gets_exactly_one_personal_message(seeded, cfg, smtp_server):
    SubscriberStore(seeded).add("gone@example.com")
    SubscriberStore(seeded).unsubscribe("gone@example.com")
    [summary] = campaign.send_now(seeded, cfg, T0)
    assert summary.finished and summary.sent == 3
    assert sorted(r.recipients[0] for r in smtp_server.received) == sorted(EMAILS)
    tokens = Tokens(load_secret(cfg.var_dir))
    msgs = {r.recipients[0]: r.message for r in smtp_server.received}
    with seeded.session() as s:
        subs = {sub.email: sub for sub in s.scalars(select(Subscriber))}
    for email, msg in msgs.items():
        assert msg["To"].addresses[0].addr_spec == email
        assert msg.get_content_type() == "multipart/alternative"
        text, html = msg.iter_parts()
        assert (text.get_content_type(), html.get_content_type()) == ("text/plain", "text/html")
        # The unsubscribe link is this subscriber's own, in the header and both bodies.
        url = msg["List-Unsubscribe"].strip("<>")
        token = url.rsplit("/", 1)[1]
        sub = subs[email]
        assert tokens.verify(token, sub.id, sub.token_nonce)
        assert url in html.get_content() and url in text.get_content()
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert len({m["Message-ID"] for m in msgs.values()}) == 3
    assert msgs["zoe@example.com"]["To"].addresses[0].display_name == "Zoë “Z” Müller"
    d = _digest(seeded)
    assert d.status == "sent" and d.finished_at is not None
    with seeded.session() as s:
        assert all(a.sent_at is not None for a in s.scalars(select(Article).where(Article.digest_id == d.id)))


def test_premailer_runs_once_per_digest_not_per_recipient(seeded, cfg, smtp_server, monkeypatch):
    calls = []
    real = render.inline_css
    monkeypatch.setattr(render, "inline_css", lambda html: calls.append(1) or real(html))
    for i in range(10):
        SubscriberStore(seeded).add(f"reader{i}@example.com")
    campaign.send_now(seeded, cfg, T0)
    assert len(smtp_server.received) == 13
    assert len(calls) == 1


def test_the_audience_is_frozen_when_the_digest_is_built(seeded, cfg, smtp_server):
    d = digests.build(seeded, cfg, digests.manual_slot(T0))
    SubscriberStore(seeded).add("late@example.com")
    SubscriberStore(seeded).unsubscribe("grace@example.com")
    delivery.deliver(seeded, cfg, d.id)
    got = sorted(r.recipients[0] for r in smtp_server.received)
    assert got == ["ada@example.com", "zoe@example.com"]
    assert _rows(seeded, d.id)["grace@example.com"][0] == "skipped"


def test_temporary_failure_is_retried_later_with_the_same_message_id(seeded, cfg, smtp_server):
    refuse = {"grace@example.com"}
    smtp_server.handler.rule = lambda stage, addr: (
        "451 4.3.0 mailbox busy" if stage == "RCPT" and addr in refuse else None
    )
    with freeze_time(T0):
        [first] = campaign.send_now(seeded, cfg, T0)
    assert not first.finished and first.retry == 1 and first.sent == 2
    status, attempts, reply = _rows(seeded)["grace@example.com"]
    assert (status, attempts) == ("retry", 1) and reply.startswith("451")
    key = _key(seeded, "grace@example.com")  # stored by the first attempt
    assert key and len(key) == 32
    # Not yet due: nothing is sent before the back-off has passed.
    with freeze_time(T0 + timedelta(seconds=30)):
        campaign.deliver_unfinished(seeded, cfg)
    assert len(smtp_server.received) == 2
    refuse.clear()
    with freeze_time(T0 + timedelta(minutes=2)):
        [second] = campaign.deliver_unfinished(seeded, cfg)
    assert second.finished and second.sent == 1
    assert _rows(seeded)["grace@example.com"][:2] == ("sent", 2)
    ids = [r.message["Message-ID"] for r in smtp_server.received if "grace@example.com" in r.recipients]
    assert len(ids) == 1
    # Same delivery, same Message-ID as the first attempt carried.
    with seeded.session() as s:
        sub_id = s.scalar(select(Subscriber.id).where(Subscriber.email == "grace@example.com"))
    assert ids[0] == f"<digest-{_digest(seeded).id}.sub-{sub_id}.{key}@example.org>"
    assert _key(seeded, "grace@example.com") == key


def _key(db, email: str) -> str | None:
    with db.session() as s:
        return s.scalar(
            select(Delivery.message_key)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(Subscriber.email == email)
        )


def test_a_message_resent_after_a_crash_repeats_its_message_id(seeded, cfg, smtp_server):
    """A run killed after the server accepted a message but before recording it sends that
    message again on restart: with the same Message-ID, so the mailbox keeps one copy."""
    [summary] = campaign.send_now(seeded, cfg, T0)
    assert summary.finished
    first = {r.recipients[0]: r.message["Message-ID"] for r in smtp_server.received}
    d = _digest(seeded)
    with seeded.session() as s:  # as a dead run leaves it: the digest unfinished, the row claimed
        grace = s.scalar(select(Subscriber.id).where(Subscriber.email == "grace@example.com"))
        s.execute(update(Digest).where(Digest.id == d.id).values(status="sending", finished_at=None))
        s.execute(
            update(Delivery)
            .where(Delivery.digest_id == d.id, Delivery.subscriber_id == grace)
            .values(status="sending")
        )
    [again] = campaign.deliver_unfinished(seeded, cfg)
    assert again.finished and again.sent == 1
    resent = smtp_server.received[-1]
    assert resent.recipients == ["grace@example.com"]
    assert resent.message["Message-ID"] == first["grace@example.com"]
    assert f".{_key(seeded, 'grace@example.com')}@" in first["grace@example.com"]  # the stored key
    assert len(set(first.values())) == 3


def test_rows_attempted_before_the_upgrade_keep_their_message_id(tmp_path):
    """Migration 0004: a row already attempted went out with the old derived Message-ID, so
    it gets the key "" and its retry repeats that ID; the others get a key when claimed."""
    from alembic import command
    from sqlalchemy import text

    from mailer.db import Database, alembic_config
    from mailer.message import message_id

    url = f"sqlite:///{tmp_path / 'old.db'}"
    command.upgrade(alembic_config(url), "0003")
    db = Database(url)
    with db.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO subscribers (id, email, name, status, created_at, status_changed_at,"
                " token_nonce, bounce_count) VALUES (1, 'a@example.com', '', 'active', :t, :t, 'n', 0),"
                " (2, 'b@example.com', '', 'active', :t, :t, 'n', 0)"
            ),
            {"t": "2026-11-25 10:00:00.000000"},
        )
        conn.execute(
            text(
                "INSERT INTO digests (id, slot_key, slot_at, status, subject, html, text, note,"
                " created_at) VALUES (7, 'manual:x', :t, 'sending', 's', '', '', '', :t)"
            ),
            {"t": "2026-11-25 10:00:00.000000"},
        )
        conn.execute(
            text(
                "INSERT INTO deliveries (digest_id, subscriber_id, status, attempts, last_reply)"
                " VALUES (7, 1, 'retry', 1, '451 busy'), (7, 2, 'queued', 0, '')"
            )
        )
    db.migrate()
    with db.engine.connect() as conn:
        keys = dict(conn.execute(text("SELECT subscriber_id, message_key FROM deliveries")).all())
    db.dispose()
    assert keys == {1: "", 2: None}
    assert message_id("example.org", 7, 1, keys[1]) == "<digest-7.sub-1@example.org>"


def test_permanent_failure_is_recorded_and_the_subscriber_is_bounced(seeded, cfg, smtp_server):
    smtp_server.handler.rule = lambda stage, addr: (
        "550 5.1.1 no such user" if stage == "RCPT" and addr == "ada@example.com" else None
    )
    [summary] = campaign.send_now(seeded, cfg, T0)
    assert summary.finished and summary.failed == 1 and summary.sent == 2
    status, _, reply = _rows(seeded)["ada@example.com"]
    assert status == "failed" and reply == "550 5.1.1 no such user"
    with seeded.session() as s:
        ada = s.scalar(select(Subscriber).where(Subscriber.email == "ada@example.com"))
        assert ada.status == "bounced" and ada.bounce_count == 1
    # Not retried, and not in the next digest's audience.
    from mailer.articles import ArticleStore

    for i in range(3):
        ArticleStore(seeded, cfg).add(f"Next week {i}", f"Body of next week's story {i}.")
    smtp_server.handler.received.clear()
    campaign.send_now(seeded, cfg, T0 + timedelta(days=7))
    assert "ada@example.com" not in [r.recipients[0] for r in smtp_server.received]


def test_dropped_connection_during_data_is_reconnected_and_retried(seeded, cfg, smtp_server):
    dropped = []

    def rule(stage, addr):
        if stage == "DATA" and addr == "grace@example.com" and not dropped:
            dropped.append(addr)
            return DROP
        return None

    smtp_server.handler.rule = rule
    [summary] = campaign.send_now(seeded, cfg, T0)
    assert dropped and summary.finished and summary.sent == 3, _rows(seeded)
    assert sorted(r.recipients[0] for r in smtp_server.received) == sorted(EMAILS)


def test_server_down_keeps_every_delivery_pending_and_the_digest_unfinished(seeded, tmp_path, smtp_server):
    smtp_server.stop()
    cfg = load_config(str(write_config(tmp_path, smtp_server.port, smtp={"timeout": 2})))
    [summary] = campaign.send_now(seeded, cfg, T0)
    assert "unreachable" in summary.stopped and not summary.finished
    assert {v[0] for v in _rows(seeded).values()} == {"queued"}
    assert _digest(seeded).status == "sending"


def test_authentication_failure_stops_the_run_and_blames_no_recipient(seeded, cfg, smtp_server):
    smtp_server.handler.rule = lambda stage, addr: (
        "535 5.7.8 authentication credentials invalid" if stage == "MAIL" else None
    )
    [summary] = campaign.send_now(seeded, cfg, T0)
    assert "535 5.7.8" in summary.stopped
    assert {v[:2] for v in _rows(seeded).values()} == {("queued", 0)}
    with seeded.session() as s:
        assert {sub.status for sub in s.scalars(select(Subscriber))} == {"active"}


def test_too_many_consecutive_failures_pause_the_run(seeded, tmp_path, smtp_server):
    cfg = load_config(str(write_config(tmp_path, smtp_server.port, delivery={"max_consecutive_errors": 2})))
    for i in range(20):
        SubscriberStore(seeded).add(f"reader{i}@example.com")
    smtp_server.handler.rule = lambda stage, addr: "452 4.2.2 over quota" if stage == "RCPT" else None
    [summary] = campaign.send_now(seeded, cfg, T0)
    assert summary.stopped.startswith("paused after")
    statuses = [v[0] for v in _rows(seeded).values()]
    # The run stops once the limit is reached; only messages already in flight on the
    # other connections finish, the rest stay queued for a later run.
    assert 2 <= statuses.count("retry") <= 2 + cfg.smtp.connections - 1
    assert statuses.count("queued") == 23 - statuses.count("retry")
    assert _digest(seeded).next_run_at is not None and "452" in _digest(seeded).last_error


def test_two_deliverers_at_once_never_send_a_message_twice(seeded, cfg, smtp_server):
    for i in range(40):
        SubscriberStore(seeded).add(f"reader{i}@example.com")
    smtp_server.handler.delay = 0.005
    d = digests.build(seeded, cfg, digests.manual_slot(T0))
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(delivery.deliver(seeded, cfg, d.id))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    recipients = [r.recipients[0] for r in smtp_server.received]
    assert len(recipients) == len(set(recipients)) == 43
    assert sorted(r.busy for r in results) == [False, True]


def test_test_copy_goes_to_one_address_and_changes_nothing(seeded, cfg, smtp_server, run_cli):
    result = run_cli("digest", "send", "--to", "editor@example.com")
    assert result.exit_code == 0, result.output
    assert [r.recipients for r in smtp_server.received] == [["editor@example.com"]]
    assert smtp_server.received[0].message["Subject"].startswith("[TEST] ")
    with seeded.session() as s:
        assert s.scalar(select(Digest.id)) is None
        assert all(a.digest_id is None for a in s.scalars(select(Article)))


@pytest.mark.parametrize("args", [[], ["--now", "--to", "x@example.com"]])
def test_send_needs_exactly_one_of_now_or_to(run_cli, args):
    result = run_cli("digest", "send", *args)
    assert result.exit_code == 1 and "exactly one of --now or --to" in result.output


def test_unsubscribing_during_a_send_stops_mail_even_for_an_already_claimed_row(seeded, cfg, smtp_server):
    for i in range(30):
        SubscriberStore(seeded).add(f"reader{i:02d}@example.com")
    smtp_server.handler.delay = 0.01
    late = "reader29@example.com"

    def unsubscribe_early(summary, _n):
        if summary.sent == 2:
            # Every row was claimed (set to `sending`) in the first batch: only the re-check
            # just before each message can keep this one from going out.
            SubscriberStore(seeded).unsubscribe(late)

    [summary] = campaign.send_now(seeded, cfg, T0, on_progress=unsubscribe_early)
    assert summary.finished
    assert late not in [r.recipients[0] for r in smtp_server.received]
    assert _rows(seeded)[late][0] == "skipped"
    assert len(smtp_server.received) == 32
