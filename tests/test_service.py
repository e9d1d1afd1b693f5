"""The scheduled job end to end: time moved to the slot with freezegun, real SMTP server."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from freezegun import freeze_time
from sqlalchemy import func, select

from mailer import campaign
from mailer.articles import ArticleStore
from mailer.config import load_config
from mailer.db import Database
from mailer.models import Article, Delivery, Digest
from mailer.service import Service
from tests.conftest import SEEDS, write_config

# The repository config sends on Mondays at 08:00 Europe/Berlin (07:00 UTC in winter).
SLOT = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)


def _digests(db: Database) -> list[Digest]:
    with db.session() as s:
        return list(s.scalars(select(Digest).order_by(Digest.id)))


def _sections(msg) -> list[str]:
    html = msg.get_body(("html",)).get_content()
    order = ["ai", "chips", "cyber", "robotics", "policy", "business", "other"]
    return [slug for slug in order if f'id="{slug}"' in html]


def test_end_to_end_scheduled_digest_reaches_every_active_subscriber_exactly_once(run_cli, cfg, smtp_server):
    assert run_cli("articles", "import", str(SEEDS)).exit_code == 0
    for email in ("ada@example.com", "grace@example.com", "zoe@example.com", "bob@example.com"):
        assert run_cli("subscribers", "add", email).exit_code == 0
    assert run_cli("subscribers", "remove", "bob@example.com").exit_code == 0
    db = Database(cfg.database_url)
    with db.session() as s:
        unsent = s.scalar(select(func.count()).select_from(Article).where(Article.sent_at.is_(None)))
    service = Service(db, cfg)

    with freeze_time(SLOT + timedelta(seconds=5)):
        service.tick()

    got = sorted(r.recipients[0] for r in smtp_server.received)
    assert got == ["ada@example.com", "grace@example.com", "zoe@example.com"]
    for r in smtp_server.received:
        msg = r.message
        assert msg["Subject"].startswith("Tech Policy Weekly #1: ")
        assert _sections(msg) == ["ai", "chips", "cyber", "robotics", "policy", "business"]
    with db.session() as s:
        assert (
            s.scalar(select(func.count()).select_from(Article).where(Article.sent_at.is_not(None))) == unsent
        )
    [digest] = _digests(db)
    assert digest.status == "sent" and digest.slot_key == "2026-11-30T08:00"

    # Running the job again (a restart, the next minute's tick) sends nothing.
    with freeze_time(SLOT + timedelta(minutes=1)):
        service.tick()
        service.tick()
    assert len(smtp_server.received) == 3
    assert len(_digests(db)) == 1
    db.dispose()


def test_nothing_is_sent_before_the_slot(seeded, cfg, smtp_server):
    with freeze_time(SLOT - timedelta(minutes=1)):
        Service(seeded, cfg).tick()
    assert smtp_server.received == [] and _digests(seeded) == []


def test_a_slot_missed_while_down_is_sent_on_return_within_the_grace_period(seeded, cfg, smtp_server):
    # The service was down at 08:00 and starts again at 13:00: the start-up tick sends.
    with freeze_time(SLOT + timedelta(hours=5)):
        Service(seeded, cfg).tick()
    assert len(smtp_server.received) == 3
    assert _digests(seeded)[0].slot_key == "2026-11-30T08:00"


def test_a_slot_missed_beyond_the_grace_period_is_not_sent_late(seeded, cfg, smtp_server):
    with freeze_time(SLOT + timedelta(hours=13)):
        Service(seeded, cfg).tick()
    assert smtp_server.received == [] and _digests(seeded) == []
    # The articles wait for the next slot.
    with freeze_time(SLOT + timedelta(days=7)):
        Service(seeded, cfg).tick()
    assert len(smtp_server.received) == 3


def _weekly_sunday(tmp_path, smtp_server, cron):
    return load_config(
        str(write_config(tmp_path, smtp_server.port, schedule={"cron": cron, "grace_hours": 2}))
    )


def test_dst_spring_forward_week_sends_once_at_local_time(db, tmp_path, smtp_server):
    cfg = _weekly_sunday(tmp_path, smtp_server, "0 8 * * sun")
    ArticleStore(db, cfg).import_paths([str(SEEDS)])
    from mailer.subscribers import SubscriberStore

    SubscriberStore(db).add("ada@example.com")
    service = Service(db, cfg)
    # 29 March 2026: clocks go forward at 02:00; 08:00 CEST is 06:00 UTC.
    with freeze_time(datetime(2026, 3, 29, 5, 59, tzinfo=UTC)):
        service.tick()
    assert smtp_server.received == []
    with freeze_time(datetime(2026, 3, 29, 6, 0, 30, tzinfo=UTC)):
        service.tick()
    assert len(smtp_server.received) == 1
    assert [d.slot_key for d in _digests(db)] == ["2026-03-29T08:00"]


def test_dst_fall_back_night_does_not_send_twice_when_the_hour_repeats(db, tmp_path, smtp_server):
    cfg = _weekly_sunday(tmp_path, smtp_server, "30 2 * * sun")
    store = ArticleStore(db, cfg)
    store.import_paths([str(SEEDS)])
    from mailer.subscribers import SubscriberStore

    SubscriberStore(db).add("ada@example.com")
    service = Service(db, cfg)
    # 25 October 2026: 02:30 CEST (00:30 UTC), then 02:30 CET again (01:30 UTC).
    with freeze_time(datetime(2026, 10, 25, 0, 30, 5, tzinfo=UTC)):
        service.tick()
    store.add("Fresh story", "Imported between the two 02:30s, it must wait a week.")
    store.add("Fresh story 2", "Another one imported in between.")
    store.add("Fresh story 3", "And a third, so the minimum is met.")
    with freeze_time(datetime(2026, 10, 25, 1, 30, 5, tzinfo=UTC)):
        service.tick()
    assert len(smtp_server.received) == 1
    assert [d.slot_key for d in _digests(db)] == ["2026-10-25T02:30"]
    # The next week's slot picks the new articles up.
    with freeze_time(datetime(2026, 11, 1, 1, 30, 5, tzinfo=UTC)):
        service.tick()
    assert len(smtp_server.received) == 2


def test_two_services_on_one_database_make_one_digest_per_slot(seeded, cfg, smtp_server):
    second_db = Database(cfg.database_url)
    services = [Service(seeded, cfg), Service(second_db, cfg)]
    with freeze_time(SLOT + timedelta(seconds=1)):
        threads = [threading.Thread(target=s.tick) for s in services]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        services[0].tick()
    assert len(_digests(seeded)) == 1
    recipients = [r.recipients[0] for r in smtp_server.received]
    assert sorted(recipients) == sorted(set(recipients)) and len(recipients) == 3
    second_db.dispose()


def test_stopping_mid_send_and_resuming_mails_everyone_once(seeded, cfg, smtp_server):
    from mailer.subscribers import SubscriberStore

    for i in range(30):
        SubscriberStore(seeded).add(f"reader{i}@example.com")
    stop = threading.Event()
    handed_over_at_stop: list[int] = []

    def stop_after_ten(summary, _n):
        if summary.sent >= 10 and not stop.is_set():
            handed_over_at_stop.append(len(smtp_server.received))
            stop.set()

    [first] = campaign.send_now(seeded, cfg, SLOT, stop, stop_after_ten)
    # After the stop, each connection finishes at most the message it is on; every
    # message handed to the relay is recorded as sent.
    assert not first.finished and first.sent == len(smtp_server.received)
    assert first.sent - handed_over_at_stop[0] <= cfg.smtp.connections
    with seeded.session() as s:
        assert s.scalar(select(func.count()).where(Delivery.status == "sending")) == 0
    [second] = campaign.deliver_unfinished(seeded, cfg)
    assert second.finished and second.sent == 33 - first.sent
    recipients = [r.recipients[0] for r in smtp_server.received]
    assert len(recipients) == len(set(recipients)) == 33
