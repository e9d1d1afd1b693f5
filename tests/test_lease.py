"""The delivery lease: one run per digest, and a dead run always taken over, whatever its pid."""

from __future__ import annotations

import collections
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from mailer import campaign, delivery
from mailer import digest as digests
from mailer.delivery import queue
from mailer.errors import MailerError
from mailer.models import Delivery, Digest
from mailer.subscribers import SubscriberStore
from tests.conftest import ROOT, populate, write_config

T0 = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)
LEASE = timedelta(seconds=60)


def _hold(db, digest_id: int, owner: str, until: datetime) -> None:
    with db.session() as s:
        s.execute(update(Digest).where(Digest.id == digest_id).values(lease_owner=owner, lease_until=until))


def test_an_expired_lease_is_taken_over_even_when_its_pid_is_alive(seeded, cfg, smtp_server):
    # A container restarts its process as PID 1 again; our parent's pid is just as alive.
    d = digests.build(seeded, cfg, digests.manual_slot(T0))
    for pid in (1, os.getpid(), os.getppid()):
        _hold(seeded, d.id, f"{socket.gethostname()}:{pid}:deadrun", datetime.now(UTC) - timedelta(seconds=1))
    with seeded.session() as s:  # what the dead run had in flight
        s.execute(update(Delivery).where(Delivery.digest_id == d.id).values(status="sending"))
    summary = delivery.deliver(seeded, cfg, d.id)
    assert summary.finished and summary.sent == 3 and not summary.busy
    assert len(smtp_server.received) == 3


def test_a_lease_that_has_not_run_out_keeps_other_runs_away_and_status_names_its_holder(
    seeded, cfg, smtp_server, run_cli
):
    d = digests.build(seeded, cfg, digests.manual_slot(T0))
    until = datetime.now(UTC) + timedelta(seconds=45)
    _hold(seeded, d.id, "otherhost:1:5f3a9c", until)
    summary = delivery.deliver(seeded, cfg, d.id)
    assert summary.busy and summary.holder == queue.Holder("otherhost:1:5f3a9c", until)
    assert smtp_server.received == []
    out = run_cli("digest", "status").output
    local = until.astimezone(cfg.zone)
    assert f"being delivered by otherhost:1:5f3a9c, lease until {local:%H:%M:%S %Z}" in out


def test_send_now_takes_over_a_digest_whose_run_stopped_renewing_its_lease(seeded, cfg, smtp_server, run_cli):
    d = digests.build(seeded, cfg, digests.manual_slot(T0))
    _hold(seeded, d.id, "gone:1:deadrun", datetime.now(UTC) + timedelta(seconds=2))
    result = run_cli("digest", "send", "--now")
    assert result.exit_code == 0, result.output
    assert "another run is delivering it right now (gone:1:deadrun" in result.output
    assert "taking over if it has stopped" in result.output
    assert f"digest #{d.issue_number} finished" in result.output
    assert len(smtp_server.received) == 3


def test_send_now_leaves_a_digest_to_a_run_that_renews_its_lease(seeded, cfg, smtp_server):
    d = digests.build(seeded, cfg, digests.manual_slot(T0))
    _hold(seeded, d.id, "alive:1:liverun", datetime.now(UTC) + timedelta(seconds=2))
    waited = []

    def renew(summary):  # the holder renews while we wait, as a live run does
        waited.append(summary.holder)
        _hold(seeded, d.id, "alive:1:liverun", datetime.now(UTC) + timedelta(seconds=60))

    [summary] = campaign.send_now(seeded, cfg, T0, on_wait=renew)
    assert waited and summary.busy and summary.holder.owner == "alive:1:liverun"
    assert smtp_server.received == []


def test_a_run_whose_lease_was_taken_stops_with_one_line(seeded, cfg, smtp_server):
    for i in range(5):
        SubscriberStore(seeded).add(f"reader{i}@example.com")
    d = digests.build(seeded, cfg, digests.manual_slot(T0))

    def steal(summary, _n):
        if summary.sent == 1:
            _hold(seeded, d.id, "thief:1:other", datetime.now(UTC) + timedelta(seconds=60))

    with pytest.raises(MailerError, match="another run took over this digest's delivery"):
        delivery.deliver(seeded, cfg, d.id, on_progress=steal)
    # It stopped at its next message (those in flight on the other connections went
    # out), and left the thief's lease alone.
    assert len(smtp_server.received) <= 1 + cfg.smtp.connections
    with seeded.session() as s:
        assert s.scalar(select(Digest.lease_owner).where(Digest.id == d.id)) == "thief:1:other"


def test_two_runs_racing_for_one_lease_get_it_once(seeded, cfg):
    d = digests.build(seeded, cfg, digests.manual_slot(T0))
    with seeded.session() as s:
        first = queue.acquire(s, d.id, "a:1:x", T0, LEASE)
    with seeded.session() as s:
        second = queue.acquire(s, d.id, "b:2:y", T0 + timedelta(seconds=59), LEASE)
    with seeded.session() as s:
        third = queue.acquire(s, d.id, "c:3:z", T0 + timedelta(seconds=61), LEASE)
    assert first is None and second == queue.Holder("a:1:x", T0 + LEASE) and third is None


# ---------------------------------------------------------------- a real container restart

RECIPIENTS = 60
LEASE_SECONDS = 5


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs root and unshare")
def test_a_sender_killed_in_a_pid_namespace_is_taken_over_when_restarted_the_same_way(
    tmp_path, smtp_server
):
    config_path = write_config(tmp_path, smtp_server.port, delivery={"lease_seconds": LEASE_SECONDS})
    populate(config_path, RECIPIENTS)
    args = ["--config", str(config_path), "digest", "send", "--now"]
    smtp_server.handler.delay = 0.05

    def contained() -> subprocess.Popen:
        # What a container is: its own PID namespace, where mailer is PID 1 every time.
        return subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "mailer", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    first = contained()
    deadline = time.monotonic() + 30
    while len(smtp_server.received) < 10:
        assert time.monotonic() < deadline, "the first run sent nothing"
        time.sleep(0.01)
    # kill -9 the namespace's PID 1 (the child of unshare), as a container runtime does.
    inner = int(subprocess.check_output(["pgrep", "-P", str(first.pid)], text=True).split()[0])
    os.kill(inner, signal.SIGKILL)
    first.wait(timeout=10)
    assert len(smtp_server.received) < RECIPIENTS

    started = time.monotonic()
    second = contained()
    out, err = second.communicate(timeout=LEASE_SECONDS + 60)
    assert second.returncode == 0, err
    assert "taking over if it has stopped" in err and "finished" in out
    assert time.monotonic() - started < LEASE_SECONDS + 30
    counts = collections.Counter(r.recipients[0] for r in smtp_server.received)
    assert len(counts) == RECIPIENTS, "somebody was skipped"
    assert sum(n - 1 for n in counts.values()) <= 4  # at most one per connection
