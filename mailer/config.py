"""Configuration: `config.toml` (tomllib) overlaid with `MAILER_<SECTION>_<KEY>` variables.

pydantic-settings does the typing, the env overlay and the unknown-key checks; this module
only finds the file, resolves relative paths against it and turns the first validation
error into one line that names the key and where it came from.

A misspelt variable is refused like a misspelt key in the file. pydantic-settings refuses
an unknown key inside a known section (MAILER_SMTP_HOTS: the section model forbids extras)
but never looks at a variable whose section is unknown (MAILER_SMPT_HOST), so
`_check_env_names` refuses every MAILER_* name whose first word is not a section, except the
few in NON_CONFIG_VARIABLES, which other parts of mailer read themselves.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, get_origin
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from mailer.errors import ConfigError

ENV_PREFIX = "MAILER_"
# The only MAILER_* variables that are not config keys. (The passwords are keys, smtp.password
# and web.password, set only this way: MAILER_SMTP_PASSWORD, MAILER_WEB_PASSWORD.)
NON_CONFIG_VARIABLES = frozenset(
    {
        "MAILER_CONFIG",  # which config file to load (find_config_path)
        "MAILER_SECRET_KEY",  # the unsubscribe-token key (mailer.tokens)
        "MAILER_BOUNCES_IMAP_PASSWORD",  # the bounce mailbox's password
        "MAILER_TEST_POSTGRES_URL",  # the test suite's PostgreSQL server
    }
)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (also IPv4-mapped), `localhost`; a bracketed IPv6 literal is fine."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseConfig(_Section):
    url: str = "sqlite:///var/mailer.db"


class SmtpConfig(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 2525
    security: Literal["none", "starttls", "ssl"] = "none"
    username: str = ""
    # Set it with MAILER_SMTP_PASSWORD; it is never printed or logged.
    password: str = Field(default="", repr=False)
    ca_file: str = ""
    timeout: Annotated[float, Field(gt=0)] = 30.0
    from_address: str = "digest@localhost"
    from_name: str = "Newsletter"
    # Domain used in Message-IDs; defaults to the domain of from_address.
    message_id_domain: str = ""
    connections: Annotated[int, Field(ge=1, le=64)] = 4
    max_per_second: Annotated[int, Field(ge=0)] = 0
    max_per_hour: Annotated[int, Field(ge=0)] = 0

    @field_validator("from_address")
    @classmethod
    def _valid_from(cls, value: str) -> str:
        from email_validator import EmailNotValidError, validate_email

        try:
            result = validate_email(value, check_deliverability=False, allow_smtputf8=False)
        except EmailNotValidError as exc:
            raise ValueError(f"from_address {value!r} is not an email address: {exc}") from None
        return result.ascii_email or result.normalized

    @field_validator("message_id_domain")
    @classmethod
    def _valid_domain(cls, value: str) -> str:
        if value and not re.fullmatch(
            r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*", value
        ):
            raise ValueError(f"message_id_domain must be a plain DNS name, got {value!r}")
        return value


class CatcherConfig(_Section):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 2525
    folder: str = "var/mail"


class ScheduleConfig(_Section):
    cron: str = "0 8 * * mon"
    timezone: str = "UTC"
    # A slot missed while the service was down is still sent if it is at most this old.
    grace_hours: Annotated[float, Field(ge=0)] = 12

    @field_validator("timezone")
    @classmethod
    def _valid_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        from mailer.scheduler import make_trigger  # local: scheduler imports config

        make_trigger(value, "UTC")
        return value


_SUBJECT_FIELDS = {"name": "Weekly", "issue": 1, "themes": "AI, Chips", "date": "1 Jan 2026"}


class DigestConfig(_Section):
    name: str = "Weekly Digest"
    subject: str = "{name} #{issue}: {themes}"
    max_articles: Annotated[int, Field(ge=1)] = 40
    min_articles: Annotated[int, Field(ge=0)] = 1
    base_url: str = "http://127.0.0.1:8080"
    language: str = "en"
    accent_color: str = "#1a56db"
    footer_text: str = "You receive this because you subscribed to our newsletter."
    postal_address: str = ""
    templates: str = "templates"
    lead_chars: Annotated[int, Field(ge=40)] = 320

    @field_validator("subject")
    @classmethod
    def _valid_subject(cls, value: str) -> str:
        try:
            value.format(**_SUBJECT_FIELDS)
        except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
            raise ValueError(
                f"bad subject template {value!r}: use only {{name}}, {{issue}}, {{themes}}, {{date}}"
            ) from exc
        return value

    @field_validator("base_url")
    @classmethod
    def _valid_base_url(cls, value: str) -> str:
        # Printable ASCII only: it is written into links and the List-Unsubscribe header.
        if not re.fullmatch(r"https?://[A-Za-z0-9.\[\]:-]+(/[!-~]*)?", value) or any(
            c in value for c in "<>\"'"
        ):
            raise ValueError(f"base_url must be an absolute http(s) URL in plain ASCII, got {value!r}")
        if value.startswith("http:") and not is_loopback(urlsplit(value).hostname or ""):
            # Mailbox providers only honour one-click unsubscribe over https (RFC 8058).
            raise ValueError(f"base_url must use https (http is only for a loopback preview), got {value!r}")
        return value.rstrip("/")

    @field_validator("accent_color")
    @classmethod
    def _valid_colour(cls, value: str) -> str:
        if not re.fullmatch(r"#[0-9a-fA-F]{3}|#[0-9a-fA-F]{6}", value):
            raise ValueError(f"accent_color must be a hex colour like #1a56db, got {value!r}")
        return value

    @model_validator(mode="after")
    def _min_not_above_max(self) -> DigestConfig:
        if self.min_articles > self.max_articles:
            raise ValueError("min_articles is larger than max_articles")
        return self


class DeliveryConfig(_Section):
    # Delays before the 1st, 2nd, ... retry of a temporary failure; the last one repeats.
    retry_minutes: list[Annotated[float, Field(gt=0)]] = Field(default=[1, 5, 15, 60, 180], min_length=1)
    # Deliveries still not done this long after the digest was built are marked failed.
    give_up_hours: Annotated[float, Field(gt=0)] = 72
    # Permanent failures (5xx) after which a subscriber is marked bounced.
    bounce_threshold: Annotated[int, Field(ge=1)] = 1
    # Stop the run after this many consecutive failures of any kind.
    max_consecutive_errors: Annotated[int, Field(ge=1)] = 50
    # A sending run renews its claim on a digest every third of this; a run that dies
    # (kill -9, a lost host, a container restart) is taken over once it runs out.
    lease_seconds: Annotated[int, Field(ge=3, le=3600)] = 60


class WebConfig(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    # Needed for the editor's pages when host is not loopback (MAILER_WEB_PASSWORD).
    password: str = Field(default="", repr=False)


class ArticlesConfig(_Section):
    # Lines that are a source's boilerplate (promotional footers). Compared letters and
    # digits only, case-insensitive, so spacing and punctuation variants all match.
    boilerplate: list[str] = Field(default_factory=list)
    # Regular expressions (case-insensitive, whole line) for scraped-page chrome to drop.
    chrome: list[str] = Field(default_factory=list)
    # Regular expressions (case-sensitive) removed from inside paragraphs: chrome that a
    # scraper glued into running text, such as photo credits.
    inline_chrome: list[str] = Field(default_factory=list)
    # A line matching one of these ends the article; what follows is a block of teasers.
    related_markers: list[str] = Field(default_factory=list)
    import_related: bool = True
    seed_folder: str = "seeds"

    @field_validator("chrome", "inline_chrome", "related_markers")
    @classmethod
    def _valid_regexes(cls, values: list[str]) -> list[str]:
        for pattern in values:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"bad regular expression {pattern!r}: {exc}") from exc
        return values


_DNS_NAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*")


class DkimConfig(_Section):
    enabled: bool = False
    # The signing domain (d=) and selector (s=): the public key is published as a TXT
    # record at <selector>._domainkey.<domain>.
    domain: str = ""
    selector: str = ""
    # PEM RSA private key; relative to the config file (Config.resolve).
    key_file: str = ""

    @field_validator("domain", "selector")
    @classmethod
    def _valid_dns_name(cls, value: str) -> str:
        if value and not _DNS_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a DNS name (ASCII letters, digits, '-', '_' and dots)")
        return value

    @model_validator(mode="after")
    def _complete_when_enabled(self) -> DkimConfig:
        if self.enabled:
            values = {"domain": self.domain, "selector": self.selector, "key_file": self.key_file}
            missing = [f"dkim.{key}" for key, value in values.items() if not value.strip()]
            if missing:
                verb = "is" if len(missing) == 1 else "are"
                raise ValueError(f"{', '.join(missing)} {verb} required when dkim.enabled = true")
        return self


class ThemeConfig(_Section):
    slug: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]*$")]
    name: str
    keywords: list[str] = Field(default_factory=list)
    fallback: bool = False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="forbid",
        frozen=True,
    )

    database: DatabaseConfig = DatabaseConfig()
    smtp: SmtpConfig = SmtpConfig()
    catcher: CatcherConfig = CatcherConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    digest: DigestConfig = DigestConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    web: WebConfig = WebConfig()
    articles: ArticlesConfig = ArticlesConfig()
    dkim: DkimConfig = DkimConfig()
    themes: list[ThemeConfig] = Field(
        default_factory=lambda: [ThemeConfig(slug="other", name="More news", fallback=True)]
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (the file arrives as init kwargs).
        return (env_settings, init_settings)

    # A field validator (not a model validator) so the error names the key: `themes`.
    @field_validator("themes")
    @classmethod
    def _themes_consistent(cls, themes: list[ThemeConfig]) -> list[ThemeConfig]:
        slugs = [t.slug for t in themes]
        dupes = sorted({s for s in slugs if slugs.count(s) > 1})
        if dupes:
            raise ValueError(f"theme slug {dupes[0]!r} is defined twice")
        fallbacks = [t.slug for t in themes if t.fallback]
        if len(fallbacks) != 1:
            raise ValueError(f"exactly one theme needs fallback = true (found {len(fallbacks)})")
        return themes


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
    def articles(self) -> ArticlesConfig:
        return self.settings.articles

    @property
    def dkim(self) -> DkimConfig:
        return self.settings.dkim

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

    @property
    def var_dir(self) -> Path:
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
