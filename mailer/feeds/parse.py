"""Fetched feed bytes to clean items: feedparser reads the feed, lxml turns its HTML into text.

What holds, and why:
* **Nothing is fetched or opened.** feedparser.parse() treats a str as a URL or a file name,
  and bytes too go through open() first: feedparser.parse(b"/etc/passwd") reads that file.
  It is only ever given an io.BytesIO, which it reads and nothing else. The feed's address
  reaches it as the Content-Location response header (for relative links) and the HTTP
  Content-Type as Content-Type (for the charset, which outranks the XML prolog's as RFC 3023
  says). External entities stay off (feedparser turns them off; expat caps entity blow-up).
* **Text only, cleaned here.** feedparser's HTML sanitizer and relative-URI rewriting are
  off (per call, never its module globals): titles and an item's text are read by
  mailer.feeds.text, which drops scripts, styles, embeds and forms whole, keeps no markup or
  URL of the content, and says when a title is HTML. Every paragraph, title and author is one
  clean line (mailer.parsing.clean_line).
* **Never raises on bad input.** Garbage, an empty body, an HTML page or a malformed feed
  give a ParsedFeed whose `problem` says so; items read despite malformed XML are kept. An
  item that cannot be read is skipped with a note; the others are not lost.
* **Problem or not.** feedparser flags ("bozo") several things that are not problems:
  NonXMLContentType (it says so whenever the Content-Type is not an XML type, though a feed
  served as text/html parses fine) is ignored; CharacterEncodingOverride is ignored when the
  text was read as UTF-8 or as its own XML prolog says (e.g. text/xml without a charset, which
  RFC 3023 calls US-ASCII), and reported when the encoding was guessed, since the text may
  then be garbled. A real XML error ("malformed XML: …") and an unknown encoding are reported.
  Line numbers are the document's own (feedparser adds a prolog line when there is none).
* **A document is a feed** when feedparser recognises RSS or Atom in it, or finds items.
  Otherwise `problem` says what it is: an empty body, an HTML page (naming the feed the page
  links to, when it does), another XML document, or text.
"""

from __future__ import annotations

import io
import re
import xml.sax
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urljoin, urlsplit

import feedparser
import lxml.etree as etree
import lxml.html
from feedparser.exceptions import CharacterEncodingOverride, CharacterEncodingUnknown

from mailer.feeds.text import detail_paragraphs, fix_char_refs, title_text
from mailer.models import utcnow
from mailer.parsing import MAX_TITLE_CHARS, clean_line, fingerprint, squash

# A title taken from an untitled item's text: its first sentence, cut to a headline's length.
MAX_DERIVED_TITLE_CHARS = 120
MAX_AUTHOR_CHARS = 200
# Longer links are not links a reader can be sent to (and would bloat every mail).
MAX_LINK_CHARS = 2048
# A date this far ahead of now is a clock or time-zone error, not a scheduled post.
FUTURE_SLACK = timedelta(hours=1)
# <ttl> and sy:updatePeriod beyond this are not a polling interval anyone means.
MAX_TTL = timedelta(days=30)
_SY_PERIODS = {
    "hourly": timedelta(hours=1),
    "daily": timedelta(days=1),
    "weekly": timedelta(weeks=1),
    "monthly": timedelta(days=30),
    "yearly": timedelta(days=365),
}
_PREVIEW_CHARS = 60

# The end of a sentence: closing punctuation, then space and a capital, digit or quote.
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s+[\"'“‘(\[]?[^\W_a-z])")
_XML_ENCODING = re.compile(rb"""^<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_FEED_TYPES = frozenset({"application/rss+xml", "application/atom+xml"})
_UTF8 = frozenset({"utf-8", "utf8"})
_KEY_KINDS = {"guid": "guid", "link": "link", "sha256": "text"}


@dataclass
class Item:
    key: str
    title: str
    link: str | None
    published: datetime | None
    author: str
    paragraphs: list[str]

    @property
    def body(self) -> str:
        return "\n\n".join(self.paragraphs)


@dataclass
class ParsedFeed:
    title: str = ""
    link: str | None = None
    items: list[Item] = field(default_factory=list)
    ttl: timedelta | None = None
    problem: str = ""
    notes: list[str] = field(default_factory=list)


def parse_feed(body: bytes, url: str, content_type: str = "", now: datetime | None = None) -> ParsedFeed:
    """The feed in `body` (fetched from `url`, served as `content_type`) as clean items, with
    what was wrong with the document in `problem` and what was changed per item in `notes`."""
    now = now or utcnow()
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    try:
        # The Content-Type key is always given, even empty: without it feedparser reads a
        # document with no declared encoding as ISO-8859-1, with it as UTF-8.
        raw = feedparser.parse(
            io.BytesIO(fix_char_refs(body)),
            response_headers={"content-location": url, "content-type": content_type},
            resolve_relative_uris=False,
            sanitize_html=False,
        )
    except Exception as exc:  # feedparser's own failure must not lose the poll of other feeds
        return ParsedFeed(problem=_line(f"unreadable: {type(exc).__name__}: {exc}"))
    atom = str(raw.get("version") or "").startswith("atom")
    if not raw.get("version") and not raw.get("entries"):
        return ParsedFeed(problem=f"not a feed: {_what_it_is(body, url, content_type, raw)}")
    meta = raw.get("feed", {})
    parsed = ParsedFeed(
        title=_cut(title_text(meta.get("title_detail"), atom), MAX_TITLE_CHARS),
        link=_http_url(meta.get("link")),
        ttl=_ttl(meta),
    )
    keys: set[str] = set()
    for number, entry in enumerate(raw.get("entries", []), start=1):
        try:
            item, notes = _item(entry, number, atom, now)
        except Exception as exc:  # one unreadable item must not lose the others
            parsed.notes.append(_line(f"item {number}: could not be read ({type(exc).__name__}), skipped"))
            continue
        if item is not None and item.key in keys:
            kind = _KEY_KINDS[item.key.partition(":")[0]]
            notes = [f"{_label(item.title, number)}: duplicate of an earlier item (same {kind}), skipped"]
            item = None
        parsed.notes.extend(notes)
        if item is not None:
            keys.add(item.key)
            parsed.items.append(item)
    parsed.problem = _problem(raw, body, len(parsed.items))
    return parsed


def _item(entry: Any, number: int, atom: bool, now: datetime) -> tuple[Item | None, list[str]]:
    notes: list[str] = []
    paragraphs = _body(entry)
    title = title_text(entry.get("title_detail"), atom)
    if not squash(title):
        if not paragraphs:
            return None, [f"item {number}: no title and no text, skipped"]
        title = _first_sentence(paragraphs[0])
        notes.append(f'item {number}: no title, titled "{title}" from its first sentence')
    title = _cut(title, MAX_TITLE_CHARS)
    label = _label(title, number)

    link = None
    raw_link = str(entry.get("link") or "").strip()
    if not raw_link:
        notes.append(f"{label}: no link")
    else:
        link = _http_url(raw_link)
        if link is None:
            notes.append(f"{label}: {_link_problem(raw_link)}, dropped")

    # dict.get, not FeedParserDict.get: that answers "updated" with "published" (and warns).
    published = _date(dict.get(entry, "published_parsed")) or _date(dict.get(entry, "updated_parsed"))
    said = dict.get(entry, "published") or dict.get(entry, "updated")
    if published is None and said:
        said = _preview(clean_line(str(said)))
        notes.append(f'{label}: date "{said}" not understood, left undated')
    if published is not None and published > now + FUTURE_SLACK:
        notes.append(f"{label}: dated in the future ({published:%Y-%m-%d %H:%M} UTC), dated now instead")
        published = now

    detail = entry.get("author_detail") or {}
    author = clean_line(str(detail.get("name") or ("" if detail else entry.get("author") or "")))

    guid = clean_line(str(entry.get("id") or ""))
    if guid:
        key = f"guid:{guid}"
    elif link:
        key = f"link:{link}"
    else:
        key = "sha256:" + fingerprint(title + "\n\n".join(paragraphs))
    item = Item(key, title, link, published, _cut(author, MAX_AUTHOR_CHARS), paragraphs)
    return item, notes


def _body(entry: Any) -> list[str]:
    """The richest text of an item: of its content[] the longest, HTML before plain text (a
    plain-text copy has lost the paragraphs); then the summary if that is longer still."""
    best: tuple[bool, int] = (False, -1)
    chosen: list[str] = []
    for detail in entry.get("content") or []:
        paragraphs, html = detail_paragraphs(detail)
        rank = (html, sum(map(len, paragraphs)))
        if paragraphs and rank > best:
            best, chosen = rank, paragraphs
    summary, _ = detail_paragraphs(entry.get("summary_detail"))
    if sum(map(len, summary)) > sum(map(len, chosen)):
        chosen = summary
    return chosen


def _first_sentence(text: str) -> str:
    match = _SENTENCE_END.search(text)
    sentence = text[: match.end()] if match else text
    if sentence.endswith(".") and not sentence.endswith(".."):
        sentence = sentence[:-1]  # a headline has no full stop
    return _cut(sentence, MAX_DERIVED_TITLE_CHARS)


def _cut(text: str, limit: int) -> str:
    """`text` in at most `limit` characters, cut at a word with "…" when it is longer."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    # At a word boundary unless it is too far back (then inside the word).
    if not text[limit - 1].isspace() and space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:-–—") + "…"


def _http_url(value: Any) -> str | None:
    """An absolute http(s) URL (spaces in its path escaped), or None."""
    url = str(value or "").strip()
    if not url or len(url) > MAX_LINK_CHARS or any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. a malformed IPv6 host
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or " " in parts.netloc:
        return None
    return url.replace(" ", "%20")


def _link_problem(link: str) -> str:
    if len(link) > MAX_LINK_CHARS:
        return f"link longer than {MAX_LINK_CHARS} characters"
    try:
        scheme = urlsplit(link).scheme
    except ValueError:
        scheme = ""
    if scheme and scheme.lower() not in ("http", "https"):
        return f"link is not http(s) ({scheme.lower()}:)"
    if not scheme:
        return f'link "{_preview(clean_line(link))}" is relative and the feed has no http(s) address'
    return f'link "{_preview(clean_line(link))}" is not a usable URL'


def _date(value: Any) -> datetime | None:
    """feedparser's time.struct_time (always UTC) as an aware datetime; None if unusable."""
    if not value:
        return None
    try:
        # A leap second (60) is not a datetime second.
        return datetime(*value[:5], min(value[5], 59), tzinfo=UTC)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


def _ttl(meta: Any) -> timedelta | None:
    """RSS <ttl> (minutes), else the syndication module's period / frequency; None if absent
    or not a sane positive interval."""
    try:
        if meta.get("ttl"):
            ttl = timedelta(minutes=int(str(meta["ttl"]).strip()))
        elif str(meta.get("sy_updateperiod") or "").strip().lower() in _SY_PERIODS:
            period = _SY_PERIODS[str(meta["sy_updateperiod"]).strip().lower()]
            ttl = period / int(str(meta.get("sy_updatefrequency") or "1").strip())
        else:
            return None
    except (ValueError, ZeroDivisionError, OverflowError):
        return None
    return ttl if timedelta(0) < ttl <= MAX_TTL else None


def _problem(raw: Any, body: bytes, items: int) -> str:
    """One line about the document as a whole, or "" (see the module docstring)."""
    if not raw.get("bozo"):
        return ""
    exc = raw.get("bozo_exception")
    read = f"{items} item(s) read anyway" if items else "no item could be read"
    if isinstance(exc, xml.sax.SAXParseException):
        return f"malformed XML: {_sax_error(exc, raw, body)}; {read}"
    if isinstance(exc, CharacterEncodingUnknown):
        return _line(f"unknown character encoding: {exc}")
    if isinstance(exc, CharacterEncodingOverride):
        used = str(raw.get("encoding") or "").lower()
        declared = _XML_ENCODING.match(body.lstrip(b"\xef\xbb\xbf"))
        if used in _UTF8 or (declared and declared.group(1).decode("ascii").lower() == used):
            return ""
        return _line(f"character encoding guessed: {exc} (some characters may be wrong)")
    if isinstance(exc, xml.sax.SAXException):
        return _line(f"malformed XML: {exc}; {read}")
    return ""  # NonXMLContentType: the Content-Type is not an XML type, the feed parsed anyway


def _sax_error(exc: xml.sax.SAXParseException, raw: Any, body: bytes) -> str:
    line, column = exc.getLineNumber(), exc.getColumnNumber()
    # feedparser puts an XML prolog line in front of a document that has none.
    try:
        head = body[:200].decode(str(raw.get("encoding") or "utf-8"), "replace").lstrip("\ufeff")
    except LookupError:
        head = ""
    if not head.startswith("<?xml") and line > 1:
        line -= 1
    # expat counts columns from 0; people (and editors) from 1.
    return _line(f"{exc.getMessage()} at line {line}, column {column + 1}")


def _what_it_is(body: bytes, url: str, content_type: str, raw: Any) -> str:
    """What a document that is not a feed is, for the problem line."""
    head = body[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    mime = content_type.partition(";")[0].strip().lower()
    if not body.strip():
        return "empty body"
    if (
        mime in ("text/html", "application/xhtml+xml")
        or head.startswith(b"<!doctype html")
        or b"<html" in head
    ):
        feed = _linked_feed(body, url)
        return f"an HTML page, which links to the feed {feed}" if feed else "an HTML page"
    if mime and not (mime.endswith("/xml") or mime.endswith("+xml")):
        return mime
    if head.startswith(b"<"):
        exc = raw.get("bozo_exception")
        if isinstance(exc, xml.sax.SAXParseException):
            return f"malformed XML ({_sax_error(exc, raw, body)}), neither RSS nor Atom"
        root = _xml_root(body)
        return (
            f"an XML document whose root is <{root}>, neither RSS nor Atom"
            if root
            else "neither RSS nor Atom"
        )
    if b"\x00" in head or sum(b < 0x09 or 0x0D < b < 0x20 for b in head) > 2:
        return "binary data"
    return "text, neither XML nor HTML"


def _linked_feed(body: bytes, url: str) -> str | None:
    """The RSS or Atom feed an HTML page names in <link rel="alternate">, if any."""
    try:
        root = lxml.html.document_fromstring(body, parser=lxml.html.HTMLParser(no_network=True))
    except (etree.ParserError, etree.XMLSyntaxError, ValueError):
        return None
    for link in root.iter("link"):
        rel = (link.get("rel") or "").lower().split()
        if "alternate" in rel and (link.get("type") or "").strip().lower() in _FEED_TYPES:
            found = _http_url(urljoin(url, (link.get("href") or "").strip()))
            if found:
                return found
    return None


def _xml_root(body: bytes) -> str:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, recover=True)
    try:
        root = etree.fromstring(body, parser)
    except (etree.XMLSyntaxError, ValueError):
        return ""
    return "" if root is None else clean_line(etree.QName(root).localname)[:_PREVIEW_CHARS]


def _label(title: str, number: int) -> str:
    return f'item "{_preview(title)}"' if title else f"item {number}"


def _preview(text: str) -> str:
    return text if len(text) <= _PREVIEW_CHARS else _cut(text, _PREVIEW_CHARS)


def _line(text: str) -> str:
    """One clean line of reasonable length for `problem` and `notes`."""
    return _cut(clean_line(text), 300)
