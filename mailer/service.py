"""`mailer serve`: scheduler, web server and mail catcher in one process.

APScheduler only triggers `tick`: the cron trigger at each slot, once at start-up (to
catch a slot missed while the service was down) and every minute (to resume unfinished
digests and retries). Every decision is taken from the database, so a tick that finds
nothing to do does nothing, and two services against one database cannot send a slot
twice (see mailer.digest.build and the delivery runs in mailer.delivery.queue).

The configuration is reloaded while the service runs: on SIGHUP, and when the file
changes (ConfigWatcher polls its size, mtime and inode every CONFIG_POLL seconds and
reloads only when the content's hash changed, so a touch does nothing and one edit is one
reload). The Service holds the Config in force in one place, a ConfigInForce, and
everything reads it from there: the web app per request (mailer.web.app.RequestConfig),
each tick once per run, and a reload re-aims the cron trigger. A reload is a whole
load_config of the same file, so either every setting of the new file is checked, or
none is taken: a file that does not load is refused with the one line the CLI would
print, and the old Config stays in force. What the running process was started with and
cannot change (RESTART_ONLY: the sockets it listens on, the catcher's folder, the database
it holds open) keeps its old value, and the log says it needs a restart.

About 410 lines: the process (start, banner, shutdown) and the config reload it owns share
the Service's state; the reload is a third of it and would be the piece to move next.
"""

from __future__ import annotations

import hashlib
import logging
import os
import resource
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.exc import SQLAlchemyError
from waitress.server import create_server

from mailer import campaign, demo, progress, signup
from mailer.catcher import MailCatcher
from mailer.config import Config, ConfigInForce, load_config
from mailer.db import Database
from mailer.errors import MailerError, database_problem, is_dbapi_error
from mailer.models import utcnow
from mailer.scheduler import Schedule
from mailer.web.access import editor_mode
from mailer.web.app import close_app, create_app

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

CONFIG_POLL = 2.0  # seconds between two looks at the config file
CONFIG_SETTLE = 0.2  # a file still changing after this is looked at again at the next poll
# Settings fixed when the service started: the sockets it listens on, where the catcher it
# started writes, the database it holds open. A reload keeps their old values.
RESTART_ONLY: dict[str, tuple[str, ...]] = {
    "web": ("host", "port"),
    "catcher": ("enabled", "host", "port", "folder"),
    "database": ("url",),
}
# Shown in the log by name only: they may hold a secret.
SECRET_KEYS = frozenset({"smtp.password", "web.password", "database.url"})


@dataclass(frozen=True)
class Reloaded:
    """What a reload puts in force, and what it says about it."""

    cfg: Config
    changed: list[str]  # the settings that now have a new value ("themes", "schedule.cron")
    need_restart: list[str]  # "web.port (8080 -> 9090)": still the old value


def _flat(cfg: Config) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section, value in cfg.settings.model_dump().items():
        if isinstance(value, dict):
            out.update({f"{section}.{key}": v for key, v in value.items()})
        else:
            out[section] = value
    return out


def reloaded(old: Config, new: Config) -> Reloaded:
    """`new` with the RESTART_ONLY settings of `old`, and what changed."""
    settings = new.settings
    need_restart = []
    for section, keys in RESTART_ONLY.items():
        was, wants = getattr(old.settings, section), getattr(new.settings, section)
        kept = {key: getattr(was, key) for key in keys if getattr(was, key) != getattr(wants, key)}
        for key in kept:
            name = f"{section}.{key}"
            values = "" if name in SECRET_KEYS else f" ({getattr(was, key)!r} -> {getattr(wants, key)!r})"
            need_restart.append(name + values)
        if kept:
            settings = settings.model_copy(update={section: wants.model_copy(update=kept)})
    cfg = Config(settings, new.path)
    before, after = _flat(old), _flat(cfg)
    changed = [key for key in after if before.get(key) != after[key]]
    return Reloaded(cfg, changed, need_restart)


def _fingerprint(path: Path) -> tuple[int, int, int] | None:
    """Cheap to compare (no read): inode, size and mtime; None while the file is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _digest_of(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class ConfigWatcher:
    """Calls `reload(reason)` on request (SIGHUP) and when the config file's content
    changes. One thread, so reloads never overlap; it ends when `stop` is set."""

    def __init__(self, path: Path, reload: Callable[[str], None], stop: threading.Event) -> None:
        self.path = path
        self.reload = reload
        self.stop = stop
        self.asked = threading.Event()
        self.seen = _fingerprint(path)
        self.content = _digest_of(path)
        self.thread = threading.Thread(target=self._run, name="config-watcher", daemon=True)

    def start(self) -> ConfigWatcher:
        self.thread.start()
        return self

    def ask(self) -> None:
        """Reload now (safe from a signal handler: it only sets an event)."""
        self.asked.set()

    def _run(self) -> None:
        while not self.stop.is_set():
            asked = self.asked.wait(CONFIG_POLL)
            if self.stop.is_set():
                return
            self.asked.clear()
            try:
                self._look("on SIGHUP" if asked else None)
            except Exception:  # the watcher must outlive any surprise; the old config stays
                log.exception("config %s not reloaded; keeping the one in force", self.path)

    def _look(self, asked: str | None) -> None:
        """Reload when asked, or when the content changed since the last look."""
        now = _fingerprint(self.path)
        if asked is None:
            if now == self.seen:
                return
            # An editor may be half-way through writing it: only a file that stays still.
            self.stop.wait(CONFIG_SETTLE)
            if _fingerprint(self.path) != now:
                return
        self.seen = now
        content = _digest_of(self.path)
        if asked is None and content == self.content:
            return  # touched, not changed
        self.content = content
        self.reload(asked or "the file changed")


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
        self.stop = threading.Event()
        self._lock = threading.Lock()  # one tick at a time in this process
        self.catcher: MailCatcher | None = None
        self.web = None
        self.app: Any = None
        self.web_thread: threading.Thread | None = None
        # Created now, so a SIGHUP that arrives while the service starts is not lost.
        self.watcher = ConfigWatcher(cfg.path, self.reload, self.stop) if cfg.path is not None else None
        self.scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(1)},
            timezone=cfg.zone,
        )

    def tick(self) -> None:
        if self.stop.is_set() or not self._lock.acquire(blocking=False):
            return
        cfg = self.config.current  # this run's config, whatever a reload does meanwhile
        try:
            # The service logs progress lines (never a progress bar, even on a terminal).
            # Sign-ups never confirmed within signup.confirm_days are forgotten.
            signup.purge(self.db, cfg, utcnow())
            with progress.reporter(self.db, tty=False) as on_progress:
                for summary in campaign.run_due(self.db, cfg, utcnow(), self.stop, on_progress):
                    if summary.sent or summary.retry or summary.failed or summary.finished:
                        log.info("%s", progress.summary_line(summary))
                    if summary.stopped and not summary.waiting:
                        log.error("digest #%s: %s", summary.issue, summary.stopped)
        except MailerError as exc:
            log.error("%s", exc)
        except Exception as exc:
            if isinstance(exc, SQLAlchemyError) or is_dbapi_error(exc):
                # The database is down or restarting: one line, and the next tick (every
                # minute) tries again; the pool reconnects once it is back.
                log.error("%s; retried at the next tick", database_problem(exc, self.db.url))
            else:
                log.exception("scheduled run failed; it is retried at the next tick")
        finally:
            self._lock.release()

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
        self.scheduler.start()
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
            self.web.close()
        if self.app is not None:
            close_app(self.app)
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
