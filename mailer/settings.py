"""The configuration's schema: one pydantic model per section, and `Settings`, which
pydantic-settings fills from the file and the `MAILER_<SECTION>_<KEY>` variables.

Each key is typed and validated here (ranges, time zones, cron expressions, URLs, colours,
regular expressions), so a config that loads is one every part of mailer can use as it is;
mailer.config finds the file, resolves paths and turns the first error into one line.

About 480 lines, on purpose: the one schema of config.toml, section by section, so a key's
type, range and meaning are found in one place.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "MAILER_"


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
    # "latest": a reader who confirms a web sign-up is mailed the latest issue at once.
    welcome: Literal["", "latest"] = ""

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
    # A sending run renews its heartbeat every third of this; what a run that dies (kill
    # -9, a lost host, a container restart) had in flight is taken over once it runs out.
    lease_seconds: Annotated[int, Field(ge=3, le=3600)] = 60


class WebConfig(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    # Needed for the editor's pages when host is not loopback (MAILER_WEB_PASSWORD).
    password: str = Field(default="", repr=False)
    # The public archive of sent issues (/archive, /archive/<issue>, /archive.atom) and
    # the "View in browser" link in every mail; false turns all of it off (404).
    archive: bool = True


class SignupConfig(_Section):
    """The public sign-up form (double opt-in) and its limits against abuse."""

    # How long a confirmation link works; unconfirmed sign-ups older than this are purged.
    confirm_days: Annotated[int, Field(ge=1, le=90)] = 7
    # Confirmation mails per address per hour, and sign-ups per client IP per hour.
    per_address_per_hour: Annotated[int, Field(ge=1)] = 1
    per_ip_per_hour: Annotated[int, Field(ge=1)] = 10


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


class FeedSource(_Section):
    """One `[[feeds.sources]]` entry: what `mailer feeds add` takes, kept in the file."""

    url: str
    name: str = ""
    # A theme slug for every item; "" classifies each item by keywords, like a file's.
    theme: str = ""
    fetch_full_text: bool = False

    @field_validator("url")
    @classmethod
    def _pollable(cls, value: str) -> str:
        from mailer.feeds.fetch import check_feed_url

        try:
            return check_feed_url(value)
        except Exception as exc:  # InputError: its one line is the reason
            raise ValueError(str(exc)) from None


class FeedsConfig(_Section):
    """RSS and Atom sources (mailer.feeds). `[feeds]` holds the settings and
    `[[feeds.sources]]` the sources: TOML cannot have both a `[feeds]` table and a
    `[[feeds]]` array, and the settings belong beside their sources."""

    # How often each feed is polled; a feed's own Cache-Control max-age, Retry-After or
    # <ttl> can only make it longer.
    interval_minutes: Annotated[int, Field(ge=1, le=7 * 24 * 60)] = 60
    # A feed's first poll imports only items newer than this: adding a source never floods
    # the next issue with its archive.
    max_age_days: Annotated[int, Field(ge=1, le=3650)] = 7
    max_megabytes: Annotated[float, Field(gt=0, le=1024)] = 10
    connect_timeout: Annotated[float, Field(gt=0, le=300)] = 10
    read_timeout: Annotated[float, Field(gt=0, le=300)] = 30
    # Feeds fetched at once: one slow feed never delays the others, and a poll stays polite.
    concurrency: Annotated[int, Field(ge=1, le=32)] = 8
    sources: list[FeedSource] = Field(default_factory=list)

    @field_validator("sources")
    @classmethod
    def _listed_once(cls, sources: list[FeedSource]) -> list[FeedSource]:
        urls = [s.url for s in sources]
        dupes = sorted({u for u in urls if urls.count(u) > 1})
        if dupes:
            raise ValueError(f"feed {dupes[0]} is listed twice")
        return sources


class BouncesConfig(_Section):
    """The return path (mailer.bounces): VERP, and where bounces and complaints come from."""

    # With VERP on, each message's envelope sender is local+<token>@domain of this address.
    address: str = ""
    # Mailer's own SMTP receiver as the MX of the bounce domain ("host:port"; "" off).
    listen: str = ""
    # A bounce mailbox polled over IMAP with TLS: imaps://user@host[:port]/FOLDER. The
    # password only from MAILER_BOUNCES_IMAP_PASSWORD.
    imap_url: str = ""
    imap_password: str = Field(default="", repr=False)
    imap_ca_file: str = ""  # a private CA for the mailbox's certificate (tests, own servers)
    # Processed bounces and complaints are moved here; nothing else in the mailbox is touched.
    imap_processed_folder: str = "mailer-processed"
    imap_interval_seconds: Annotated[int, Field(ge=10, le=86400)] = 300
    # Webhooks (POST /webhooks/<provider>); a provider with nothing set here answers 404.
    ses_topic_arns: list[str] = Field(default_factory=list)  # SNS topics to accept
    # Where SNS signing certificates may come from (a regular expression for the host).
    sns_certificate_hosts: str = r"sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?"
    postmark_username: str = ""
    postmark_password: str = Field(default="", repr=False)
    sendgrid_public_key: str = ""  # the event webhook's verification key (base64 DER)
    mailgun_signing_key: str = Field(default="", repr=False)
    # An event older than this (by its own timestamp) is a replay: ignored.
    webhook_max_age_minutes: Annotated[int, Field(ge=1, le=7 * 24 * 60)] = 15

    @field_validator("address")
    @classmethod
    def _plain_address(cls, value: str) -> str:
        if not value:
            return value
        from email_validator import EmailNotValidError, validate_email

        try:
            result = validate_email(value, check_deliverability=False, allow_smtputf8=False)
        except EmailNotValidError as exc:
            raise ValueError(f"{value!r} is not an email address: {exc}") from None
        address = result.ascii_email or result.normalized
        if "+" in address.partition("@")[0]:
            raise ValueError(f"{value!r}: the local part must not hold '+' (the VERP token goes after it)")
        return address

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if value:
            host, _, port = value.rpartition(":")
            if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise ValueError(f"{value!r} is not host:port")
        return value

    @field_validator("imap_url")
    @classmethod
    def _imaps(cls, value: str) -> str:
        if value:
            parts = urlsplit(value)
            if parts.scheme != "imaps" or not parts.hostname or not parts.username:
                raise ValueError(f"{value!r} is not imaps://user@host[:port]/FOLDER")
            if parts.password:
                raise ValueError("the password goes in MAILER_BOUNCES_IMAP_PASSWORD, not in imap_url")
        return value

    @model_validator(mode="after")
    def _listen_needs_address(self) -> BouncesConfig:
        if self.listen and not self.address:
            raise ValueError(
                "bounces.listen needs bounces.address: the receiver accepts only its VERP addresses"
            )
        return self

    @field_validator("sendgrid_public_key")
    @classmethod
    def _ec_public_key(cls, value: str) -> str:
        if value:
            import base64

            from cryptography.hazmat.primitives.asymmetric import ec
            from cryptography.hazmat.primitives.serialization import load_der_public_key

            try:
                key = load_der_public_key(base64.b64decode(value.strip(), validate=True))
            except ValueError as exc:
                raise ValueError(f"not a base64 DER public key ({exc})") from None
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise ValueError("not an ECDSA public key (SendGrid's verification key is one)")
        return value.strip()

    @field_validator("sns_certificate_hosts")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"bad regular expression {value!r}: {exc}") from exc
        return value


_DNS_NAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*")


class DkimConfig(_Section):
    enabled: bool = False
    # The signing domain (d=) and selector (s=): the public key is published as a TXT
    # record at <selector>._domainkey.<domain>.
    domain: str = ""
    selector: str = ""
    # PEM RSA private key; relative to the config file (Config.resolve).
    key_file: str = ""
    # Optional second signature, ed25519-sha256 (RFC 8463), beside the RSA one (receivers
    # that do not know it ignore it): its own selector, whose TXT record says k=ed25519, and
    # a PEM Ed25519 private key, relative to the config file. Both or neither.
    ed25519_selector: str = ""
    ed25519_key_file: str = ""

    @field_validator("domain", "selector", "ed25519_selector")
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
            pair = {"ed25519_selector": self.ed25519_selector, "ed25519_key_file": self.ed25519_key_file}
            given = [key for key, value in pair.items() if value.strip()]
            if len(given) == 1:
                other = next(key for key in pair if key not in given)
                raise ValueError(f"dkim.{other} is required when dkim.{given[0]} is set")
            # One selector publishes one key: the two signatures need two names.
            if given and self.ed25519_selector.lower() == self.selector.lower():
                raise ValueError("dkim.ed25519_selector must differ from dkim.selector")
        return self


class LogConfig(_Section):
    # "plain": `time LEVEL logger: message` lines; "json": one JSON object per line (time,
    # level, logger, message, exc_info) for log shippers. Read when `mailer serve` starts.
    format: Literal["plain", "json"] = "plain"


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
    signup: SignupConfig = SignupConfig()
    articles: ArticlesConfig = ArticlesConfig()
    dkim: DkimConfig = DkimConfig()
    feeds: FeedsConfig = FeedsConfig()
    bounces: BouncesConfig = BouncesConfig()
    log: LogConfig = LogConfig()
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

    @model_validator(mode="after")
    def _feed_themes_exist(self) -> Settings:
        slugs = {t.slug for t in self.themes}
        for source in self.feeds.sources:
            if source.theme and source.theme not in slugs:
                raise ValueError(
                    f"feed {source.url}: unknown theme {source.theme!r} (themes: {', '.join(sorted(slugs))})"
                )
        return self
