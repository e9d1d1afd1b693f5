"""The relay: can delivery open a session, and does the digest fit through it?

The session is opened by mailer.smtp's SmtpConnection, the very code delivery uses:
connect, EHLO, STARTTLS (or implicit TLS) with the certificate and host name verified
(smtp.ca_file for a private CA), EHLO again, AUTH with smtp.username and the password;
then QUIT. No MAIL FROM is ever sent, so nothing can be delivered. Each step waits at
most the doctor's timeout (not smtp.timeout, which suits a busy relay mid-send), so a
dead relay is an error line within seconds. A failure is delivery's own one line, with
the fix for its kind (certificate, login, STARTTLS, reachability).

The message size is that of the next digest as delivery would send it: the same preview
the editor sees (mailer.digest.preview), made into a message by MessageTemplate and signed
by the DKIM signer when DKIM is on, for one recipient. With no unsent articles (or no
database to read them from) a sample digest stands in: `digest.max_articles` articles with
leads of `digest.lead_chars` characters, rendered by the same Renderer, about the largest
an issue gets. It is compared with the SIZE the relay advertised in its EHLO reply (RFC
1870); a relay that advertises none is not limiting by it (or will say so only at DATA).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import UTC, datetime

from mailer.config import Config
from mailer.doctor import Check, Options, error, is_catcher, ok, warning
from mailer.errors import ConfigError, MailerError
from mailer.settings import is_loopback

NAME = "relay"
SIZE_NAME = "message size"
# What the sample digest's articles say (its size, not its words, is what counts).
_SAMPLE_WORDS = "The sample article's lead, as long as the config lets a lead be. "


@dataclass(frozen=True)
class Session:
    """What the relay said about itself in a session that opened."""

    tls: str  # "TLSv1.3", or "" in the clear
    size: int | None  # SIZE from EHLO; None when not advertised; 0 means no limit


def checks(cfg: Config, options: Options, database_ok: bool = True) -> list[Check]:
    """The relay line, then the message-size line."""
    try:
        session = open_session(cfg, options.timeout)
    except MailerError as exc:
        return [_refused(cfg, str(exc)), size(cfg, None, database_ok)]
    return [_opened(cfg, session), size(cfg, session, database_ok)]


def open_session(cfg: Config, timeout: float) -> Session:
    """Open, log in and QUIT; SmtpFatal or SmtpBusy (MailerErrors) when that fails."""
    from mailer.smtp import SmtpConnection

    quick = cfg.smtp.model_copy(update={"timeout": min(cfg.smtp.timeout, timeout)})
    conn = SmtpConnection(quick)
    conn.open()
    try:
        assert conn.conn is not None
        sock = conn.conn.sock
        tls = sock.version() or "" if isinstance(sock, ssl.SSLSocket) else ""
        advertised = conn.conn.esmtp_features.get("size")
    finally:
        conn.close()  # QUIT
    limit = int(advertised) if advertised and advertised.strip().isdigit() else None
    return Session(tls, 0 if advertised is not None and limit is None else limit)


def _where(cfg: Config) -> str:
    return f"{cfg.smtp.host}:{cfg.smtp.port}"


def _opened(cfg: Config, session: Session) -> Check:
    where, smtp = _where(cfg), cfg.smtp
    if is_catcher(cfg):
        return warning(
            NAME,
            f"{where} is the built-in mail catcher: mail stays in {cfg.catcher.folder}, nobody receives it",
            "to send for real, set [smtp] to your relay and [catcher] enabled = false",
        )
    steps = [where]
    if session.tls:
        how = "STARTTLS" if smtp.security == "starttls" else "implicit TLS"
        steps.append(f"{how} ({session.tls}, certificate verified)")
    steps.append(f"login as {smtp.username!r} accepted" if smtp.username else "no login (no smtp.username)")
    detail = ", ".join(steps) + "; QUIT, nothing sent"
    if smtp.security == "none" and not is_loopback(smtp.host):
        return warning(
            NAME,
            f"{detail}; but in the clear",
            'set smtp.security = "starttls" (port 587) or "ssl" (port 465): '
            "the password and every message cross the network unencrypted",
        )
    return ok(NAME, detail)


def _refused(cfg: Config, reason: str) -> Check:
    if is_catcher(cfg):
        return warning(
            NAME,
            f"the built-in mail catcher at {_where(cfg)} does not answer ({reason})",
            "it listens while `mailer serve` runs; to send for real, set [smtp] to your relay "
            "and [catcher] enabled = false",
        )
    return error(NAME, reason, _fix_for(cfg, reason))


def _fix_for(cfg: Config, reason: str) -> str:
    """The fix for one of mailer.smtp's one-line failures, by its kind."""
    smtp = cfg.smtp
    if "certificate" in reason:
        if "mismatch" in reason or "not valid for" in reason:
            return f"use the host name on the relay's certificate as smtp.host (now {smtp.host!r})"
        return "set smtp.ca_file to the CA that signed the relay's certificate (a private CA), or renew it"
    if "ca_file" in reason:
        return "point smtp.ca_file at a readable PEM file of CA certificates"
    if "STARTTLS" in reason and "does not offer" in reason:
        return 'this port offers no STARTTLS: use port 465 with security = "ssl", or ask the relay\'s admin'
    if "login" in reason:
        if "not supported" in reason:
            return "the relay offers no AUTH here: leave smtp.username empty, or use its submission port"
        return "check smtp.username and MAILER_SMTP_PASSWORD (the relay refused them)"
    if "TLS" in reason:
        return "check smtp.security against the port: 465 is implicit TLS (ssl), 587 is starttls"
    if "cannot take a connection now" in reason:
        return "the relay is busy or limits connections: try again in a while"
    return f"check smtp.host and smtp.port ({_where(cfg)}), that the relay runs and no firewall blocks it"


def size(cfg: Config, session: Session | None, database_ok: bool) -> Check:
    """The digest's message size against the relay's SIZE."""
    try:
        measured, what = message_size(cfg, database_ok)
    except Exception as exc:  # a broken template, say: the line says so, the others still run
        return error(SIZE_NAME, f"the digest could not be rendered: {exc}", "see `mailer digest preview`")
    shown = f"{what} is {_kb(measured)}"
    if session is None:
        return warning(SIZE_NAME, f"{shown}; not compared: no session with the relay", "see the relay line")
    if session.size is None:
        return ok(SIZE_NAME, f"{shown}; the relay advertises no SIZE limit")
    if session.size == 0:
        return ok(SIZE_NAME, f"{shown}; the relay advertises SIZE without a limit")
    if measured > session.size:
        return error(
            SIZE_NAME,
            f"{shown}, over the relay's limit of {_kb(session.size)} (SIZE {session.size})",
            "lower digest.max_articles or digest.lead_chars, or have the relay's limit raised",
        )
    return ok(SIZE_NAME, f"{shown}; the relay takes up to {_kb(session.size)} (SIZE {session.size})")


def _kb(n: int) -> str:
    return f"{n / 1000:.0f} kB" if n < 10_000_000 else f"{n / 1_000_000:.0f} MB"


def message_size(cfg: Config, database_ok: bool) -> tuple[int, str]:
    """Bytes of one recipient's message of the next digest (or the sample), and which."""
    from mailer.dkim import DkimSigner
    from mailer.message import MessageTemplate, Recipient
    from mailer.render import PREVIEW_PREFERENCES, PREVIEW_UNSUBSCRIBE

    preview = _next_digest(cfg) if database_ok else None
    if preview is not None:
        subject, html, text, what = preview
    else:
        subject, html, text = _sample_digest(cfg)
        what = f"a sample digest of {cfg.digest.max_articles} articles (none unsent)"
    base = cfg.digest.base_url
    unsubscribe, preferences = base + PREVIEW_UNSUBSCRIBE, base + PREVIEW_PREFERENCES
    rcpt = Recipient(0, "reader@example.com", "A Reader", unsubscribe, preferences_url=preferences)
    data = MessageTemplate(cfg, 0, subject, html, text).render(rcpt)
    try:
        signer = DkimSigner.from_config(cfg)
    except ConfigError:
        signer = None  # the DKIM line says what is wrong with the key; measured unsigned
    if signer is not None:
        data = signer.sign(data)
    return len(data), what


def _next_digest(cfg: Config) -> tuple[str, str, str, str] | None:
    from mailer import digest
    from mailer.db import Database

    db = Database(cfg.database_url)
    try:
        with db.read_only():
            p = digest.preview(db, cfg)
    finally:
        db.dispose()
    if p is None:
        return None
    return p.subject, p.html, p.text, f"the next digest (#{p.issue}, {p.article_count} articles)"


def _sample_digest(cfg: Config) -> tuple[str, str, str]:
    from mailer.models import Article
    from mailer.render import PREVIEW_LINKS, Renderer, with_links

    renderer = Renderer(cfg)
    now = datetime.now(UTC)
    lead = (_SAMPLE_WORDS * (cfg.digest.lead_chars // len(_SAMPLE_WORDS) + 1))[: cfg.digest.lead_chars]
    themes = cfg.theme_slugs
    articles = [
        Article(
            id=i,
            title=f"Sample article {i}: a headline of a usual length for a news story",
            body=lead,
            url=f"https://news.example.org/2026/sample-article-{i}",
            source="Example News",
            imported_at=now,
            theme=themes[i % len(themes)],
            summary="",
        )
        for i in range(1, cfg.digest.max_articles + 1)
    ]
    content = renderer.content(articles, 1, now)
    base = cfg.digest.base_url
    html = with_links(renderer.html(content), base, PREVIEW_LINKS)
    return content.subject, html, with_links(renderer.text(content), base, PREVIEW_LINKS)
