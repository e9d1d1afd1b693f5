"""Reloading the configuration while the service runs.

A reload is a whole load_config of the same file, so either every setting of the new file
is checked, or none is taken: a file that does not load is refused with the one line the
CLI would print, and the old Config stays in force. What the running process was started
with and cannot change (RESTART_ONLY: the sockets it listens on, the web server's, the
catcher's and the bounce MX's, the catcher's folder, the database it holds open) keeps its
old value, and the log says it needs a restart.

ConfigWatcher reloads on SIGHUP and when the file changes: it polls the file's size, mtime
and inode every CONFIG_POLL seconds and reloads only when the content's hash changed, so a
touch does nothing and one edit is one reload.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailer.config import Config

log = logging.getLogger("mailer.service")

CONFIG_POLL = 2.0  # seconds between two looks at the config file
CONFIG_SETTLE = 0.2  # a file still changing after this is looked at again at the next poll
# Settings fixed when the service started: the sockets it listens on, where the catcher it
# started writes, the database it holds open. A reload keeps their old values.
RESTART_ONLY: dict[str, tuple[str, ...]] = {
    "web": ("host", "port"),
    "bounces": ("listen",),
    "log": ("format",),  # the service's log handler is set up once, at start
    "catcher": ("enabled", "host", "port", "folder"),
    "database": ("url",),
}
# Shown in the log by name only: they may hold a secret.
SECRET_KEYS = frozenset(
    {
        "smtp.password",
        "web.password",
        "database.url",
        "bounces.imap_password",
        "bounces.postmark_password",
        "bounces.mailgun_signing_key",
    }
)


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
