"""Settings every instance on one database must agree on, checked where they start.

Several `mailer serve` processes (and the CLI) may share one database. Most settings may
differ between them (a host's web port, its relay connections), but not these:
* the secret key: it signs the unsubscribe links in every mail, and any instance must be
  able to check a link another one wrote;
* the schedule (cron and time zone): slots are identified by their local time, so two
  schedules would make two digests where there should be one.

The first instance stores them in `shared_settings` (the key as a fingerprint, never the
key itself); every later start compares, under a lock (db.serialise), so of two first
starts one stores and the other compares. An instance that disagrees refuses to start
with one line naming the setting. To change one on purpose, change it everywhere and run
`mailer settings adopt` once: this config's values become the stored ones.
"""

from __future__ import annotations

import hashlib
import hmac

from sqlalchemy import select

from mailer.config import Config
from mailer.db import Database, serialise
from mailer.errors import ConfigError
from mailer.models import SharedSetting, utcnow
from mailer.tokens import load_secret

# How each setting is named in errors, and which config key changes it.
NAMES = {
    "secret_key": "the secret key (MAILER_SECRET_KEY or var/secret.key)",
    "schedule.cron": "schedule.cron",
    "schedule.timezone": "schedule.timezone",
}


def of(cfg: Config) -> dict[str, str]:
    """This config's values, as stored (the secret key only as a keyed fingerprint)."""
    secret = load_secret(cfg.var_dir)
    fingerprint = hmac.new(secret, b"mailer shared settings", hashlib.sha256).hexdigest()[:32]
    return {
        "secret_key": fingerprint,
        "schedule.cron": cfg.schedule.cron,
        "schedule.timezone": cfg.schedule.timezone,
    }


def check(db: Database, cfg: Config) -> None:
    """Store the settings if this is the first instance, else refuse (ConfigError, one
    line) when one differs from the stored value."""
    mine = of(cfg)
    with db.session() as s:
        serialise(s, "shared-settings")
        stored = {row.key: row for row in s.scalars(select(SharedSetting))}
        for key, value in mine.items():
            row = stored.get(key)
            if row is None:
                s.add(SharedSetting(key=key, value=value, updated_at=utcnow()))
            elif row.value != value:
                shown = "" if key == "secret_key" else f" ({value!r} here, {row.value!r} there)"
                raise ConfigError(
                    f"{NAMES[key]} differs from the one the other instances on this database use"
                    f"{shown}: make them the same, or run `mailer settings adopt` to make this "
                    "config's the one for all"
                )


def adopt(db: Database, cfg: Config) -> list[str]:
    """Make this config's values the stored ones; the keys that changed."""
    changed = []
    with db.session() as s:
        serialise(s, "shared-settings")
        stored = {row.key: row for row in s.scalars(select(SharedSetting))}
        for key, value in of(cfg).items():
            row = stored.get(key)
            if row is None:
                s.add(SharedSetting(key=key, value=value, updated_at=utcnow()))
            elif row.value != value:
                row.value, row.updated_at = value, utcnow()
                changed.append(NAMES[key])
    return changed
