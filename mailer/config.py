"""Configuration: `config.toml` (tomllib) overlaid with `MAILER_<SECTION>_<KEY>` variables.

pydantic-settings does the typing, the env overlay and the unknown-key checks (the schema
is mailer.settings); this module only finds the file, resolves relative paths against it
and turns the first validation error into one line that names the key and where it came
from.

A misspelt variable is refused like a misspelt key in the file. pydantic-settings refuses
an unknown key inside a known section (MAILER_SMTP_HOTS: the section model forbids extras)
but never looks at a variable whose section is unknown (MAILER_SMPT_HOST), so
`_check_env_names` refuses every MAILER_* name whose first word is not a section, except the
few in NON_CONFIG_VARIABLES, which other parts of mailer read themselves.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any, get_origin
from zoneinfo import ZoneInfo

from pydantic import ValidationError
from pydantic_settings import SettingsError

from mailer.errors import ConfigError
from mailer.settings import (
    ENV_PREFIX,
    ArticlesConfig,
    BouncesConfig,
    CatcherConfig,
    DatabaseConfig,
    DeliveryConfig,
    DigestConfig,
    DkimConfig,
    FeedsConfig,
    LogConfig,
    ScheduleConfig,
    Settings,
    SignupConfig,
    SmtpConfig,
    ThemeConfig,
    WebConfig,
)

# The only MAILER_* variables that are not config keys. (The passwords are keys, smtp.password,
# web.password and bounces.imap_password, set this way: MAILER_SMTP_PASSWORD, ….)
NON_CONFIG_VARIABLES = frozenset(
    {
        "MAILER_CONFIG",  # which config file to load (find_config_path)
        "MAILER_SECRET_KEY",  # the unsubscribe-token key (mailer.tokens)
        "MAILER_TEST_POSTGRES_URL",  # the test suite's PostgreSQL server
    }
)


class Config:
    """Validated settings plus where they came from (to resolve relative paths)."""

    def __init__(self, settings: Settings, path: Path | None) -> None:
        self.settings = settings
        self.path = path
        self.root = path.parent.resolve() if path else Path.cwd()

    # The sections, typed (a __getattr__ passing through to settings would erase the types).
    @property
    def database(self) -> DatabaseConfig:
        return self.settings.database

    @property
    def smtp(self) -> SmtpConfig:
        return self.settings.smtp

    @property
    def catcher(self) -> CatcherConfig:
        return self.settings.catcher

    @property
    def schedule(self) -> ScheduleConfig:
        return self.settings.schedule

    @property
    def digest(self) -> DigestConfig:
        return self.settings.digest

    @property
    def delivery(self) -> DeliveryConfig:
        return self.settings.delivery

    @property
    def web(self) -> WebConfig:
        return self.settings.web

    @property
    def signup(self) -> SignupConfig:
        return self.settings.signup

    @property
    def articles(self) -> ArticlesConfig:
        return self.settings.articles

    @property
    def dkim(self) -> DkimConfig:
        return self.settings.dkim

    @property
    def feeds(self) -> FeedsConfig:
        return self.settings.feeds

    @property
    def bounces(self) -> BouncesConfig:
        return self.settings.bounces

    @property
    def log(self) -> LogConfig:
        return self.settings.log

    @property
    def themes(self) -> list[ThemeConfig]:
        return self.settings.themes

    def resolve(self, value: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.root / p

    @property
    def database_url(self) -> str:
        url = self.settings.database.url
        # Relative SQLite paths are relative to the config file, like every other path.
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
            return prefix + str(self.resolve(url[len(prefix) :]))
        return url

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.settings.schedule.timezone)

    @property
    def theme_slugs(self) -> list[str]:
        return [t.slug for t in self.settings.themes]

    @property
    def fallback_theme(self) -> str:
        return next(t.slug for t in self.settings.themes if t.fallback)

    @functools.cached_property
    def var_dir(self) -> Path:
        # Cached (a Config never changes): the unsubscribe outbox is looked at in it before
        # every message, where resolving the path again cost ~4% of a send's CPU.
        return self.resolve("var")


class ConfigInForce:
    """The one Config a long-running process (`mailer serve`) uses, replaceable as a whole.

    Readers take `current` once per unit of work (a web request, a scheduled run) and use
    that snapshot throughout, so a unit never mixes two configs; a reload swaps the whole
    object (a reference assignment, atomic in Python), never edits one in place (Config and
    its sections are frozen)."""

    def __init__(self, cfg: Config) -> None:
        self._cfg = cfg

    @property
    def current(self) -> Config:
        return self._cfg

    def replace(self, cfg: Config) -> None:
        self._cfg = cfg


def find_config_path(explicit: str | None) -> Path | None:
    if explicit:
        return Path(explicit)
    if os.environ.get("MAILER_CONFIG"):
        return Path(os.environ["MAILER_CONFIG"])
    default = Path("config.toml")
    return default if default.exists() else None


def _env_names(prefix: str) -> list[str]:
    """The MAILER_* variables set in the environment that are `prefix` or inside it
    (pydantic-settings reads them case-insensitively, so this does too)."""
    prefix = prefix.upper()
    return sorted(k for k in os.environ if k.upper() == prefix or k.upper().startswith(prefix + "_"))


def _describe(loc: tuple[Any, ...], source: str) -> str:
    key = ".".join(str(p) for p in loc)
    env_name = ENV_PREFIX + "_".join(str(p) for p in loc[:2]).upper()
    exact = [k for k in os.environ if k.upper() == env_name]
    if exact:
        where = f"environment variable {exact[0]}"
    elif len(loc) == 1 and _env_names(env_name):
        # A section-level check (min_articles > max_articles) fed by a variable.
        where = f"{source} with environment variable {', '.join(_env_names(env_name))}"
    else:
        where = source
    return f"{where}: {key}" if key else where


def _json_env_culprit(exc: SettingsError) -> str:
    """pydantic-settings reads list and table values from the environment as JSON and
    fails with only the section's name: find the variable that is not valid JSON."""
    m = re.search(r'field "(\w+)"', str(exc))
    field = m.group(1) if m else ""
    reason = str(exc.__cause__ or exc).splitlines()[0]
    section = ENV_PREFIX + field.upper()
    model = Settings.model_fields[field].annotation if field in Settings.model_fields else None
    for name in _env_names(section):
        sub = name.upper()[len(section) + 1 :].lower()
        if sub:
            inner = getattr(model, "model_fields", {}).get(sub)
            if inner is None or get_origin(inner.annotation) not in (list, dict):
                continue
        try:
            json.loads(os.environ[name])
        except ValueError:
            key = f"{field}.{sub}" if sub else field
            return f"environment variable {name}: {key}: not valid JSON ({reason})"
    return f"environment variable {section}: {field}: {reason}"


def _known_env_names() -> list[str]:
    """Every name that means something, without the prefix: a section (as JSON), one of its
    keys, or a variable read elsewhere."""
    names = [name[len(ENV_PREFIX) :] for name in sorted(NON_CONFIG_VARIABLES)]
    for section, info in Settings.model_fields.items():
        names.append(section.upper())
        keys = getattr(info.annotation, "model_fields", {})
        names.extend(f"{section}_{key}".upper() for key in keys)
    return names


def _check_env_names() -> None:
    """Refuse a MAILER_* variable whose section does not exist (see the module docstring)."""
    sections = {name.upper() for name in Settings.model_fields}
    for name in sorted(os.environ):
        upper = name.upper()  # pydantic-settings matches names case-insensitively
        if not upper.startswith(ENV_PREFIX) or upper in NON_CONFIG_VARIABLES:
            continue
        if upper[len(ENV_PREFIX) :].split("_", 1)[0] in sections:
            continue  # a key inside a known section: pydantic-settings checks it
        # Compared without the prefix that every name shares, so only a near-miss is offered.
        close = difflib.get_close_matches(upper[len(ENV_PREFIX) :], _known_env_names(), n=1, cutoff=0.75)
        hint = f" (did you mean {ENV_PREFIX}{close[0]}?)" if close else ""
        raise ConfigError(f"environment variable {name}: unknown key{hint}")


def load_config(explicit: str | None = None) -> Config:
    path = find_config_path(explicit)
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    _check_env_names()
    try:
        settings = Settings(**data)
    except SettingsError as exc:
        raise ConfigError(_json_env_culprit(exc)) from None
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        raise ConfigError(f"{_describe(tuple(err['loc']), source)}: {msg}") from None
    return Config(settings, path)
