"""A misbehaving SMTP server: temporary and permanent replies, outages, give-up, kill -9."""

from __future__ import annotations

import collections
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time
from sqlalchemy import func, select

from mailer import campaign
from mailer.config import load_config
from mailer.models import Article, Delivery, Digest, Subscriber
from mailer.service import Service
from mailer.subscribers import SubscriberStore
from tests.conftest import ROOT, SEEDS, populate, write_config
from tests.smtp_server import SmtpServer

T0 = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)


def _statuses(db) -> dict[str, tuple[str, str]]:
    with db.session() as s:
        q = select(Subscriber.email, Delivery.status, Delivery.last_reply).join(
            Subscriber, Subscriber.id == Delivery.subscriber_id
        )
        return {email: (status, reply) for email, status, reply in s.execute(q)}


def _digest(db) -> Digest:
    with db.session() as s:
        return s.scalars(select(Digest).order_by(Digest.id.desc())).first()


@pytest.mark.parametrize(
    "reply",
    [
        "421 4.3.2 closing, try later",
        "450 4.2.1 mailbox busy",
        "451 4.3.0 local error",
        "452 4.2.2 over quota",
    ],
)
def test_temporary_replies_are_retried_with_backoff_and_delivered_in_the_end(seeded, cfg, smtp_server, reply):
    refusing = [True]
    smtp_server.handler.rule = lambda stage, addr: (
        reply if stage == "RCPT" and addr == "ada@example.com" and refusing[0] else None
    )
    with freeze_time(T0):
        campaign.send_now(seeded, cfg, T0)
    assert _statuses(seeded)["ada@example.com"] == ("retry", reply)
    # Second failure: the back-off grows (1 minute, then 5).
    with freeze_time(T0 + timedelta(minutes=1, seconds=1)):
        campaign.deliver_unfinished(seeded, cfg)
    with seeded.session() as s:
        row = s.scalar(select(Delivery).join(Subscriber).where(Subscriber.email == "ada@example.com"))
        assert row.attempts == 2
        assert row.next_attempt_at - (T0 + timedelta(minutes=1, seconds=1)) >= timedelta(
            minutes=5
        ) - timedelta(seconds=2)
    refusing[0] = False
    with freeze_time(T0 + timedelta(minutes=7)):
        [summary] = campaign.deliver_unfinished(seeded, cfg)
    assert summary.finished
    got = [r for r in smtp_server.received if r.recipients == ["ada@example.com"]]
    assert len(got) == 1
    assert _statuses(seeded)["ada@example.com"][0] == "sent"


@pytest.mark.parametrize(
    "reply",
    [
        "550 5.1.1 user unknown",
        "551 5.1.6 user has moved",
        "553 5.1.3 bad destination mailbox address syntax",
        # A policy refusal at RCPT (Postfix's access map) is about that recipient only.
        "554 5.7.1 <zoe@example.com>: Recipient address rejected: Access denied",
    ],
)
def test_permanent_replies_fail_the_delivery_and_bounce_the_subscriber(seeded, cfg, smtp_server, reply):
    smtp_server.handler.rule = lambda stage, addr: (
        reply if stage == "RCPT" and addr == "zoe@example.com" else None
    )
    [summary] = campaign.send_now(seeded, cfg, T0)
    assert summary.finished and summary.failed == 1
    assert _statuses(seeded)["zoe@example.com"] == ("failed", reply)
    with seeded.session() as s:
        assert s.scalar(select(Subscriber.status).where(Subscriber.email == "zoe@example.com")) == "bounced"


def test_bounce_threshold_is_configurable(seeded, tmp_path, smtp_server):
    cfg = load_config(str(write_config(tmp_path, smtp_server.port, delivery={"bounce_threshold": 2})))
    smtp_server.handler.rule = lambda stage, addr: "550 5.1.1 no" if addr == "zoe@example.com" else None
    campaign.send_now(seeded, cfg, T0)
    with seeded.session() as s:
        zoe = s.scalar(select(Subscriber).where(Subscriber.email == "zoe@example.com"))
        assert (zoe.status, zoe.bounce_count) == ("active", 1)


@pytest.mark.parametrize(
    ("stage", "reply"),
    [
        ("MAIL", "535 5.7.8 authentication failed"),
        ("MAIL", "530 5.7.0 must issue a STARTTLS command first"),
        # A relay that will not relay for us refuses every reader alike: nobody is bounced.
        ("RCPT", "554 5.7.1 <ada@example.com>: Relay access denied"),
        ("RCPT", "550 5.7.1 Unable to relay for ada@example.com"),
    ],
)
def test_configuration_errors_stop_the_run_and_keep_everything_pending(
    seeded, cfg, smtp_server, stage, reply
):
    smtp_server.handler.rule = lambda st, addr: reply if st == stage else None
    [summary] = campaign.send_now(seeded, cfg, T0)
    assert reply in summary.stopped and not summary.finished
    assert {v[0] for v in _statuses(seeded).values()} == {"queued"}
    with seeded.session() as s:
        assert {sub.status for sub in s.scalars(select(Subscriber))} == {"active"}


def test_a_server_that_is_down_is_retried_on_a_timer_with_backoff(seeded, tmp_path, smtp_server):
    port = smtp_server.port
    smtp_server.stop()
    cfg = load_config(str(write_config(tmp_path, port, smtp={"timeout": 2})))
    service = Service(seeded, cfg)
    with freeze_time(T0 + timedelta(seconds=1)):
        service.tick()  # builds the digest, cannot connect
    d = _digest(seeded)
    assert d.status == "sending" and d.run_failures == 1 and "unreachable" in d.last_error
    assert d.next_run_at == T0 + timedelta(seconds=1, minutes=1)
    with freeze_time(T0 + timedelta(seconds=30)):
        service.tick()  # backing off: no new attempt
    assert _digest(seeded).run_failures == 1
    with freeze_time(T0 + timedelta(minutes=1, seconds=2)):
        service.tick()
    d = _digest(seeded)
    assert d.run_failures == 2 and d.next_run_at == T0 + timedelta(minutes=3, seconds=2)
    # The server comes back: the next due tick delivers everything.
    back = SmtpServer()
    back.controller.port = port
    back.start()
    try:
        with freeze_time(T0 + timedelta(minutes=3, seconds=3)):
            service.tick()
        assert sorted(r.recipients[0] for r in back.received) == [
            "ada@example.com",
            "grace@example.com",
            "zoe@example.com",
        ]
        assert _digest(seeded).status == "sent"
    finally:
        back.stop()


def test_leftovers_are_marked_failed_after_the_give_up_age(seeded, tmp_path, smtp_server):
    port = smtp_server.port
    smtp_server.stop()
    cfg = load_config(str(write_config(tmp_path, port, smtp={"timeout": 2}, delivery={"give_up_hours": 2})))
    with freeze_time(T0):
        campaign.send_now(seeded, cfg, T0)
    with freeze_time(T0 + timedelta(hours=2, minutes=1)):
        [summary] = campaign.deliver_unfinished(seeded, cfg)
    assert summary.finished
    assert {v for v in _statuses(seeded).values()} == {("failed", "gave up after 2 hours")}
    # It reached nobody: the digest failed and its articles wait for the next one.
    assert _digest(seeded).status == "failed"
    with seeded.session() as s:
        assert s.scalar(select(func.count()).select_from(Article).where(Article.digest_id.is_not(None))) == 0
    # An operator who fixed the relay can still send it: the give-up clock restarts.
    from mailer import delivery as delivery_mod

    back = SmtpServer()
    back.controller.port = port
    back.start()
    try:
        with freeze_time(T0 + timedelta(hours=3)):
            assert delivery_mod.retry_failed(seeded, _digest(seeded).id) == 3
            [again] = campaign.deliver_unfinished(seeded, cfg)
        assert again.finished and again.sent == 3 and len(back.received) == 3
    finally:
        back.stop()


def test_retry_command_puts_failed_deliveries_back_in_the_queue(seeded, cfg, smtp_server, run_cli):
    smtp_server.handler.rule = lambda stage, addr: (
        "554 5.0.0 transient policy" if addr == "ada@example.com" else None
    )
    from mailer.config import load_config as _load

    cfg2 = _load(str(write_config(cfg.root, smtp_server.port, delivery={"bounce_threshold": 5})))
    campaign.send_now(seeded, cfg2, T0)
    status = run_cli("digest", "status", "--json")
    assert '"failed": 1' in status.output and "554 5.0.0 transient policy" in status.output
    smtp_server.handler.rule = None
    result = run_cli("digest", "retry", str(_digest(seeded).id))
    assert result.exit_code == 0 and "1 failed deliveries" in result.output
    assert _digest(seeded).status == "sending"
    campaign.deliver_unfinished(seeded, cfg2)
    assert _statuses(seeded)["ada@example.com"][0] == "sent"
    assert _digest(seeded).status == "sent"


def test_kill_9_at_random_moments_loses_nobody_and_duplicates_at_most_the_messages_in_flight(
    tmp_path, smtp_server, database_url
):
    """Ten kill -9s at random points of one send, restarting each time, then a clean finish.
    Each restart takes over when the killed run's lease runs out (3 s here)."""
    config_path = write_config(tmp_path, smtp_server.port, database_url, delivery={"lease_seconds": 3})
    recipients = 400
    cfg = populate(config_path, recipients)
    smtp_server.handler.delay = 0.004
    rng = random.Random(20261125)
    kills = 0
    for _ in range(10):
        before = len(smtp_server.received)
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailer", "--config", str(config_path), "digest", "send", "--now"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        target = before + rng.randint(1, 25)
        deadline = time.monotonic() + 30
        while len(smtp_server.received) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        if proc.poll() is not None:
            break  # it finished before we could kill it
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    final = subprocess.run(
        [sys.executable, "-m", "mailer", "--config", str(config_path), "digest", "send", "--now"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert final.returncode == 0, final.stderr
    counts = collections.Counter(r.recipients[0] for r in smtp_server.received)
    assert len(counts) == recipients, "somebody was never mailed"
    duplicates = sum(n - 1 for n in counts.values())
    print(f"kill -9 x{kills}: {recipients} recipients, {duplicates} duplicate(s)")
    assert kills >= 5
    assert duplicates <= kills * cfg.smtp.connections


def test_max_per_second_is_never_exceeded_across_connections(seeded, tmp_path, smtp_server):
    cfg = load_config(str(write_config(tmp_path, smtp_server.port, smtp={"max_per_second": 20})))
    for i in range(37):
        SubscriberStore(seeded).add(f"reader{i}@example.com")
    campaign.send_now(seeded, cfg, T0)
    stamps = sorted(r.at for r in smtp_server.received)
    assert len(stamps) == 40
    busiest = max(sum(1 for t in stamps if s <= t < s + 1.0) for s in stamps)
    assert busiest <= 20
    # Paced evenly, not in bursts: 40 messages take about two seconds.
    assert 1.8 <= stamps[-1] - stamps[0] <= 2.6


def test_hourly_quota_ends_the_run_and_resumes_when_it_frees_up(seeded, tmp_path, smtp_server):
    cfg = load_config(str(write_config(tmp_path, smtp_server.port, smtp={"max_per_hour": 2})))
    [summary] = campaign.send_now(seeded, cfg, T0)
    assert len(smtp_server.received) == 2 and not summary.finished and not summary.stopped
    d = _digest(seeded)
    assert d.next_run_at is not None and d.run_failures == 0
    assert sorted(v[0] for v in _statuses(seeded).values()) == ["queued", "sent", "sent"]


@pytest.mark.parametrize("reply", ["554 5.6.0 message rejected: content", "552 5.3.4 message too large"])
def test_a_message_refused_at_data_stops_the_run_without_bouncing_anyone(seeded, cfg, smtp_server, reply):
    smtp_server.handler.rule = lambda stage, addr: reply if stage == "DATA" else None
    [summary] = campaign.send_now(seeded, cfg, T0)
    assert reply in summary.stopped and not summary.finished
    assert {v[0] for v in _statuses(seeded).values()} == {"queued"}
    with seeded.session() as s:
        assert {(sub.status, sub.bounce_count) for sub in s.scalars(select(Subscriber))} == {("active", 0)}


def test_a_mailbox_refused_at_data_is_that_recipients_permanent_failure(seeded, cfg, smtp_server):
    smtp_server.handler.rule = lambda stage, addr: (
        "550 5.1.1 mailbox unavailable" if stage == "DATA" and addr == "ada@example.com" else None
    )
    [summary] = campaign.send_now(seeded, cfg, T0)
    assert summary.finished and summary.failed == 1 and summary.sent == 2


def test_no_digest_is_built_for_an_empty_audience(db, cfg):
    from mailer import digest as digests
    from mailer.articles import ArticleStore

    ArticleStore(db, cfg).import_paths([str(SEEDS)])
    d = digests.build(db, cfg, digests.manual_slot(T0))
    assert d.status == "skipped" and d.note == "skipped: no active subscribers"
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Article).where(Article.digest_id.is_not(None))) == 0


def test_hourly_quota_counts_what_earlier_runs_sent(seeded, tmp_path, smtp_server):
    cfg = load_config(str(write_config(tmp_path, smtp_server.port, smtp={"max_per_hour": 2})))
    campaign.send_now(seeded, cfg, T0)
    [again] = campaign.send_now(seeded, cfg, T0)
    assert len(smtp_server.received) == 2 and again.sent == 0
