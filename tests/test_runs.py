"""Delivery runs: any number of processes deliver one digest together, nobody gets a
message twice, and a run that died is always replaced, whatever its pid was."""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, select, update

from mailer import delivery
from mailer import digest as digests
from mailer.delivery import queue
from mailer.errors import MailerError
from mailer.models import Delivery, DeliveryRun
from mailer.subscribers import SubscriberStore
from tests.conftest import ROOT, populate, write_config

T0 = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)
LEASE = timedelta(seconds=60)


def _run(db, digest_id: int, owner: str, expires_at: datetime, rows: int = 0) -> None:
    """Another run on the digest, holding `rows` rows in flight."""
    with db.session() as s:
        s.add(DeliveryRun(id=owner, digest_id=digest_id, started_at=T0, expires_at=expires_at))
        s.flush()
        ids = s.scalars(
            select(Delivery.id).where(Delivery.digest_id == digest_id).order_by(Delivery.id)
        ).all()
        s.execute(
            update(Delivery)
            .where(Delivery.id.in_(ids[:rows]))
            .values(status="sending", claimed_by=owner, attempts=1)
        )


def _mailed(smtp_server) -> collections.Counter:
    return collections.Counter(r.recipients[0] for r in smtp_server.received)


def test_rows_in_flight_with_a_run_that_stopped_renewing_are_taken_over(seeded, cfg, smtp_server):
    # Its owner id names a pid that is alive (ours): a pid says nothing, the expiry does.
    d = digests.build(seeded, cfg, digests.manual_slot(T0))
    _run(seeded, d.id, f"host:{os.getpid()}:deadrun", datetime.now(UTC) - timedelta(seconds=1), rows=2)
    summary = delivery.deliver(seeded, cfg, d.id)
    assert summary.finished and summary.sent == 3
    assert set(_mailed(smtp_server).values()) == {1} and len(_mailed(smtp_server)) == 3
    with seeded.session() as s:
        assert s.scalar(select(DeliveryRun.id)) is None  # the dead run and ours are gone


def test_a_live_run_keeps_its_rows_while_another_delivers_the_rest_and_status_names_both(
    seeded, cfg, smtp_server, run_cli, monkeypatch
):
    d = digests.build(seeded, cfg, digests.manual_slot(T0))
    alive = datetime.now(UTC) + timedelta(seconds=60)
    _run(seeded, d.id, "otherhost:1:liverun", alive, rows=1)
    out: list[str] = []

    def look(summary, _n):
        if not out:
            out.append(run_cli("digest", "status").output)
            # The other run finishes its row meanwhile, as a live one does.
            with seeded.session() as s:
                s.execute(
                    update(Delivery)
                    .where(Delivery.claimed_by == "otherhost:1:liverun")
                    .values(status="sent", sent_at=datetime.now(UTC))
                )

    summary = delivery.deliver(seeded, cfg, d.id, on_progress=look)
    assert summary.finished and summary.sent == 2, summary
    assert len(smtp_server.received) == 2  # the other run's row was left to it
    local = alive.astimezone(cfg.zone)
    assert (
        f"being delivered by otherhost:1:liverun (alive until {local:%H:%M:%S %Z} unless it renews)" in out[0]
    )
    assert "being delivered by " + queue.new_owner().rsplit(":", 1)[0] in out[0]


def test_a_run_that_was_declared_dead_stops_at_its_next_message_with_one_line(seeded, cfg, smtp_server):
    for i in range(5):
        SubscriberStore(seeded).add(f"reader{i}@example.com")
    d = digests.build(seeded, cfg, digests.manual_slot(T0))

    handed_over_when_replaced: list[int] = []

    def replaced(summary, _n):
        if summary.sent == 1 and not handed_over_when_replaced:
            # Another run found this one's heartbeat expired.
            with seeded.session() as s:
                s.execute(delete(DeliveryRun))
                s.execute(
                    update(Delivery)
                    .where(Delivery.status == "sending")
                    .values(status="queued", claimed_by=None)
                )
            handed_over_when_replaced.append(len(smtp_server.received))

    with pytest.raises(MailerError, match="this run stalled past its lease and was replaced"):
        delivery.deliver(seeded, cfg, d.id, on_progress=replaced)
    # Only the messages already past their last check on each connection went out.
    assert len(smtp_server.received) - handed_over_when_replaced[0] <= cfg.smtp.connections


def test_claims_of_two_runs_never_overlap(seeded, cfg):
    for i in range(20):
        SubscriberStore(seeded).add(f"reader{i}@example.com")
    d = digests.build(seeded, cfg, digests.manual_slot(T0))
    now = datetime.now(UTC)
    with seeded.session() as s:
        queue.join(s, d.id, "a:1:x", now, LEASE)
        queue.join(s, d.id, "b:2:y", now, LEASE)
    with seeded.session() as s:
        first, _, _ = queue.claim(s, d.id, "a:1:x", now, LEASE, 10)
    with seeded.session() as s:
        second, _, elsewhere = queue.claim(s, d.id, "b:2:y", now, LEASE, 100)
    a, b = {c.delivery_id for c in first}, {c.delivery_id for c in second}
    assert len(a) == 10 and len(b) == 13 and not a & b and elsewhere == 10


# ---------------------------------------------------------------- real processes


def _send_now(config, wrap: list[str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [*(wrap or []), sys.executable, "-m", "mailer", "--config", str(config), "digest", "send", "--now"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_senders_on_one_digest_share_it_and_mail_everyone_once(tmp_path, smtp_server, database_url):
    config = write_config(tmp_path, smtp_server.port, database_url)
    populate(config, 400)
    smtp_server.handler.delay = 0.05  # 4 connections: about 80 messages/s, 5 s in all
    first = _send_now(config)
    deadline = time.monotonic() + 30
    while len(smtp_server.received) < 5:
        assert time.monotonic() < deadline, "the first sender sent nothing"
        time.sleep(0.01)
    second = _send_now(config)  # joins the digest in progress
    outs = [p.communicate(timeout=120) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    mailed = _mailed(smtp_server)
    assert len(mailed) == 400 and set(mailed.values()) == {1}
    # Both really worked on it: each run reports what it sent itself.
    sent = [int(out.split("this run sent ")[1].split(",")[0]) for out, _ in outs]
    assert all(n > 0 for n in sent) and sum(sent) == 400, outs
    assert sum("finished" in out for out, _ in outs) >= 1


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs root and unshare")
def test_a_sender_killed_in_a_pid_namespace_is_replaced_when_started_the_same_way(
    tmp_path, smtp_server, database_url
):
    lease = 5
    config = write_config(tmp_path, smtp_server.port, database_url, delivery={"lease_seconds": lease})
    populate(config, 60)
    smtp_server.handler.delay = 0.05
    # What a container is: its own PID namespace, where mailer is PID 1 every time.
    contained = ["unshare", "--pid", "--fork", "--mount-proc"]
    first = _send_now(config, contained)
    deadline = time.monotonic() + 30
    while len(smtp_server.received) < 10:
        assert time.monotonic() < deadline, "the first run sent nothing"
        time.sleep(0.01)
    # kill -9 the namespace's PID 1 (the child of unshare), as a container runtime does.
    inner = int(subprocess.check_output(["pgrep", "-P", str(first.pid)], text=True).split()[0])
    os.kill(inner, signal.SIGKILL)
    first.wait(timeout=10)
    assert len(smtp_server.received) < 60

    started = time.monotonic()
    second = _send_now(config, contained)
    out, err = second.communicate(timeout=lease + 60)
    assert second.returncode == 0, err
    assert "finished" in out, out
    assert time.monotonic() - started < lease + 30
    mailed = _mailed(smtp_server)
    assert len(mailed) == 60, "somebody was skipped"
    assert sum(n - 1 for n in mailed.values()) <= 4  # at most one per connection


def test_the_relays_hourly_quota_holds_for_every_run_together(tmp_path, smtp_server, database_url):
    config = write_config(
        tmp_path, smtp_server.port, database_url, smtp={"max_per_hour": 25, "connections": 2}
    )
    populate(config, 80)
    smtp_server.handler.delay = 0.05
    senders = [_send_now(config), _send_now(config)]
    outs = [p.communicate(timeout=120) for p in senders]
    assert [p.returncode for p in senders] == [0, 0], outs
    assert len(smtp_server.received) == 25, outs
    assert all("hourly quota used up" in out for out, _ in outs), outs


def test_two_senders_one_killed_the_other_finishes_and_mails_everyone_once(
    tmp_path, smtp_server, database_url
):
    lease = 3
    config = write_config(tmp_path, smtp_server.port, database_url, delivery={"lease_seconds": lease})
    populate(config, 300)
    smtp_server.handler.delay = 0.05
    doomed = _send_now(config)
    deadline = time.monotonic() + 30
    while len(smtp_server.received) < 10:
        assert time.monotonic() < deadline, "the first sender sent nothing"
        time.sleep(0.01)
    survivor = _send_now(config)  # joins the digest
    time.sleep(1.5)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=10)
    out, err = survivor.communicate(timeout=120)
    assert survivor.returncode == 0, err
    assert "finished" in out, out
    mailed = _mailed(smtp_server)
    assert len(mailed) == 300, "somebody was skipped"
    assert sum(n - 1 for n in mailed.values()) <= 4  # at most the killed run's connections


def test_two_services_at_one_slot_make_one_digest_and_mail_everyone_once(tmp_path, smtp_server, database_url):
    import os
    import urllib.request

    from tests.smtp_server import free_port

    # A daily slot a minute ago, inside the grace window: each service's start-up tick is due.
    slot = datetime.now(UTC) - timedelta(minutes=1)
    schedule = {"cron": f"{slot.minute} {slot.hour} * * *", "timezone": "UTC", "grace_hours": 1}
    configs = []
    for host in ("a", "b"):
        (tmp_path / host).mkdir()
        web = {"port": free_port()}
        configs.append(
            (write_config(tmp_path / host, smtp_server.port, database_url, schedule=schedule, web=web), web)
        )
    populate(configs[0][0], 100)
    smtp_server.handler.delay = 0.02
    env = {**os.environ, "MAILER_SECRET_KEY": "k" * 40, "PYTHONUNBUFFERED": "1"}
    services = [
        subprocess.Popen(
            [sys.executable, "-m", "mailer", "--config", str(c), "serve"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for c, _ in configs
    ]
    try:
        deadline = time.monotonic() + 60
        while len(smtp_server.received) < 100:
            assert time.monotonic() < deadline, f"only {len(smtp_server.received)} sent"
            assert all(p.poll() is None for p in services), [p.communicate() for p in services]
            time.sleep(0.05)
        time.sleep(1)  # anything still to come would be a duplicate
        for _, web in configs:  # both kept serving
            with urllib.request.urlopen(f"http://127.0.0.1:{web['port']}/healthz", timeout=5) as resp:
                assert resp.status == 200
    finally:
        for p in services:
            p.send_signal(signal.SIGTERM)
        errs = [p.communicate(timeout=30)[1] for p in services]
    mailed = _mailed(smtp_server)
    assert len(mailed) == 100 and set(mailed.values()) == {1}
    assert len({r.message["Subject"] for r in smtp_server.received}) == 1  # one digest
    assert all("Traceback" not in e for e in errs), errs
