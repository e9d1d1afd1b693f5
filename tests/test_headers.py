"""The messages as subscribers receive them: real digests sent to a real SMTP server on
loopback, parsed with the email package. Headers, MIME structure, links and the wire
format, and hostile input through every path that writes a header."""

from __future__ import annotations

import base64
import csv
import email
import email.policy
import re
from datetime import UTC, datetime, timedelta
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import lxml.html
import pytest
from sqlalchemy import select, update

from mailer import campaign
from mailer.articles import ArticleStore
from mailer.config import Config, load_config
from mailer.db import Database
from mailer.errors import ConfigError, InputError
from mailer.models import Article, Delivery, Digest, Subscriber
from mailer.subscribers import SubscriberStore
from mailer.tokens import Tokens, load_secret
from tests import databases
from tests.conftest import SEEDS, SUBSCRIBERS, write_config
from tests.smtp_server import Received, SmtpServer

T0 = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)
NAMES = dict(SUBSCRIBERS)
HEADERS = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "MIME-Version",
    "Content-Type",
]
PART_HEADERS = ["Content-Type", "Content-Transfer-Encoding"]
# CR/LF in every spelling, Unicode line and paragraph separators, NUL, ESC, DEL, C1 controls.
EVIL = (
    "Eve\r\nBcc: victim@example.com\nX-Injected: 1\u2028Line\u2029Para\x00Nul\x1b[31mEsc"
    "\x7fDel\x85Nel\x0bVt\x0cFf\rCr\tTab"
)
EVIL_MARK = "Bcc: victim@example.com"  # survives as text wherever EVIL was neutralised
VICTIM = "victim@example.com"
WORD = re.compile(rb"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")  # an RFC 2047 encoded word


# ---------------------------------------------------------------- helpers


def send(db: Database, cfg: Config, server: SmtpServer, expect: int = 3) -> list[Received]:
    [summary] = campaign.send_now(db, cfg, T0)
    assert summary.finished and summary.sent == expect and not summary.stopped, summary
    assert len(server.received) == expect
    return list(server.received)


def parse(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def raw_header(raw: bytes, name: str) -> bytes:
    """A header's value exactly as on the wire (folds included)."""
    head = raw[: raw.index(b"\r\n\r\n") + 2]
    m = re.search(rb"^" + name.encode() + rb": ?(.*?)\r\n(?![ \t])", head, re.MULTILINE | re.DOTALL)
    assert m is not None, name
    return m.group(1)


def decoded(raw_value: bytes) -> str:
    """RFC 2047 decoding as the RFC says (whitespace between encoded words ignored). The
    email package's address parser keeps that whitespace in display names, for which the
    long names below would read differently from what every RFC 2047 decoder shows."""
    return str(make_header(decode_header(raw_value.decode("ascii").replace("\r\n", ""))))


def assert_wire_format(raw: bytes) -> None:
    """7-bit, CRLF line ends only, no line over 998 octets (RFC 5322 2.1.1), and a header
    section of printable ASCII (no control character, no raw 8-bit, nothing to inject)."""
    assert raw.isascii()
    assert raw.endswith(b"\r\n")
    lines = raw.split(b"\r\n")[:-1]
    assert not [line for line in lines if b"\r" in line or b"\n" in line], "bare CR or LF"
    assert max(len(line) for line in lines) <= 998
    head = raw[: raw.index(b"\r\n\r\n")]
    bad = [line for line in head.split(b"\r\n") if not re.fullmatch(rb"[\x20-\x7e]+", line)]
    assert not bad, bad


def assert_one_recipient_and_exact_headers(received: Received) -> EmailMessage:
    assert len(received.recipients) == 1 and VICTIM not in received.recipients
    msg = parse(received.data)
    assert list(msg.keys()) == HEADERS
    assert [list(part.keys()) for part in msg.iter_parts()] == [PART_HEADERS, PART_HEADERS]
    for name in HEADERS:
        assert not msg[name].defects, (name, msg[name].defects)
    (to,) = msg["To"].addresses
    assert to.addr_spec == received.recipients[0]
    (sender,) = msg["From"].addresses
    assert sender.addr_spec == "digest@example.org"
    assert_wire_format(received.data)
    return msg


def subscriber_ids(db: Database) -> dict[str, int]:
    with db.session() as s:
        return dict(s.execute(select(Subscriber.email, Subscriber.id)).all())


def the_digest(db: Database) -> Digest:
    with db.session() as s:
        return s.scalars(select(Digest)).one()


def toml_string(value: str) -> str:
    """A TOML basic string for any text (control characters as \\uXXXX escapes)."""
    out = []
    for ch in value:
        if ch in '"\\' or ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F or ch in "\u2028\u2029":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def config_file(folder: Path, port: int, database_url: str = "", **sections: dict[str, Any]) -> Path:
    """conftest.write_config with room for every article: the seeds alone fill config.toml's
    max_articles, and an article a test adds must be in the digest it sends."""
    digest = {"max_articles": 500, **sections.pop("digest", {})}
    return write_config(folder, port, database_url, digest=digest, **sections)


@pytest.fixture
def config_path(tmp_path: Path, smtp_server: SmtpServer, database_url: str) -> Path:
    return config_file(tmp_path, smtp_server.port, database_url)


def hostile_config(folder: Path, port: int, section: str, key: str, value: str) -> Config:
    """The test config with one string set to `value`, written with TOML escapes (the
    conftest writer cannot express control characters)."""
    path = config_file(folder, port, **{section: {key: "HOSTILE_PLACEHOLDER"}})
    path.write_text(
        path.read_text(encoding="utf-8").replace('"HOSTILE_PLACEHOLDER"', toml_string(value)),
        encoding="utf-8",
    )
    return load_config(str(path))


# ---------------------------------------------------------------- a normal send


@pytest.fixture
def articles_with_urls(seeded: Database, cfg: Config) -> list[str]:
    """Two articles that link to their own pages elsewhere (the seeds have no URL)."""
    urls = ["https://example.net/ai/story?id=7&ref=feed", "http://news.example.com/chips"]
    store = ArticleStore(seeded, cfg)
    store.add("OpenAI model ships", "A new AI model was released this week.", url=urls[0])
    store.add("Nvidia chip export rules", "New chip rules for Nvidia hardware.", url=urls[1])
    return urls


def test_each_subscriber_gets_one_message_addressed_to_them_alone(
    seeded: Database, cfg: Config, smtp_server: SmtpServer
) -> None:
    received = send(seeded, cfg, smtp_server)
    assert sorted(r.recipients[0] for r in received) == sorted(NAMES)
    for r in received:
        msg = assert_one_recipient_and_exact_headers(r)
        (to,) = msg["To"].addresses
        assert to.display_name == NAMES[r.recipients[0]]


def test_from_to_subject_and_date_headers(seeded: Database, cfg: Config, smtp_server: SmtpServer) -> None:
    received = {r.recipients[0]: r for r in send(seeded, cfg, smtp_server)}
    digest = the_digest(seeded)
    for address, r in received.items():
        msg = parse(r.data)
        assert str(msg["From"]) == "Tech Policy Weekly <digest@example.org>"
        assert msg["From"].addresses[0].display_name == cfg.smtp.from_name
        assert str(msg["Subject"]) == digest.subject and digest.subject.startswith("Tech Policy Weekly #1: ")
        assert not WORD.search(raw_header(r.data, "Subject"))  # plain ASCII needs no encoding
        sent_at = parsedate_to_datetime(str(msg["Date"]))
        assert sent_at.tzinfo is not None and abs(datetime.now(UTC) - sent_at) < timedelta(minutes=5)
        assert msg["MIME-Version"] == "1.0"
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert msg["List-Id"] == "Tech Policy Weekly <tech-policy-weekly.example.org>"
        (to,) = msg["To"].addresses
        assert (to.display_name, to.addr_spec) == (NAMES[address], address)
    # The non-ASCII name went over the wire RFC 2047-encoded and came back intact.
    zoe = received["zoe@example.com"].data
    assert WORD.search(raw_header(zoe, "To")) and b"M\xc3\xbcller" not in zoe
    assert decoded(raw_header(zoe, "To")) == "Zoë “Z” Müller <zoe@example.com>"


def stored_keys(db: Database) -> dict[str, str | None]:
    with db.session() as s:
        rows = s.execute(
            select(Subscriber.email, Delivery.message_key).join(
                Subscriber, Subscriber.id == Delivery.subscriber_id
            )
        )
        return dict(rows.all())


def test_message_ids_carry_the_deliverys_stored_random_key(
    seeded: Database, cfg: Config, smtp_server: SmtpServer
) -> None:
    received = send(seeded, cfg, smtp_server)
    digest_id = the_digest(seeded).id
    ids = subscriber_ids(seeded)
    keys = stored_keys(seeded)
    message_ids = [parse(r.data)["Message-ID"] for r in received]
    assert len(set(message_ids)) == 3
    for r, message_id in zip(received, message_ids, strict=True):
        address = r.recipients[0]
        key = keys[address]
        assert key is not None and re.fullmatch(r"[0-9a-f]{32}", key)
        assert message_id == f"<digest-{digest_id}.sub-{ids[address]}.{key}@example.org>"


def test_message_ids_differ_after_a_database_reset(
    tmp_path: Path, smtp_server: SmtpServer, database_url: str
) -> None:
    """The same digest number to the same reader, from a new database (or a second
    installation with the same domain), must not repeat a Message-ID: a mailbox that has
    seen one drops the next message carrying it."""
    seen = []
    # The reset one: a second SQLite file, or a second throw-away PostgreSQL database.
    second = "" if database_url.startswith("sqlite") else databases.create()
    urls = {
        "first": database_url,
        "reset": databases.url_of(second) if second else f"sqlite:///{tmp_path / 'reset' / 'mailer.db'}",
    }
    try:
        for attempt, url in urls.items():
            folder = tmp_path / attempt
            folder.mkdir()
            cfg = load_config(str(config_file(folder, smtp_server.port, url)))
            db = Database(cfg.database_url)
            db.migrate()
            ArticleStore(db, cfg).import_paths([str(SEEDS)])
            SubscriberStore(db).add("ada@example.com", "Ada Lovelace")
            [summary] = campaign.send_now(db, cfg, T0)
            assert summary.sent == 1
            seen.append(parse(smtp_server.received[-1].data)["Message-ID"])
            db.dispose()
    finally:
        if second:
            databases.drop(second)
    assert seen[0].startswith("<digest-1.sub-1.") and seen[1].startswith("<digest-1.sub-1.")
    assert seen[0] != seen[1]


def test_every_test_copy_has_a_new_message_id(seeded: Database, cfg: Config, smtp_server: SmtpServer) -> None:
    from mailer import delivery
    from mailer import digest as digests

    p = digests.preview(seeded, cfg)
    assert p is not None
    for _ in range(2):
        delivery.send_test(cfg, p.html, p.text, p.subject, "editor@example.com")
    first, second = (parse(r.data)["Message-ID"] for r in smtp_server.received)
    assert first != second
    for message_id in (first, second):
        assert re.fullmatch(r"<digest-0\.sub-0\.[0-9a-f]{32}@example\.org>", message_id)


def test_list_unsubscribe_is_the_subscribers_own_link_and_matches_both_footers(
    seeded: Database, cfg: Config, smtp_server: SmtpServer
) -> None:
    received = send(seeded, cfg, smtp_server)
    tokens = Tokens(load_secret(cfg.var_dir))
    with seeded.session() as s:
        nonces = {sub.email: (sub.id, sub.token_nonce) for sub in s.scalars(select(Subscriber))}
    urls = set()
    for r in received:
        msg = parse(r.data)
        m = re.fullmatch(r"<(https?://[^<>\s]+/unsubscribe/([^<>/\s]+))>", str(msg["List-Unsubscribe"]))
        assert m is not None, msg["List-Unsubscribe"]
        url, token = m.groups()
        assert url.startswith(cfg.digest.base_url + "/")
        assert tokens.verify(token, *nonces[r.recipients[0]])
        text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert f"Unsubscribe: {url}" in text.splitlines()
        doc = lxml.html.document_fromstring(msg.get_body(("html",)).get_content())  # type: ignore[union-attr]
        links = doc.xpath("//a[normalize-space(.)='Unsubscribe']/@href")
        assert links == [url]
        urls.add(url)
    assert len(urls) == 3


def test_body_is_multipart_alternative_text_then_html_in_utf8(
    seeded: Database, cfg: Config, smtp_server: SmtpServer
) -> None:
    for r in send(seeded, cfg, smtp_server):
        msg = parse(r.data)
        assert msg.get_content_type() == "multipart/alternative"
        parts = list(msg.iter_parts())
        assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
        assert [p.get_content_charset() for p in parts] == ["utf-8", "utf-8"]
        assert [p["Content-Transfer-Encoding"] for p in parts] == ["base64", "base64"]
        assert r.data.isascii()  # nothing 8-bit on the wire: both parts are base64
        html = parts[1].get_content()
        assert "Tech Policy Weekly" in html and "<html" in html


def test_html_has_the_postal_address_in_the_footer_and_no_tracking(
    seeded: Database, cfg: Config, smtp_server: SmtpServer, articles_with_urls: list[str]
) -> None:
    received = send(seeded, cfg, smtp_server)
    digest = the_digest(seeded)
    with seeded.session() as s:
        articles = list(s.scalars(select(Article).where(Article.digest_id == digest.id)))
    article_links = {a.url or f"{cfg.digest.base_url}/articles/{a.id}" for a in articles}
    assert set(articles_with_urls) <= article_links
    for r in received:
        msg = parse(r.data)
        unsubscribe = str(msg["List-Unsubscribe"]).strip("<>")
        html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
        doc = lxml.html.document_fromstring(html)
        # The footer: the block that holds the unsubscribe link also holds the address.
        (link,) = doc.xpath("//a[@href=$u]", u=unsubscribe)
        footer = link.xpath("ancestor::td[1]")[0].text_content()
        assert cfg.digest.postal_address and cfg.digest.postal_address in footer
        # No tracking pixel, no image at all, no remote CSS images either.
        assert doc.xpath("//img | //picture | //*[@background]") == [] and "<img" not in html.lower()
        assert not re.search(r"url\(\s*['\"]?https?:", html)
        # Every link is the article's own URL, its page on base_url, the in-page table of
        # contents, the archive page ("View in browser") or the subscriber's own
        # unsubscribe and preferences links: no redirect or click tracking.
        hrefs = doc.xpath("//a/@href")
        sections = {f"#{slug}" for slug in doc.xpath("//*[@id]/@id")}
        archive = f"{cfg.digest.base_url}/archive/{digest.issue_number}"
        sub_id, _ = unsubscribe.rsplit("/", 1)[1].split(".", 1)
        with seeded.reader() as s:
            nonce = s.get(Subscriber, int(sub_id)).token_nonce
        token = Tokens(load_secret(cfg.var_dir)).preferences(int(sub_id), nonce)
        own = {unsubscribe, f"{cfg.digest.base_url}/preferences/{token}"}
        stray = [h for h in hrefs if h not in article_links | sections | own | {archive}]
        assert stray == []
        assert article_links <= set(hrefs)


def test_non_ascii_subject_newsletter_and_sender_names_are_rfc2047_encoded(
    seeded: Database, tmp_path: Path, smtp_server: SmtpServer
) -> None:
    name = "Zoë’s “Tech” Weekly — Politik, Technik & Gesellschaft für Übermorgen"
    cfg = load_config(
        str(
            config_file(
                tmp_path,
                smtp_server.port,
                digest={"name": name, "subject": "{name} · Ausgabe {issue}: {themes}"},
                smtp={"from_name": "Zoë’s Desk"},
            )
        )
    )
    received = send(seeded, cfg, smtp_server)
    subject = the_digest(seeded).subject
    assert subject.startswith(f"{name} · Ausgabe 1: ")
    label = "zo-s-tech-weekly-politik-technik-gesellschaft-f-r-bermorgen.example.org"
    for r in received:
        msg = assert_one_recipient_and_exact_headers(r)
        assert WORD.search(raw_header(r.data, "Subject"))
        assert str(msg["Subject"]) == subject
        assert msg["From"].addresses[0].display_name == "Zoë’s Desk"
        # List-Id (RFC 2919): the phrase may be encoded, the <list-id> never.
        list_id = raw_header(r.data, "List-Id")
        assert list_id.endswith(f" <{label}>".encode()) and WORD.search(list_id)
        assert str(msg["List-Id"]) == f"{name} <{label}>"


@pytest.mark.parametrize(
    "name",
    [
        "😀" * 200,  # the longest name SubscriberStore.add allows, 4 UTF-8 bytes a character
        "Александр Сергеевич Пушкин-Гончаров, поэт и писатель, автор «Евгения Онегина»",
        "Ada Augusta King, Countess of Lovelace (née Byron), " * 3,
    ],
    ids=["emoji-200", "cyrillic", "long-latin"],
)
def test_long_names_are_folded_into_short_encoded_words(
    seeded: Database, cfg: Config, smtp_server: SmtpServer, name: str
) -> None:
    SubscriberStore(seeded).add("long@example.com", name)
    received = {r.recipients[0]: r for r in send(seeded, cfg, smtp_server, expect=4)}
    r = received["long@example.com"]
    assert_one_recipient_and_exact_headers(r)
    to = raw_header(r.data, "To")
    assert all(len(word) <= 75 for word in WORD.findall(to))  # RFC 2047 section 2
    assert all(len(line) <= 78 for line in (b"To: " + to).split(b"\r\n"))
    assert decoded(to) == " ".join(name.split()) + " <long@example.com>"


# ---------------------------------------------------------------- hostile input


def _add(db: Database, tmp: Path, port: int) -> Config:
    SubscriberStore(db).add("eve@example.com", EVIL)
    return load_config(str(config_file(tmp, port)))


def _csv(db: Database, tmp: Path, port: int) -> Config:
    path = tmp / "people.csv"
    with path.open("w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows([["email", "name"], ["eve@example.com", EVIL]])
    report = SubscriberStore(db).import_csv(path)
    assert report.added == 1 and not report.errors, report
    return load_config(str(config_file(tmp, port)))


def storable(db: Database, column: Any, text: str) -> str:
    """`text` as `column` can hold it when written behind the stores' backs: PostgreSQL
    refuses a NUL in any text and enforces the column's length; SQLite does neither."""
    if db.engine.dialect.name != "postgresql":
        return text
    return text.replace("\x00", "")[: getattr(column.type, "length", None)]


def _raw_name(db: Database, tmp: Path, port: int) -> Config:
    SubscriberStore(db).add("eve@example.com", "Eve")
    with db.session() as s:
        s.execute(
            update(Subscriber)
            .where(Subscriber.email == "eve@example.com")
            .values(name=storable(db, Subscriber.name, EVIL * 3))
        )
    return load_config(str(config_file(tmp, port)))


def _raw_titles(db: Database, tmp: Path, port: int) -> Config:
    cfg = load_config(str(config_file(tmp, port)))
    ArticleStore(db, cfg).add(EVIL + " AI model", "An AI model story.")
    with db.session() as s:
        s.execute(update(Article).values(title=storable(db, Article.title, EVIL + " ") + Article.title))
    return cfg


def _theme_names(db: Database, tmp: Path, port: int) -> Config:
    path = config_file(tmp, port)
    text = path.read_text(encoding="utf-8")
    for theme in ("AI models and companies", "Chips and hardware", "Policy and regulation"):
        text = text.replace(f'name = "{theme}"', f"name = {toml_string(theme + EVIL)}")
    path.write_text(text, encoding="utf-8")
    return load_config(str(path))


def _config(section: str, key: str, value: str) -> Any:
    return lambda db, tmp, port: hostile_config(tmp, port, section, key, value)


HOSTILE = {
    # path: (setup, the header the hostile text reaches, or None: it reaches the bodies only)
    "subscriber-add": (_add, "To"),
    "csv-import": (_csv, "To"),
    "raw-db-name": (_raw_name, "To"),
    "newsletter-name": (_config("digest", "name", EVIL), "List-Id"),
    "from-name": (_config("smtp", "from_name", EVIL), "From"),
    "subject-template": (_config("digest", "subject", "{name} #{issue}: {themes} " + EVIL), "Subject"),
    "theme-names": (_theme_names, "Subject"),
    "article-titles": (_raw_titles, None),
}


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("digest", "base_url", "http://127.0.0.1:8080/x" + EVIL),
        ("smtp", "message_id_domain", "example.org" + EVIL),
        ("smtp", "from_address", "digest@example.org" + EVIL),
    ],
)
def test_hostile_values_for_header_keys_are_refused_when_the_config_loads(
    seeded: Database, tmp_path: Path, smtp_server: SmtpServer, section: str, key: str, value: str
) -> None:
    with pytest.raises(ConfigError, match=rf"{section}\.{key}"):
        _config(section, key, value)(seeded, tmp_path, smtp_server.port)


@pytest.mark.parametrize("path", list(HOSTILE))
def test_hostile_text_cannot_add_a_header_or_a_recipient(
    path: str, seeded: Database, tmp_path: Path, smtp_server: SmtpServer
) -> None:
    setup, reaches = HOSTILE[path]
    cfg = setup(seeded, tmp_path, smtp_server.port)
    expected = sorted({*NAMES, *subscriber_ids(seeded)})
    received = send(seeded, cfg, smtp_server, expect=len(expected))
    assert sorted(r.recipients[0] for r in received) == expected
    for r in received:
        msg = assert_one_recipient_and_exact_headers(r)
        assert msg["Bcc"] is None and msg["X-Injected"] is None
        assert not re.search(rb"^(Bcc|X-Injected):", r.data, re.IGNORECASE | re.MULTILINE)
        assert re.fullmatch(r"<digest-\d+\.sub-\d+\.[0-9a-f]{32}@[A-Za-z0-9.-]+>", str(msg["Message-ID"]))
        if reaches is None:
            # Titles are in the bodies only: as text there, never markup or headers.
            text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
            html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
            assert "X-Injected: 1" in text
            assert EVIL_MARK in lxml.html.document_fromstring(html).text_content()
            assert not any(EVIL_MARK in str(msg[name]) for name in HEADERS)
        elif reaches == "To" and r.recipients[0] != "eve@example.com":
            assert EVIL_MARK not in str(msg["To"])
        else:
            # The hostile text did reach this header, and it is one harmless line there.
            value = str(msg[reaches])
            assert value.isprintable(), repr(value)
            shown = value.replace("%20", " ").replace("victimexample", "victim@example")
            assert "Bcc" in shown and "victim" in shown, value


def test_corrupted_address_in_the_database_cannot_add_an_smtp_recipient(
    seeded: Database, cfg: Config, smtp_server: SmtpServer
) -> None:
    """An address is checked when stored; one changed in the database behind the store's
    back must still not smuggle an SMTP command into the (hand-written, pipelined) session."""
    SubscriberStore(seeded).add("eve@example.com", "Eve")
    corrupt = f"eve@example.com>\r\nRCPT TO:<{VICTIM}>\r\nX-Injected: 1"
    with seeded.session() as s:
        s.execute(update(Subscriber).where(Subscriber.email == "eve@example.com").values(email=corrupt))
    [summary] = campaign.send_now(seeded, cfg, T0)
    assert summary.finished and summary.sent == 3 and summary.failed == 1, summary
    assert sorted(r.recipients[0] for r in smtp_server.received) == sorted(NAMES)
    for r in smtp_server.received:
        assert_one_recipient_and_exact_headers(r)
    with seeded.session() as s:
        status, reply = s.execute(
            select(Delivery.status, Delivery.last_reply)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(Subscriber.email == corrupt)
        ).one()
    assert status == "failed" and "not usable" in reply


# ---------------------------------------------------------------- article content


def test_markup_in_article_text_is_escaped_in_the_html_part(
    seeded: Database, cfg: Config, smtp_server: SmtpServer
) -> None:
    title = "<script>alert('title')</script> AI model <img src=x onerror=alert(1)>"
    body = "An AI model story <img src=x onerror=alert(2)> with <script>alert(3)</script> in it."
    ArticleStore(seeded, cfg).add(title, body, url="https://example.net/story")
    r = send(seeded, cfg, smtp_server)[0]
    html = parse(r.data).get_body(("html",)).get_content()  # type: ignore[union-attr]
    doc = lxml.html.document_fromstring(html)
    assert doc.xpath("//script | //img | //*[@onerror]") == []
    assert "&lt;script&gt;alert(" in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    # Shown as the text it is.
    assert "<script>alert('title')</script>" in doc.text_content()
    assert "<img src=x onerror=alert(2)>" in doc.text_content()


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "JavaScript:alert(1)",
        " javascript:alert(1)",
        "data:text/html,<b>x</b>",
        "//evil",
    ],
)
def test_an_article_url_that_is_not_http_is_never_stored(seeded: Database, cfg: Config, url: str) -> None:
    with pytest.raises(InputError, match="only absolute http"):
        ArticleStore(seeded, cfg).add("AI story", "About an AI model.", url=url)
    with seeded.session() as s:
        assert s.scalar(select(Article.id).where(Article.title == "AI story")) is None


def test_a_javascript_url_forced_into_the_database_is_not_emitted_as_a_link(
    seeded: Database, cfg: Config, smtp_server: SmtpServer
) -> None:
    article = ArticleStore(seeded, cfg).add("AI story", "About an AI model.", url="https://example.net/a")
    with seeded.session() as s:
        s.execute(update(Article).where(Article.id == article.id).values(url="javascript:alert(1)"))
    r = send(seeded, cfg, smtp_server)[0]
    msg = parse(r.data)
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    hrefs = lxml.html.document_fromstring(html).xpath("//a/@href")
    assert hrefs and not [h for h in hrefs if not re.match(r"https?://|#", h)]
    assert "javascript:" not in msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def test_no_placeholder_or_marker_is_left_in_either_body(
    seeded: Database, cfg: Config, smtp_server: SmtpServer
) -> None:
    """The per-recipient substitution leaves no placeholder behind in either part."""
    for r in send(seeded, cfg, smtp_server):
        msg = parse(r.data)
        for part in msg.iter_parts():
            payload = part.get_payload()
            assert isinstance(payload, str)
            content = base64.b64decode(payload).decode("utf-8")
            assert "MAILER_UNSUBSCRIBE_URL" not in content and "MAILERMARK" not in content
            assert str(msg["List-Unsubscribe"]).strip("<>") in content
