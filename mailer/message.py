"""MIME messages: built once per digest with the email package, personalised per recipient.

Building an EmailMessage costs ~7-8 ms per recipient, which alone would cap delivery near
130 messages/s. So the email package builds one skeleton per digest (every header, both
parts, the boundaries, the RFC 2047 encodings) with markers where recipients differ, and
each recipient costs a few string substitutions plus base64 of the two bodies.

Message-IDs are unique forever, not only within one database: `<digest-N.sub-M.KEY@domain>`
where KEY is 128 random bits. A digest's delivery stores its key (Delivery.message_key,
set when the row is first claimed), so every retry of that delivery carries the same ID;
a test copy gets a fresh key each time. Derived IDs alone repeated after a database reset
or on a second installation with the same domain, and Gmail silently drops a message whose
Message-ID it has seen. Rows attempted before keys existed have the key "" and keep their
old derived ID (`<digest-N.sub-M@domain>`), so their retries repeat it too.
"""

from __future__ import annotations

import base64
import dataclasses
import re
import secrets
from dataclasses import dataclass
from email.header import Header
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, quote
from urllib.parse import quote as url_quote

from mailer.config import Config
from mailer.models import utcnow
from mailer.render import PREFERENCES_PLACEHOLDER, UNSUBSCRIBE_PLACEHOLDER

_MARK = "MAILERMARK{}X"
_FIELDS = ("to", "msgid", "unsub", "text", "html")
_SPLIT = re.compile(rb"MAILERMARK(\w+?)X")
_READER_LINKS = re.compile(f"({re.escape(UNSUBSCRIBE_PLACEHOLDER)}|{re.escape(PREFERENCES_PLACEHOLDER)})")


def new_message_key() -> str:
    """The random part of a Message-ID: 128 bits, 32 lower-case hex digits."""
    return secrets.token_hex(16)


@dataclass(frozen=True)
class Recipient:
    subscriber_id: int
    email: str
    name: str
    unsubscribe_url: str
    # A delivery passes its stored key (the same on every retry); left out, a fresh one.
    message_key: str = dataclasses.field(default_factory=new_message_key)
    preferences_url: str = ""  # "" where a reader has none (a test copy): the preview page


def message_id_domain(cfg: Config) -> str:
    domain = cfg.smtp.message_id_domain or cfg.smtp.from_address.rpartition("@")[2]
    # Neither key is validated as a domain by config.py, and the result is written into
    # Message-ID and List-Id as it is: a CR/LF there would start a header of its own.
    return _NOT_IN_DOMAIN.sub("", domain) or "localhost"


_NOT_IN_DOMAIN = re.compile(r"[^A-Za-z0-9.-]+")


def list_id(cfg: Config) -> str:
    """RFC 2919: a phrase and <label.domain>, the label derived from the newsletter name."""
    # At most 63 characters, like a DNS label: an unbounded one made a line over 998 octets.
    label = re.sub(r"[^a-z0-9]+", "-", cfg.digest.name.lower())[:63].strip("-") or "newsletter"
    return _with_phrase("List-Id", _header_safe(cfg.digest.name), f"<{label}.{message_id_domain(cfg)}>")


def message_id(domain: str, digest_id: int, subscriber_id: int, key: str) -> str:
    """Unique through `key` (see the module docstring); "" is the pre-key derived form."""
    # The key reaches a header as it is: only letters and digits are kept (it comes from the
    # database, where anything could have been written).
    key = _NOT_IN_KEY.sub("", key)
    suffix = f".{key}" if key else ""
    return f"<digest-{digest_id}.sub-{subscriber_id}{suffix}@{domain}>"


_NOT_IN_KEY = re.compile(r"[^A-Za-z0-9]+")


def _header_safe(text: str) -> str:
    # Belt and braces: nothing that reaches a header can carry CR, LF or other controls.
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else " " for ch in text)
    return " ".join(text.split())


# Display names are encoded with email.header.Header (RFC 2047 words of at most 75
# characters, folded) and written into the bytes directly: formataddr makes ONE encoded
# word of any length (a 200-emoji name gave a 1,100-octet line, over RFC 5322's 998), and
# the email package, folding a long display name with specials, drops its quotes ("From:
# Eve Bcc: x@example.com ..." then parses as a group).
_SPECIALS = re.compile(r'[][\\()<>@,:;".]')
_PLAIN_MAX = 200  # longer ASCII names are encoded too, so that they can be folded


def _phrase(text: str, header_name: str) -> str:
    """`text` (already _header_safe) as an RFC 5322 phrase: as is, quoted, or encoded."""
    if text.isascii() and len(text) <= _PLAIN_MAX:
        return f'"{quote(text)}"' if _SPECIALS.search(text) else text
    # maxlinelen 75: each encoded word stays within RFC 2047's 75 characters.
    return Header(text, "utf-8", header_name=header_name).encode(linesep="\r\n", maxlinelen=75)


def _with_phrase(header_name: str, phrase: str, angle_addr: str) -> str:
    """The value of `header_name: phrase <addr>`, lines kept within 78 characters."""
    if not phrase:
        return angle_addr
    words = _phrase(phrase, header_name)
    last = words.rpartition("\r\n")[2] if "\r\n" in words else f"{header_name}: {words}"
    joint = "\r\n " if len(last) + 1 + len(angle_addr) > 78 else " "
    return f"{words}{joint}{angle_addr}"


class MessageTemplate:
    """The serialised skeleton of one digest's message, split at the per-recipient markers."""

    def __init__(self, cfg: Config, digest_id: int, subject: str, html: str, text: str) -> None:
        self.cfg = cfg
        self.digest_id = digest_id
        self.domain = message_id_domain(cfg)  # once per digest, not per recipient
        self.html = _Body(html)
        self.text = _Body(text)
        msg = EmailMessage(policy=SMTP)
        # From and List-Id are written into the bytes below, already encoded and folded
        # (see _with_phrase): the email package, folding a long display name with specials,
        # drops its quotes ("From: Eve Bcc: x@example.com ..." then parses as a group).
        msg["From"] = _MARK.format("from")
        msg["To"] = _MARK.format("to")
        msg["Subject"] = _header_safe(subject)
        # Stamped when this delivery run starts (a template lives for one run).
        msg["Date"] = format_datetime(utcnow())
        msg["Message-ID"] = _MARK.format("msgid")
        msg["List-Id"] = _MARK.format("listid")
        msg["List-Unsubscribe"] = f"<{_MARK.format('unsub')}>"
        msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        # Text first, HTML second: clients show the last alternative they can render.
        msg.set_content(_MARK.format("text"), subtype="plain", charset="utf-8", cte="7bit")
        msg.add_alternative(_MARK.format("html"), subtype="html", charset="utf-8", cte="7bit")
        for part in msg.iter_parts():
            # The marker is replaced by the base64 of the personalised body.
            part.replace_header("Content-Transfer-Encoding", "base64")
            # add_alternative gives the HTML part a MIME-Version of its own: it belongs at
            # the top only (RFC 2045 4), and the two parts should carry the same headers.
            del part["MIME-Version"]
        address = f"<{_header_safe(cfg.smtp.from_address)}>"
        sender = _with_phrase("From", _header_safe(cfg.smtp.from_name), address)
        raw = msg.as_bytes()
        for field, value in (("from", sender), ("listid", list_id(cfg))):
            raw = raw.replace(_MARK.format(field).encode(), value.encode("utf-8"))
        pieces = _SPLIT.split(raw)
        # pieces alternates literal bytes and field names: [lit, name, lit, name, ..., lit]
        self.literals = pieces[0::2]
        self.fields = [p.decode() for p in pieces[1::2]]
        if sorted(self.fields) != sorted(_FIELDS):
            raise RuntimeError(f"message skeleton lost a marker: {self.fields}")

    def render(self, rcpt: Recipient) -> bytes:
        url = _safe_url(rcpt.unsubscribe_url)
        links = {
            UNSUBSCRIBE_PLACEHOLDER: url,
            PREFERENCES_PLACEHOLDER: _safe_url(rcpt.preferences_url) if rcpt.preferences_url else url,
        }
        email = _header_safe(rcpt.email)  # normalised when stored; this guards raw rows
        display = _header_safe(rcpt.name)
        values = {
            "to": (_with_phrase("To", display, f"<{email}>") if display else email).encode("utf-8"),
            "msgid": message_id(self.domain, self.digest_id, rcpt.subscriber_id, rcpt.message_key).encode(),
            "unsub": url,
            "text": self.text.base64(links),
            "html": self.html.base64(links),
        }
        out = [self.literals[0]]
        for name, literal in zip(self.fields, self.literals[1:], strict=True):
            out.append(values[name])
            out.append(literal)
        return b"".join(out)


class _Body:
    """A part's body in MIME canonical form (CRLF), base64-encoded per recipient.

    Only the per-reader links differ between recipients, and they sit in the footer. So
    the base64 of everything before the first placeholder, up to a whole 57-byte line, is
    computed once; per recipient only the short rest is encoded (base64.encodebytes runs
    a Python loop per line, which for the whole 75 KB body cost ~0.4 ms a message)."""

    def __init__(self, body: str) -> None:
        crlf = body.replace("\r\n", "\n").replace("\n", "\r\n")
        pieces = _READER_LINKS.split(crlf)  # [text, placeholder, text, ..., text]
        literals = [p.encode("utf-8") for p in pieces[0::2]]
        self.names = pieces[1::2]
        cut = len(literals[0]) // _B64_LINE * _B64_LINE
        self.static = base64.encodebytes(literals[0][:cut]).replace(b"\n", b"\r\n")
        self.parts = [literals[0][cut:], *literals[1:]]

    def base64(self, links: dict[str, bytes]) -> bytes:
        out = [self.parts[0]]
        for name, literal in zip(self.names, self.parts[1:], strict=True):
            out += (links[name], literal)
        rest = b"".join(out)
        if not rest:
            return self.static.rstrip(b"\r\n")
        return self.static + base64.encodebytes(rest).replace(b"\n", b"\r\n").rstrip(b"\r\n")


def _safe_url(url: str) -> bytes:
    """digest.base_url is only checked up to the host name: whatever follows (CR/LF, a
    space, a quote, non-ASCII) must neither start a header of its own in
    List-Unsubscribe nor leave the href in the HTML, nor crash the ASCII encoding."""
    if not _URL_OK.fullmatch(url):
        url = url_quote(url, safe=_URL_SAFE)
    return url.encode("ascii")


_B64_LINE = 57  # input bytes per 76-character base64 line (RFC 2045)
# RFC 3986 reserved characters and "%" stay; anything else outside unreserved is escaped.
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"
_URL_OK = re.compile(r"[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]*")
