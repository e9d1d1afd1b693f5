"""The unsubscribe outbox: an unsubscribe is made durable first, then applied.

A one-click unsubscribe must never be lost and never fail because another process holds
SQLite's write lock (an import, a send, a CLI command), however long it holds it. So the
request is first written to its own file under var/unsubscribe-outbox/: under a temporary
name, fsync'd, renamed into place, the folder fsync'd. Once `record` returns the request
survives a kill -9 or a power cut, and anyone listing the folder sees the whole request or
nothing. Only then does the web server answer "you are unsubscribed".

One applier thread per app applies records to the database, retrying for as long as the
lock is held, and deletes a file only after its transaction committed. It starts with the
app and first drains whatever an earlier process left (killed between "recorded" and
"applied"), so nothing is lost across restarts. Applying is idempotent, so a record
applied twice (a crash between commit and delete, two servers sharing the folder) changes
nothing the second time.

A record is applied only to the person who made it: it holds the id and the address, and
a row with another address (the person was forgotten and the id reused) is left alone. A
reader who resubscribed after the record was written stays subscribed (their last word
wins); a bounce does not undo an unsubscribe.

Until a record is applied `pending_unsubscribes(cfg)` holds its id, and the delivery
engine checks it just before each message, so nobody is mailed after they said stop even
while the database cannot show it yet. This module imports no Flask.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from datetime import datetime
from pathlib import Path

from sqlalchemy.exc import OperationalError

from mailer.config import Config
from mailer.db import Database
from mailer.errors import MailerError
from mailer.models import Subscriber, utcnow
from mailer.subscribers import set_status

log = logging.getLogger(__name__)

FOLDER = "unsubscribe-outbox"
APPLY_WAIT = 2.0  # seconds a request waits to see its record applied (for the resubscribe button)
POLL = 5.0  # the applier also looks now and then for records other processes left
RETRY = 0.2  # pause between attempts while the database is locked
STALE_TMP = 60.0  # a temporary file this old was left by a crash during `record`


class Busy(MailerError):
    """The change could not be recorded or applied now; nothing was changed."""


def outbox_folder(cfg: Config) -> Path:
    return cfg.var_dir / FOLDER


def _is_record(name: str) -> bool:
    return name.endswith(".json") and not name.startswith(".")  # not a temporary file


def _records(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as entries:
            names = [e.name for e in entries if _is_record(e.name)]
    except FileNotFoundError:
        return []
    return [folder / name for name in sorted(names)]


def pending_unsubscribes(cfg: Config) -> set[int]:
    """The ids with an unsubscribe recorded but not yet applied to the database. Asked
    before every message: names only (no paths, no sorting), one directory listing."""
    try:
        names = os.listdir(outbox_folder(cfg))
    except FileNotFoundError:
        return set()
    return {int(name.split("-", 1)[0]) for name in names if _is_record(name)}


def has_pending_unsubscribe(cfg: Config, subscriber_id: int) -> bool:
    return subscriber_id in pending_unsubscribes(cfg)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def record(folder: Path, subscriber_id: int, email: str) -> Path:
    """Write the request durably; its path (named `<id>-<time>-<random>.json`)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{subscriber_id}-{time.time_ns()}-{secrets.token_hex(4)}.json"
    path, tmp = folder / name, folder / f".{name}.tmp"
    body = json.dumps({"subscriber_id": subscriber_id, "email": email, "at": utcnow().isoformat()})
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, body.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    _fsync_dir(folder)
    return path


def apply_request(db: Database, subscriber_id: int, email: str, at: datetime) -> None:
    """One transaction; raises OperationalError while another process holds the lock."""
    with db.session() as s:
        row = s.get(Subscriber, subscriber_id)
        if row is None or row.email.lower() != email.lower():
            return  # forgotten (and perhaps the id reused): not this person any more
        if row.status == "active" and row.status_changed_at > at:
            return  # resubscribed after asking to stop
        set_status(s, row, "unsubscribed")


def apply(db: Database, path: Path) -> None:
    """Apply one record, then delete it."""
    try:
        data = json.loads(path.read_bytes())
        request = (int(data["subscriber_id"]), str(data["email"]), datetime.fromisoformat(data["at"]))
    except FileNotFoundError:
        return  # applied meanwhile by another applier
    except (ValueError, KeyError, TypeError) as exc:
        log.error("unsubscribe outbox: %s is unreadable (%s); set aside as .bad", path.name, exc)
        path.rename(path.with_suffix(".bad"))
        return
    apply_request(db, *request)
    path.unlink(missing_ok=True)


def _locked(exc: OperationalError) -> bool:
    text = str(exc.orig).lower()
    return "locked" in text or "busy" in text


class Outbox:
    """The outbox folder of one app and the thread that applies it."""

    def __init__(self, db: Database, folder: Path) -> None:
        self.db = db
        self.folder = folder
        self._wake = threading.Event()
        self._applied = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="unsubscribe-outbox", daemon=True)

    def start(self) -> Outbox:
        self._wake.set()  # the first round replays what an earlier process left
        self._thread.start()
        return self

    def unsubscribe(self, subscriber: Subscriber) -> bool:
        """Durable when this returns; True if it was also applied within APPLY_WAIT."""
        try:
            path = record(self.folder, subscriber.id, subscriber.email)
        except OSError as exc:
            # No durable record (disk full, read-only var/): apply it directly, waiting for
            # the lock up to the busy timeout; only if that fails too is the reader told.
            log.error("unsubscribe outbox: cannot record in %s: %s", self.folder, exc.strerror or exc)
            try:
                apply_request(self.db, subscriber.id, subscriber.email, utcnow())
            except OperationalError:
                raise Busy("the unsubscribe could not be recorded; nothing was changed") from None
            return True
        self._wake.set()
        deadline = time.monotonic() + APPLY_WAIT
        with self._applied:
            while path.exists():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._applied.wait(min(left, 0.1))
        return True

    def _run(self) -> None:
        while True:
            self._wake.wait(POLL)
            self._wake.clear()
            self._clean_tmp()
            for path in _records(self.folder):
                self._apply_retrying(path)

    def _apply_retrying(self, path: Path) -> None:
        waited = False
        while True:
            try:
                apply(self.db, path)
            except OperationalError as exc:
                if not _locked(exc):
                    log.exception("unsubscribe outbox: %s failed; retried later", path.name)
                    return
                if not waited:
                    log.warning("unsubscribe outbox: %s waits for the database lock", path.name)
                    waited = True
                time.sleep(RETRY)
                continue
            except Exception:
                log.exception("unsubscribe outbox: %s failed; retried later", path.name)
                return
            with self._applied:
                self._applied.notify_all()
            return

    def _clean_tmp(self) -> None:
        try:
            with os.scandir(self.folder) as entries:
                stale = [
                    Path(e.path)
                    for e in entries
                    if e.name.endswith(".tmp") and time.time() - e.stat().st_mtime > STALE_TMP
                ]
        except FileNotFoundError:
            return
        for path in stale:
            path.unlink(missing_ok=True)
