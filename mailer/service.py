"""`mailer serve`: scheduler, web server and mail catcher in one process.

APScheduler only triggers `tick`: the cron trigger at each slot, once at start-up (to
catch a slot missed while the service was down) and every minute (to resume unfinished
digests and retries). Every decision is taken from the database, so a tick that finds
nothing to do does nothing, and two services against one database cannot send a slot
twice (see mailer.digest.build and the delivery runs in mailer.delivery.queue).

The configuration is reloaded while the service runs (mailer.reload): on SIGHUP, and when
the file changes. The Service holds the Config in force in one place, a ConfigInForce, and
everything reads it from there: the web app per request (mailer.web.app.RequestConfig),
each tick once per run, and a reload re-aims the cron trigger.

Feeds are polled by their own job on their own thread (mailer.feeds.poll), every
FEEDS_EVERY, so a slow feed never delays a digest; the bounce mailbox likewise
(mailer.bounces.mailbox). With `[bounces] listen` set, the service is also the bounce
domain's MX (mailer.bounces.receiver).
"""

from __future__ import annotations

import logging
import resource
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from types import FrameType
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.exc import SQLAlchemyError
from waitress.server import create_server

from mailer import campaign, demo, metrics, progress, signup
from mailer.bounces.mailbox import poll_mailbox
from mailer.bounces.receiver import BounceReceiver, start_receiver
from mailer.catcher import MailCatcher
from mailer.config import Config, ConfigInForce, load_config
from mailer.db import Database
from mailer.errors import MailerError, database_problem, is_dbapi_error
from mailer.feeds import poll as feed_poll
from mailer.models import utcnow
from mailer.reload import ConfigWatcher, reloaded
from mailer.scheduler import Schedule
from mailer.web.access import editor_mode
from mailer.web.app import close_app, create_app

log = logging.getLogger("mailer.service")
RESUME_EVERY = timedelta(minutes=1)
# How often the service looks for feeds that are due (each feed's interval is its own).
FEEDS_EVERY = timedelta(minutes=1)

# Waitress settings for the web server (tests/web_server.py serves the test app with these).
# Idle sockets must not lock readers out: waitress stops accepting at connection_limit, so
# the limit is high (poll(), not select(), so descriptors past 1024 work) and a connection
# with no request in flight is closed after channel_timeout, checked every
# cleanup_interval. Requests being served are never cut (waitress only closes idle ones).
WEB_SERVER: dict[str, Any] = {
    "threads": 8,
    "connection_limit": 1000,
    "asyncore_use_poll": True,
    "channel_timeout": 10,
    "cleanup_interval": 2,
    # The webhooks' cap (mailer.web.webhooks: SNS messages reach 256 KB); every other route
    # refuses more than the app's MAX_BODY_BYTES from its Content-Length before reading, and
    # waitress spools a body past its inbuf_overflow (512 KB) to disk, not memory.
    "max_request_body_size": 1024 * 1024,
    "max_request_header_size": 16 * 1024,
    # Proxy headers reach the app untouched: it never trusts their values, but a request
    # that carries one never gets the editor's pages without the password (mailer.web.access).
    "clear_untrusted_proxy_headers": False,
    "ident": "mailer",
}
# Descriptors for the connections plus the database, the SMTP connections and files.
OPEN_FILES = WEB_SERVER["connection_limit"] + 512


def web_server(app: Any, host: str, port: int) -> Any:
    """A waitress server for `app` with WEB_SERVER settings (not yet running)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < OPEN_FILES:
        wanted = OPEN_FILES if hard == resource.RLIM_INFINITY else min(OPEN_FILES, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    return create_server(app, host=host, port=port, **WEB_SERVER)


class Service:
    def __init__(self, db: Database, cfg: Config) -> None:
        self.db = db
        self.config = ConfigInForce(cfg)  # the one place the current config is kept
        self.started = time.time()  # the up-time /metrics reports (mailer.metrics)
        self.stop = threading.Event()
        self._lock = threading.Lock()  # one tick at a time in this process
        self.catcher: MailCatcher | None = None
        self.receiver: BounceReceiver | None = None
        self.mailbox_polled: float | None = None  # time.monotonic() of the last mailbox poll
        self.web = None
        self.app: Any = None
        self.web_thread: threading.Thread | None = None
        # Created now, so a SIGHUP that arrives while the service starts is not lost.
        self.watcher = ConfigWatcher(cfg.path, self.reload, self.stop) if cfg.path is not None else None
        # Feeds poll on their own thread: a slow poll never delays a digest's tick.
        self.scheduler = BackgroundScheduler(
            executors={
                "default": ThreadPoolExecutor(1),
                "feeds": ThreadPoolExecutor(1),
                "mailbox": ThreadPoolExecutor(1),
            },
            timezone=cfg.zone,
        )

    def tick(self) -> None:
        if self.stop.is_set() or not self._lock.acquire(blocking=False):
            return
        try:
            self._guarded(self._send_due)
        finally:
            self._lock.release()

    def _send_due(self) -> None:
        cfg = self.config.current  # this run's config, whatever a reload does meanwhile
        # The service logs progress lines (never a progress bar, even on a terminal).
        # Sign-ups never confirmed within signup.confirm_days are forgotten.
        signup.purge(self.db, cfg, utcnow())
        with progress.reporter(self.db, tty=False) as on_progress:
            for summary in campaign.run_due(self.db, cfg, utcnow(), self.stop, on_progress):
                if summary.sent or summary.retry or summary.failed or summary.finished:
                    log.info("%s", progress.summary_line(summary))
                if summary.stopped and not summary.waiting:
                    log.error("digest #%s: %s", summary.issue, summary.stopped)

    def poll_feeds(self) -> None:
        """The feeds that are due (each feed's own schedule is in the database); every
        feed's problem is logged by the poll and kept in its row."""
        if not self.stop.is_set():
            self._guarded(lambda: feed_poll.poll(self.db, self.config.current, due_only=True))

    def poll_mailbox(self) -> None:
        """The bounce mailbox, every bounces.imap_interval_seconds when imap_url is set
        (checked each minute, so a reload that sets or changes it takes effect)."""
        cfg = self.config.current
        if self.stop.is_set() or not cfg.bounces.imap_url:
            return
        now = time.monotonic()
        if self.mailbox_polled is not None and now - self.mailbox_polled < cfg.bounces.imap_interval_seconds:
            return
        self.mailbox_polled = now
        self._guarded(lambda: poll_mailbox(self.db, cfg))

    def _guarded(self, run: Callable[[], object]) -> None:
        """A scheduled job's errors are log lines, and the job runs again next minute."""
        try:
            run()
        except MailerError as exc:
            log.error("%s", exc)
        except Exception as exc:
            if isinstance(exc, SQLAlchemyError) or is_dbapi_error(exc):
                # The database is down or restarting: one line, and the next run (every
                # minute) tries again; the pool reconnects once it is back.
                log.error("%s; retried at the next tick", database_problem(exc, self.db.url))
            else:
                log.exception("scheduled run failed; it is retried at the next tick")

    def reload(self, reason: str = "on request") -> bool:
        """Load the config file again and put it in force; False (and the old one stays)
        when it does not load. Logs one line for either, plus one per RESTART_ONLY change."""
        old = self.config.current
        where = old.path
        if where is None:
            log.warning("config not reloaded (%s): the service runs without a config file", reason)
            return False
        try:
            new = load_config(str(where))
        except MailerError as exc:
            log.error("config %s not reloaded: %s; keeping the one in force", where, exc)
            return False
        result = reloaded(old, new)
        self.config.replace(result.cfg)
        what = f"changed {', '.join(result.changed)}" if result.changed else "no changes"
        log.info("config reloaded from %s (%s): %s", where, reason, what)
        for setting in result.need_restart:
            log.warning(
                "config %s: %s needs a restart; the old value stays in force until then", where, setting
            )
        schedule = Schedule.of(result.cfg)
        if (schedule.cron, schedule.timezone) != (old.schedule.cron, old.schedule.timezone):
            self._reschedule(schedule)
        return True

    def _reschedule(self, schedule: Schedule) -> None:
        """The cron trigger follows the new schedule; a tick right away handles a slot the
        new schedule makes due (as the start-up tick does), not a minute later."""
        if self.scheduler.running:
            self.scheduler.reschedule_job("digest", trigger=schedule.trigger)
            self.scheduler.modify_job("resume", next_run_time=datetime.now(schedule.zone))
        nxt = schedule.next_slots(utcnow(), 1)
        when = f"{nxt[0].local(schedule.timezone):%a %Y-%m-%d %H:%M %Z}" if nxt else "never"
        log.info("schedule now %r in %s: next digest %s", schedule.cron, schedule.timezone, when)

    def start(self) -> None:
        cfg = self.config.current
        if cfg.catcher.enabled:
            self.catcher = MailCatcher(cfg.catcher.host, cfg.catcher.port, cfg.resolve(cfg.catcher.folder))
            self.catcher.start()
            log.info(
                "mail catcher on %s:%s, saving to %s",
                cfg.catcher.host,
                cfg.catcher.port,
                cfg.resolve(cfg.catcher.folder),
            )
        try:
            self.receiver = start_receiver(self.db, self.config)
        except MailerError:
            self.shutdown()
            raise
        if self.receiver is not None:
            log.info("bounce receiver (MX for %s) on %s", cfg.bounces.address, cfg.bounces.listen)
        try:
            self.app = create_app(self.db, self.config)
            self.web = web_server(self.app, cfg.web.host, cfg.web.port)
        except OSError as exc:
            self.shutdown()
            raise MailerError(
                f"web server cannot listen on {cfg.web.host}:{cfg.web.port}: {exc.strerror}"
            ) from None
        self.web_thread = threading.Thread(target=self._run_web, name="web", daemon=True)
        self.web_thread.start()
        schedule = Schedule.of(cfg)
        self.scheduler.add_job(
            self.tick,
            schedule.trigger,
            id="digest",
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
        )
        # Its first run, right away, is the start-up tick: it sends a slot missed while we
        # were down (within the grace period). Not a one-shot job: APScheduler's loop
        # removing a finished one-shot job races its shutdown (JobLookupError traceback).
        self.scheduler.add_job(
            self.tick,
            "interval",
            seconds=RESUME_EVERY.total_seconds(),
            id="resume",
            coalesce=True,
            max_instances=1,
            next_run_time=datetime.now(cfg.zone),
        )
        self.scheduler.add_job(
            self.poll_feeds,
            "interval",
            seconds=FEEDS_EVERY.total_seconds(),
            id="feeds",
            executor="feeds",
            coalesce=True,
            max_instances=1,
            next_run_time=datetime.now(cfg.zone),
        )
        self.scheduler.add_job(
            self.poll_mailbox,
            "interval",
            seconds=60,
            id="mailbox",
            executor="mailbox",
            coalesce=True,
            max_instances=1,
            next_run_time=datetime.now(cfg.zone),
        )
        self.scheduler.start()
        # /healthz checks this scheduler, and /metrics reports this service's up-time.
        self.app.extensions[metrics.HEALTH_KEY] = metrics.ServiceHealth(
            self.started, self.scheduler, "resume", RESUME_EVERY
        )
        if self.watcher is not None:
            self.watcher.start()

    def ask_reload(self) -> None:
        """SIGHUP: reload the config soon, in the watcher's thread (not in a signal handler)."""
        if self.watcher is not None:
            self.watcher.ask()
        else:
            log.warning("SIGHUP: the service runs without a config file; nothing to reload")

    def _run_web(self) -> None:
        assert self.web is not None
        try:
            self.web.run()
        except OSError:
            # close() from the main thread can pull the socket out from under select().
            if not self.stop.is_set():
                raise

    @property
    def port(self) -> int:
        assert self.web is not None
        return int(self.web.effective_port)  # type: ignore[attr-defined]

    def shutdown(self) -> None:
        """Finish the message in flight, then stop everything."""
        self.stop.set()
        if self.watcher is not None:
            self.watcher.ask()  # wakes it up to see `stop`
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        if self.web is not None:
            # The request threads first: a single-socket server's close() closes the pipe
            # a thread pulls when its response is done (EBADF, a traceback at every stop
            # that met a request's end; CI saw one). shutdown() waits for them (5 s at most).
            self.web.task_dispatcher.shutdown()
            self.web.close()
        if self.app is not None:
            close_app(self.app)
        if self.catcher is not None:
            self.catcher.stop()
        if self.receiver is not None:
            self.receiver.stop()
        self.db.dispose()


def serve(db: Database, cfg: Config) -> None:
    service = Service(db, cfg)
    done = threading.Event()

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info(
            "%s received: finishing the message in flight, then stopping",
            signal.Signals(signum).name,
        )
        service.stop.set()
        done.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGHUP, lambda _signum, _frame: service.ask_reload())
    service.start()
    schedule = Schedule.of(cfg)
    nxt = schedule.next_slots(utcnow(), 1)
    print("mailer is running (Ctrl-C to stop)", flush=True)
    for line in _banner_pages(cfg, service.port):
        print(f"  {line}", flush=True)
    if nxt:
        print(
            f"  next digest:  {nxt[0].local(cfg.schedule.timezone):%a %Y-%m-%d %H:%M %Z}",
            flush=True,
        )
    print(f"  send one now: {demo.command()} digest send --now", flush=True)
    done.wait()
    service.shutdown()
    log.info("stopped")


def _banner_pages(cfg: Config, port: int) -> list[str]:
    """Where the pages are; the editor's only when they are served (mailer.web.access)."""
    base = f"http://{_display_host(cfg.web.host)}:{port}"
    mode = editor_mode(cfg)
    if mode == "off":
        return [
            "editor pages: off until MAILER_WEB_PASSWORD is set (only the public pages are served)",
            f"public pages: {base}/healthz, /articles/<id>, /unsubscribe/<token>",
            f"sign-up:      {base}/subscribe",
        ]
    note = "  (HTTP Basic, the web password)" if mode == "password" else ""
    lines = [
        f"dashboard:    {base}/{note}",
        f"preview:      {base}/preview",
        f"test copy:    {base}/preview/test-copy",
    ]
    if cfg.catcher.enabled:
        lines.append(f"caught mail:  {base}/mail  (SMTP on {cfg.catcher.host}:{cfg.catcher.port})")
    lines.append(f"sign-up:      {base}/subscribe")
    return lines


def _display_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
