"""What /metrics and /healthz report: the service's state, read from the database when asked.

The database is the only source of truth. Several instances may share one database and
any of them may have done the sending, so no number here is a counter kept in one
process: MailerCollector runs its queries at scrape time (prometheus_client calls
`collect` for every scrape of its registry), and every instance scraped reports the same
numbers, except its own up-time. A scrape while the database is unreachable still answers:
`mailer_database_up 0` and the up-time, nothing else (a number we cannot read is left out,
never reported as 0).

Health (/healthz) is three checks, each "ok", "unhealthy" or "skipped":
* database: a query on the schema's own table answers;
* scheduler: this process's APScheduler runs and its minute job is not overdue (a dead
  scheduler thread leaves it overdue). Only `mailer serve` runs one; it hands its
  ServiceHealth to the app (app.extensions[HEALTH_KEY]); without it the check is skipped;
* relay: no digest is in relay back-off (a run stopped on a relay-wide problem:
  Digest.last_error set and next_run_at still ahead; mailer.delivery sets both).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from apscheduler.schedulers.base import BaseScheduler
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, load_only

from mailer.bounces.ledger import rates
from mailer.db import Database
from mailer.errors import database_problem, is_dbapi_error
from mailer.models import Delivery, DeliveryStatus, Digest, DigestStatus, Feed, FeedStatus, utcnow

HEALTH_KEY = "mailer.health"  # app.extensions[HEALTH_KEY]: the ServiceHealth of `mailer serve`
IN_QUEUE = (DeliveryStatus.QUEUED, DeliveryStatus.RETRY, DeliveryStatus.SENDING)
SEND_WINDOWS = {"1m": timedelta(minutes=1), "5m": timedelta(minutes=5)}
FEED_RESULTS = ("ok", "failing", "gone", "never_polled")
CheckStatus = Literal["ok", "unhealthy", "skipped"]


@dataclass(frozen=True)
class ServiceHealth:
    """What `mailer serve` tells the app about itself (mailer.service.Service.start)."""

    started: float  # time.time() when the service started
    scheduler: BaseScheduler
    heartbeat_job: str  # a job that runs every `heartbeat` while the scheduler is alive
    heartbeat: timedelta

    def scheduler_problem(self, now: datetime) -> str:
        """ "" while the scheduler runs; else what is wrong with it."""
        if not self.scheduler.running:
            return "the scheduler is not running"
        job = self.scheduler.get_job(self.heartbeat_job)
        if job is None or job.next_run_time is None:
            return f"the scheduler has no {self.heartbeat_job!r} job"
        late = now - job.next_run_time
        if late > 2 * self.heartbeat:
            return f"the scheduler's {self.heartbeat_job!r} job is {int(late.total_seconds())} s overdue"
        return ""


@dataclass(frozen=True)
class LastDigest:
    id: int
    issue: int | None
    status: str
    finished_at: datetime


@dataclass(frozen=True)
class Snapshot:
    """Every number /metrics reports, from one read-only transaction."""

    deliveries: dict[str, int]  # every DeliveryStatus, 0 when none
    digests: dict[str, int]  # every DigestStatus
    sent_in: dict[str, int]  # SEND_WINDOWS: messages sent (Delivery.sent_at) within each
    last_finished: LastDigest | None  # the last digest to finish, whatever its result
    last_sent: LastDigest | None  # the last digest that was sent (for its rates)
    delivered: int  # the last sent digest's deliveries that went out
    bounce_rate: float
    complaint_rate: float
    relay_backoff: int  # digests in relay back-off
    feeds: dict[str, int]  # FEED_RESULTS
    feed_http: dict[str, int]  # feeds by the HTTP status of their last poll ("none": no answer)

    @property
    def queue_depth(self) -> int:
        return sum(self.deliveries[s] for s in IN_QUEUE)


def snapshot(db: Database, now: datetime) -> Snapshot:
    with db.reader() as s:
        deliveries = _counts(s, Delivery.status, DeliveryStatus)
        digests = _counts(s, Digest.status, DigestStatus)
        sent_in = {
            name: int(
                s.scalar(select(func.count()).select_from(Delivery).where(Delivery.sent_at >= now - window))
                or 0
            )
            for name, window in SEND_WINDOWS.items()
        }
        last_finished = _last(s, Digest.finished_at.is_not(None))
        last_sent = _last(s, Digest.status == DigestStatus.SENT)
        delivered = 0
        bounce = complaint = 0.0
        if last_sent is not None:
            delivered = int(
                s.scalar(
                    select(func.count())
                    .select_from(Delivery)
                    .where(Delivery.digest_id == last_sent.id, Delivery.status == DeliveryStatus.SENT)
                )
                or 0
            )
            r = rates(s, last_sent.id, delivered)
            bounce, complaint = r.bounce_rate, r.complaint_rate
        return Snapshot(
            deliveries=deliveries,
            digests=digests,
            sent_in=sent_in,
            last_finished=last_finished,
            last_sent=last_sent,
            delivered=delivered,
            bounce_rate=bounce,
            complaint_rate=complaint,
            relay_backoff=len(_in_backoff(s, now)),
            feeds=_feed_results(s),
            feed_http=_feed_http(s),
        )


def _counts(s: Session, column: Any, statuses: Any) -> dict[str, int]:
    rows = dict(s.execute(select(column, func.count()).group_by(column)).all())
    return {str(status.value): int(rows.get(status.value, 0)) for status in statuses}


def _last(s: Session, where: Any) -> LastDigest | None:
    row = s.execute(
        select(Digest.id, Digest.issue_number, Digest.status, Digest.finished_at)
        .where(where, Digest.finished_at.is_not(None))
        .order_by(Digest.finished_at.desc())
        .limit(1)
    ).first()
    return None if row is None else LastDigest(*row)


def _in_backoff(s: Session, now: datetime) -> list[Digest]:
    return list(
        s.scalars(
            select(Digest)
            .options(load_only(Digest.id, Digest.issue_number, Digest.last_error, Digest.next_run_at))
            .where(Digest.status == DigestStatus.SENDING, Digest.last_error != "", Digest.next_run_at > now)
            .order_by(Digest.id)
        )
    )


def _feed_results(s: Session) -> dict[str, int]:
    out = dict.fromkeys(FEED_RESULTS, 0)
    for status, polled, failures in s.execute(select(Feed.status, Feed.last_polled_at, Feed.failures)):
        if status == FeedStatus.GONE:
            out["gone"] += 1
        elif polled is None:
            out["never_polled"] += 1
        else:
            out["failing" if failures else "ok"] += 1
    return out


def _feed_http(s: Session) -> dict[str, int]:
    rows = s.execute(
        select(Feed.last_status, func.count())
        .where(Feed.last_polled_at.is_not(None))
        .group_by(Feed.last_status)
    ).all()
    return {("none" if code is None else str(code)): int(n) for code, n in rows}


class MailerCollector:
    """A prometheus_client collector: the database's numbers at each scrape."""

    def __init__(self, db: Database, started: float, service: ServiceHealth | None = None) -> None:
        self.db = db
        self.started = started  # fallback up-time start when no service is attached
        self.service = service

    def collect(self) -> Iterator[Metric]:
        started = self.service.started if self.service is not None else self.started
        yield _gauge("mailer_start_time_seconds", "When this instance started (Unix time).", started)
        yield _gauge(
            "mailer_uptime_seconds", "How long this instance has been running.", time.time() - started
        )
        try:
            snap = snapshot(self.db, utcnow())
        except Exception as exc:
            if not (isinstance(exc, SQLAlchemyError) or is_dbapi_error(exc)):
                raise
            yield _gauge("mailer_database_up", "1 when the database answered this scrape.", 0)
            return
        yield _gauge("mailer_database_up", "1 when the database answered this scrape.", 1)
        yield from _snapshot_metrics(snap)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _labelled(name: str, doc: str, label: str, values: dict[str, int | float]) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=[label])
    for key, value in values.items():
        g.add_metric([key], value)
    return g


def _snapshot_metrics(snap: Snapshot) -> Iterator[Metric]:
    yield _labelled(
        "mailer_deliveries", "Deliveries (one reader, one digest) by status.", "status", snap.deliveries
    )
    yield _gauge(
        "mailer_queue_depth", "Deliveries still to go out: queued, retry and sending.", snap.queue_depth
    )
    yield _labelled(
        "mailer_messages_sent", "Messages sent within the last window (any instance).", "window", snap.sent_in
    )
    yield _labelled("mailer_digests", "Digests by status.", "status", snap.digests)
    last = snap.last_finished
    if last is not None:
        yield _gauge(
            "mailer_last_digest_finished_timestamp_seconds",
            "When the last digest to finish finished (Unix time).",
            last.finished_at.timestamp(),
        )
        yield _labelled(
            "mailer_last_digest_status",
            "The result of the last digest to finish (1 for its status).",
            "status",
            {
                str(st.value): int(st.value == last.status)
                for st in DigestStatus
                if st != DigestStatus.SENDING
            },
        )
    if snap.last_sent is not None:
        yield _gauge(
            "mailer_last_sent_digest_issue",
            "The issue number of the last digest sent.",
            snap.last_sent.issue or 0,
        )
        yield _gauge(
            "mailer_last_sent_digest_delivered", "Messages the last digest sent delivered.", snap.delivered
        )
        yield _gauge(
            "mailer_last_sent_digest_bounce_rate",
            "Hard bounces per delivered message of the last digest sent.",
            snap.bounce_rate,
        )
        yield _gauge(
            "mailer_last_sent_digest_complaint_rate",
            "Spam complaints per delivered message of the last digest sent.",
            snap.complaint_rate,
        )
    yield _gauge("mailer_relay_backoff", "Digests waiting out a relay back-off.", snap.relay_backoff)
    yield _labelled(
        "mailer_feeds",
        "Feeds by the result of their polls (failing: the last poll failed).",
        "result",
        snap.feeds,
    )
    yield _labelled(
        "mailer_feeds_last_http_status",
        "Polled feeds by the HTTP status of their last poll.",
        "code",
        snap.feed_http,
    )


def registry(db: Database, started: float, service: ServiceHealth | None = None) -> CollectorRegistry:
    """A registry holding only MailerCollector (auto_describe off: registering runs no query)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(MailerCollector(db, started, service))  # type: ignore[arg-type]
    return reg


@dataclass
class Health:
    checks: dict[str, dict[str, str]] = field(default_factory=dict)

    def add(self, name: str, status: CheckStatus, detail: str = "") -> None:
        self.checks[name] = {"status": status, **({"detail": detail} if detail else {})}

    @property
    def ok(self) -> bool:
        return all(c["status"] != "unhealthy" for c in self.checks.values())

    def as_json(self, details: bool = True) -> dict[str, Any]:
        """{"status": "ok"|"unhealthy", "checks": {name: {"status": ..., "detail": ...}}};
        without `details`, no detail (an error's text may name hosts and users)."""
        checks = self.checks if details else {k: {"status": v["status"]} for k, v in self.checks.items()}
        return {"status": "ok" if self.ok else "unhealthy", "checks": checks}

    def as_text(self, details: bool = True) -> str:
        """`ok`, or `unhealthy: relay` naming the failed checks, then with `details` one
        "name: detail" line for each."""
        failed = [name for name, c in self.checks.items() if c["status"] == "unhealthy"]
        if not failed:
            return "ok\n"
        lines = [f"unhealthy: {', '.join(failed)}"]
        if details:
            lines += [f"{name}: {self.checks[name].get('detail', '')}" for name in failed]
        return "\n".join(lines) + "\n"


def health(db: Database, service: ServiceHealth | None, now: datetime) -> Health:
    """The database, the scheduler and the relay, each checked (see the module docstring)."""
    out = Health()
    backoff: list[Digest] | None = None
    try:
        with db.reader() as s:
            s.execute(select(Digest.id).limit(1)).all()
            backoff = _in_backoff(s, now)
        out.add("database", "ok")
    except Exception as exc:
        if not (isinstance(exc, SQLAlchemyError) or is_dbapi_error(exc)):
            raise
        out.add("database", "unhealthy", database_problem(exc, db.url))
    if service is None:
        out.add("scheduler", "skipped", "this process runs no scheduler (not `mailer serve`)")
    else:
        problem = service.scheduler_problem(now)
        out.add("scheduler", "unhealthy" if problem else "ok", problem)
    if backoff is None:
        out.add("relay", "skipped", "the database did not answer")
    elif backoff:
        out.add("relay", "unhealthy", "; ".join(_backoff_line(d) for d in backoff))
    else:
        out.add("relay", "ok")
    return out


def _backoff_line(d: Digest) -> str:
    name = f"issue {d.issue_number}" if d.issue_number is not None else f"digest #{d.id}"
    when = f"{d.next_run_at:%Y-%m-%d %H:%M:%S} UTC" if d.next_run_at else "later"
    return f"{name} waits for the relay until {when} after: {d.last_error}"
