"""`mailer serve`: scheduler, web server and mail catcher in one process.

APScheduler only triggers `tick`: the cron trigger at each slot, once at start-up (to
catch a slot missed while the service was down) and every minute (to resume unfinished
digests and retries). Every decision is taken from the database, so a tick that finds
nothing to do does nothing, and two services against one database cannot send a slot
twice (see mailer.digest.build and the delivery lease in mailer.delivery).
"""

from __future__ import annotations

import logging
import resource
import signal
import threading
from datetime import timedelta
from types import FrameType
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from waitress.server import create_server

from mailer import campaign, progress
from mailer.catcher import MailCatcher
from mailer.config import Config
from mailer.db import Database
from mailer.errors import MailerError
from mailer.models import utcnow
from mailer.scheduler import Schedule
from mailer.web import create_app
from mailer.web.access import editor_mode

log = logging.getLogger("mailer.service")
RESUME_EVERY = timedelta(minutes=1)

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
    "max_request_body_size": 64 * 1024,
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
        self.cfg = cfg
        self.stop = threading.Event()
        self._lock = threading.Lock()  # one tick at a time in this process
        self.catcher: MailCatcher | None = None
        self.web = None
        self.web_thread: threading.Thread | None = None
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(1)},
            timezone=cfg.zone,
        )

    def tick(self) -> None:
        if self.stop.is_set() or not self._lock.acquire(blocking=False):
            return
        try:
            # The service logs progress lines (never a progress bar, even on a terminal).
            with progress.reporter(self.db, tty=False) as on_progress:
                for summary in campaign.run_due(self.db, self.cfg, utcnow(), self.stop, on_progress):
                    if summary.sent or summary.retry or summary.failed or summary.finished:
                        log.info("%s", progress.summary_line(summary))
                    if summary.stopped and not summary.waiting:
                        log.error("digest #%s: %s", summary.issue, summary.stopped)
        except MailerError as exc:
            log.error("%s", exc)
        except Exception:
            log.exception("scheduled run failed; it is retried at the next tick")
        finally:
            self._lock.release()

    def start(self) -> None:
        cfg = self.cfg
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
            self.web = web_server(create_app(self.db, cfg), cfg.web.host, cfg.web.port)
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
        self.scheduler.add_job(
            self.tick,
            "interval",
            seconds=RESUME_EVERY.total_seconds(),
            id="resume",
            coalesce=True,
            max_instances=1,
        )
        # Start-up tick: sends a slot missed while we were down (within the grace period).
        self.scheduler.add_job(self.tick, name="startup")
        self.scheduler.start()

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
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        if self.web is not None:
            self.web.close()
        if self.catcher is not None:
            self.catcher.stop()
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
    print("  send one now: mailer digest send --now", flush=True)
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
        ]
    note = "  (HTTP Basic, the web password)" if mode == "password" else ""
    lines = [f"dashboard:    {base}/{note}", f"preview:      {base}/preview"]
    if cfg.catcher.enabled:
        lines.append(f"caught mail:  {base}/mail  (SMTP on {cfg.catcher.host}:{cfg.catcher.port})")
    return lines


def _display_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
