"""Parsing feeds: fetched bytes to clean items (mailer.feeds.parse, with mailer.feeds.text for
the HTML), on hand-written fixtures modelled on real feeds (tests/feeds/) and on small inline
documents for the rules.

No network, no database: parse_feed is given bytes, and these check it never reads anything
else, whatever the bytes look like.
"""

from __future__ import annotations

import builtins
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time

from mailer.feeds.parse import Item, ParsedFeed, parse_feed
from mailer.feeds.text import html_to_paragraphs
from mailer.parsing import MAX_TITLE_CHARS, fingerprint

FEEDS = Path(__file__).resolve().parent / "feeds"
NOW = datetime(2025, 6, 4, 12, 0, tzinfo=UTC)


def parse(name: str, url: str, content_type: str = "") -> ParsedFeed:
    return parse_feed((FEEDS / name).read_bytes(), url, content_type, now=NOW)


def rss(items: str, channel: str = "<title>T</title>") -> bytes:
    prolog = '<?xml version="1.0" encoding="utf-8"?>\n'
    return f'{prolog}<rss version="2.0"><channel>{channel}{items}</channel></rss>'.encode()


def one(item: str) -> tuple[Item, list[str]]:
    """The only item of an RSS document holding `item`, and the notes."""
    parsed = parse_feed(rss(f"<item>{item}</item>"), "https://example.com/feed", now=NOW)
    assert parsed.problem == ""
    (only,) = parsed.items
    return only, parsed.notes


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# The fixtures, one by one.


def test_rss2_blog() -> None:
    feed = parse("rss2_blog.xml", "https://notes.example.org/feed/")
    assert (feed.title, feed.link, feed.ttl) == (
        "Field Notes & Findings",
        "https://notes.example.org/",
        timedelta(minutes=90),
    )
    assert (feed.problem, feed.notes) == ("", [])
    first, second, third = feed.items
    # The title's entities and escaped tags decoded; content:encoded (longer, HTML) chosen over
    # the description; script, style and images gone, the figure's caption kept as text.
    assert first == Item(
        key="guid:https://notes.example.org/?p=4412",
        title="Rock & Roll’s quiet comeback",
        link="https://notes.example.org/2025/06/rock-and-roll/",
        published=at(2025, 6, 2, 7, 30),
        author="Maya Okafor",
        paragraphs=[
            "Guitar sales rose 12 % last year – the first rise in a decade.",
            "Photo: Maya Okafor",
            "“People want something they can hold,” says João, who runs a shop in Porto.",
            "What changed",
            "Cheaper second-hand gear",
            "Online lessons",
            "Read our vinyl piece for the back story.",
        ],
    )
    # A relative link resolved against the feed's URL; +0200 turned into UTC; <br /><br />
    # separating paragraphs.
    assert second == Item(
        key="guid:https://notes.example.org/?p=4398",
        title="Night buses, mapped",
        link="https://notes.example.org/2025/05/night-buses/",
        published=at(2025, 5, 30, 16, 5, 9),
        author="Tom Reyes",
        paragraphs=["We rode every night bus in the city.", "Here is what we found …"],
    )
    # "&amp;amp;" is "&amp;" once XML has read it: what the feed says, left as it is.
    assert third.title == "Tickets &amp; fares: the 2025 changes"
    assert third.link == "https://notes.example.org/2025/05/fares/?utm_source=rss&utm_medium=rss"
    assert third.paragraphs == ["Single fares go up by 10p.", "Day passes stay the same."]
    assert third.body == "Single fares go up by 10p.\n\nDay passes stay the same."


def test_rss1_rdf() -> None:
    feed = parse("rss1_rdf.rdf", "https://lwn.example.net/headlines/rss")
    assert (feed.title, feed.link, feed.problem, feed.notes) == (
        "Kernel Weekly",
        "https://lwn.example.net/",
        "",
        [],
    )
    assert feed.ttl == timedelta(hours=6)  # sy:updatePeriod daily, sy:updateFrequency 4
    assert [(i.key, i.title, i.published, i.author) for i in feed.items] == [
        (
            "guid:https://lwn.example.net/Articles/1001/",
            "A new scheduler lands",
            at(2025, 5, 29, 14, 20),
            "corbet",
        ),
        (
            "guid:https://lwn.example.net/Articles/1002/",
            "Security updates for Thursday",
            at(2025, 5, 29, 13, 5, 33),
            "",
        ),
        ("guid:https://lwn.example.net/Articles/1003/", "Rust in the tree: a status report", None, ""),
    ]
    assert [i.paragraphs for i in feed.items] == [
        # No markup: the blank line separates paragraphs.
        ["The EEVDF scheduler is now the default.", "It replaces CFS after fifteen years."],
        # A description is HTML: its "&amp;" (written "&amp;amp;") is an ampersand.
        ["Updates for curl, openssl & xz."],
        ["Progress is steady.", "Two drivers are merged."],
    ]


def test_atom_xhtml_with_xml_base() -> None:
    feed = parse("atom_xhtml.xml", "https://feeds.example.com/ada")
    assert (feed.title, feed.link, feed.ttl, feed.problem, feed.notes) == (
        "Ada's Engine Room",
        "https://blog.example.com/",
        None,
        "",
        [],
    )
    first, second, third = feed.items
    # type="text" (Atom's default) is literal text: "<code>" is what the title says.
    assert first == Item(
        key="guid:tag:blog.example.com,2025:/posts/itertools",
        title="Counting with <code>itertools</code>",
        link="https://blog.example.com/posts/itertools.html",  # feed-level xml:base
        published=at(2025, 6, 1, 7, 30),
        author="",
        paragraphs=[
            "The itertools module is full of small tools.",
            "Start with count(): it never stops.",  # one <br/> is a line break, not a paragraph
            "Simple is better than complex.",
            "count",
            "cycle",
            "repeat",
        ],
    )
    assert second == Item(
        key="guid:tag:blog.example.com,2025:/2025/furniture",
        title="Tables & chairs",  # type="xhtml"
        link="https://blog.example.com/2025/furniture/",  # the entry's own xml:base
        published=at(2025, 5, 20, 8),  # no <published>: <updated>
        author="Grace H.",  # the name, not the e-mail address
        paragraphs=["Item Price", "Chair €40", "Prices include VAT."],
    )
    # type="text" content: blank-line paragraphs, "<b>" is literal; the link on another host.
    assert (third.link, third.paragraphs) == (
        "https://mirror.example.net/plain",
        ["No markup here <b>at all</b>.", "Second paragraph of plain text."],
    )


def test_atom_html_escaped_content() -> None:
    feed = parse("atom_html.xml", "https://releases.example.io/feed.atom")
    assert (feed.title, feed.link, feed.problem, feed.notes) == (
        "Release notes & changelogs",  # type="html": "&amp;amp;" is an escaped "&amp;"
        "https://releases.example.io/",
        "",
        [],
    )
    first, second = feed.items
    assert first == Item(
        key="guid:urn:uuid:1225c695-cfb8-4ebb-aaaa-80da344efa6a",
        title="Version 2.0 released & what’s next",
        link="https://releases.example.io/notes/2.0",
        published=at(2025, 6, 3, 11),  # <published>, not the later <updated>
        author="Release Bot",
        # noscript, iframe and the comment dropped; <br><br> starts a paragraph, <br> does not.
        paragraphs=[
            "Highlights",
            "Faster startup — about 30 % quicker.",
            "Line one line two",
            "A new paragraph.",
            "pip install example==2.0",
        ],
    )
    # The summary is richer than the one-word content: the summary is the text.
    assert (second.title, second.published, second.paragraphs) == (
        "Security fix in 1.9.4",
        at(2025, 5, 27, 23, 45),
        ["Upgrade now: CVE-2025-0001 fixed."],
    )


def test_latin1_declared_in_the_prolog() -> None:
    feed = parse("rss_latin1.xml", "https://cafe.example.fr/rss", "application/rss+xml")
    assert (feed.title, feed.problem, feed.notes) == ("Le Café du Coin", "", [])
    assert [(i.title, i.author, i.paragraphs) for i in feed.items] == [
        (
            "Crème brûlée à l'honneur",
            "Hélène Müller",  # <author>chef@… (Hélène Müller)</author>: the name
            ["Notre pâtissière préfère la vanille de Tahiti.", "Prix : 6,50 € – façon grand-mère."],
        ),
        ("Über den Zaun", "", ["Grüße aus Zürich, ½ Portion, © 2025."]),
        ("Señor Ñandú", "", ["¿Qué tal? Très bien, merci."]),
    ]


def test_windows_1252_charset_from_the_http_header_only() -> None:
    feed = parse(
        "rss_cp1252_nodecl.xml", "https://quotes.example.com/rss", "application/rss+xml; charset=windows-1252"
    )
    assert (feed.problem, feed.notes) == ("", [])
    assert [(i.key, i.title, i.published, i.paragraphs) for i in feed.items] == [
        ("guid:sq-101", "“Quoted” — and it’s fine", at(2025, 6, 3, 19), ["Costs €5 … or so. Café naïve."]),
        ("guid:sq-100", "Another “one”", at(2025, 6, 2, 19), ["• bullet – dash ™"]),
        ("guid:sq-099", "Plain ASCII", None, ["Nothing special."]),
    ]


def test_windows_1252_without_a_charset_is_a_guess_and_says_so() -> None:
    # Not UTF-8 and nothing declared: feedparser guesses (chardet's guess, or windows-1252
    # without chardet), and the text may be garbled; the items are still read.
    feed = parse("rss_cp1252_nodecl.xml", "https://quotes.example.com/rss", "application/rss+xml")
    assert feed.problem.startswith("character encoding guessed: document declared as utf-8, but parsed as ")
    assert feed.problem.endswith(" (some characters may be wrong)")
    assert [i.key for i in feed.items] == ["guid:sq-101", "guid:sq-100", "guid:sq-099"]
    assert feed.items[2].title == "Plain ASCII"


def test_malformed_feed_keeps_the_items_it_could_read() -> None:
    feed = parse("rss_malformed.xml", "https://bits.example.com/feed")
    # Line 4 is "<title>Bits & Pieces</title>"; expat stops just after the "&".
    assert (
        feed.problem
        == "malformed XML: not well-formed (invalid token) at line 4, column 14; 3 item(s) read anyway"
    )
    assert feed.title == "Bits & Pieces"
    assert [(i.key, i.title, i.link, i.paragraphs) for i in feed.items] == [
        (
            "guid:https://bits.example.com/1",
            "First post",
            "https://bits.example.com/1",
            ["Salt & pepper, bold claims."],
        ),
        (
            "guid:https://bits.example.com/2",
            "Second post",
            "https://bits.example.com/2?a=1&b=2",
            ["Still readable."],
        ),
        # Cut off in its description: the title and link survive, the text does not.
        ("guid:https://bits.example.com/3", "Third post, cut off", "https://bits.example.com/3", []),
    ]


def test_an_html_page_is_not_a_feed_and_names_the_feed_it_links_to() -> None:
    feed = parse("html_page.html", "https://notes.example.org/", "text/html; charset=utf-8")
    assert feed == ParsedFeed(
        problem="not a feed: an HTML page, which links to the feed https://notes.example.org/feed/"
    )
    # Served with no Content-Type at all, it is still recognised.
    assert parse("html_page.html", "https://notes.example.org/").problem.startswith(
        "not a feed: an HTML page"
    )
    assert parse_feed(b"<html><body><p>Hi</p></body></html>", "https://x.example/").problem == (
        "not a feed: an HTML page"
    )


def test_edge_cases() -> None:
    feed = parse("rss_edge_cases.xml", "https://edge.example.com/rss")
    assert feed.title == "Edge Cases Daily"
    assert feed.link is None  # javascript: is no home page
    assert feed.ttl is None  # <ttl>0</ttl>
    assert feed.problem == ""
    assert feed.notes == [
        'item 1: no title, titled "No title on this one" from its first sentence',
        "item 2: no title and no text, skipped",
        'item "No link at all": no link',
        'item "Click me": link is not http(s) (javascript:), dropped',
        'item "From the future": dated in the future (2030-01-01 00:00 UTC), dated now instead',
        'item "From the future (again)": duplicate of an earlier item (same guid), skipped',
        'item "AT&T “wins” — again & again": link is not http(s) (mailto:), dropped',
        'item "AT&T “wins” — again & again": date "not a date at all" not understood, left undated',
    ]
    untitled, unlinked, script, future, entities = feed.items
    assert untitled.paragraphs == [
        "No title on this one. It starts with a sentence that becomes the title; the rest is body.",
        "Second paragraph.",
    ]
    # No guid and no link: the key is the text's fingerprint.
    assert unlinked.key == "sha256:" + fingerprint("No link at all" + "Just text.")
    assert (unlinked.link, unlinked.published) == (None, at(2025, 6, 2, 9))
    assert (script.key, script.link) == ("guid:edge-4", None)
    assert (future.key, future.published) == ("guid:edge-5", NOW)
    assert (entities.title, entities.link, entities.published) == ("AT&T “wins” — again & again", None, None)


# The rules, on small documents.


@pytest.mark.parametrize(
    ("raw", "title"),
    [
        ("<![CDATA[<b>A &amp; B</b>]]>", "A & B"),
        ("&lt;b&gt;A &amp;amp; B&lt;/b&gt;", "A & B"),  # markup: one HTML decoding
        ("A &amp;amp; B", "A &amp; B"),  # no markup: what the feed says
        ("Rock &amp; Roll&#8217;s", "Rock & Roll’s"),
        ("x &lt; y and y &gt; z", "x < y and y > z"),
        ("  Line\none\r\n\ttwo \u200b ", "Line one two"),
        ("<![CDATA[Caf\u00e9 <img src='x.png'> <script>x()</script>crème]]>", "Café crème"),
    ],
)
def test_rss_titles(raw: str, title: str) -> None:
    item, _ = one(f"<title>{raw}</title><link>https://example.com/a</link>")
    assert item.title == title


def test_atom_title_types() -> None:
    atom = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>F</title>
<entry><id>1</id><title type="text">a &amp;amp; b &lt;i&gt;c&lt;/i&gt;</title></entry>
<entry><id>2</id><title type="html">a &amp;amp; b &lt;i&gt;c&lt;/i&gt;</title></entry>
</feed>"""
    feed = parse_feed(atom, "https://example.com/atom", now=NOW)
    assert [i.title for i in feed.items] == ["a &amp; b <i>c</i>", "a & b c"]


def test_long_titles_are_cut_at_a_word() -> None:
    item, _ = one(f"<title>{'word ' * 100}end</title><link>https://example.com/a</link>")
    assert len(item.title) <= MAX_TITLE_CHARS
    assert item.title == " ".join(["word"] * 60) + "…"  # 299 characters and the "…"


def test_an_untitled_items_title_is_its_first_sentence_cut_to_120() -> None:
    text = "A very " + "long " * 40 + "sentence. Then more."
    item, notes = one(f"<description>{text}</description><guid isPermaLink='false'>g</guid>")
    assert item.title == "A very " + " ".join(["long"] * 22) + "…"
    assert len(item.title) <= 120
    assert notes == [
        f'item 1: no title, titled "{item.title}" from its first sentence',
        'item "A very long long long long long long long long long long…": no link',
    ]
    # An exclamation or a question stays; no sentence end: the whole paragraph.
    assert one("<description>Wow! It works.</description><guid>g</guid>")[0].title == "Wow!"
    assert one("<description>just some words</description><guid>g</guid>")[0].title == "just some words"


def test_keys_guid_then_link_then_text() -> None:
    assert one("<title>T</title><guid isPermaLink='false'> abc-1 </guid><link>https://e.com/x</link>")[
        0
    ].key == ("guid:abc-1")
    assert one("<title>T</title><link>https://e.com/x</link>")[0].key == "link:https://e.com/x"
    # A permalink guid with no <link> is the link too (RSS 2.0).
    item, notes = one("<title>T</title><guid>https://e.com/p</guid>")
    assert (item.key, item.link, notes) == ("guid:https://e.com/p", "https://e.com/p", [])
    item, _ = one("<title>T</title><description>Body</description>")
    assert item.key == "sha256:" + fingerprint("TBody")


def test_the_same_text_twice_keeps_the_first() -> None:
    item = "<item><title>Same</title><description>Same  text.</description></item>"
    feed = parse_feed(rss(item + item.replace("Same  text", "same text")), "https://e.com/feed", now=NOW)
    assert len(feed.items) == 1
    assert feed.notes == [
        'item "Same": no link',
        'item "Same": duplicate of an earlier item (same text), skipped',
    ]


def test_the_same_link_twice_keeps_the_first() -> None:
    items = "".join(
        f"<item><title>{t}</title><link>https://e.com/same</link></item>" for t in ("One", "Two", "Three")
    )
    feed = parse_feed(rss(items), "https://e.com/feed", now=NOW)
    assert [i.title for i in feed.items] == ["One"]
    assert feed.notes == [
        'item "Two": duplicate of an earlier item (same link), skipped',
        'item "Three": duplicate of an earlier item (same link), skipped',
    ]


@pytest.mark.parametrize(
    ("link", "expected", "note"),
    [
        ("https://e.com/a b", "https://e.com/a%20b", None),
        ("HTTP://E.com/x", "HTTP://E.com/x", None),
        ("ftp://e.com/file", None, "link is not http(s) (ftp:), dropped"),
        ("data:text/html,hi", None, "link is not http(s) (data:), dropped"),
        ("http:", None, 'link "http:" is not a usable URL, dropped'),
        ("http://exa mple.com/", None, 'link "http://exa mple.com/" is not a usable URL, dropped'),
        ("https://e.com/" + "a" * 3000, None, "link longer than 2048 characters, dropped"),
    ],
)
def test_links(link: str, expected: str | None, note: str | None) -> None:
    item, notes = one(f"<title>T</title><link>{link}</link>")
    assert item.link == expected
    assert notes == ([f'item "T": {note}'] if note else [])


def test_a_relative_link_without_an_http_feed_address() -> None:
    parsed = parse_feed(rss("<item><title>T</title><link>/a</link></item>"), "", now=NOW)
    assert parsed.items[0].link is None
    assert parsed.notes == ['item "T": link "/a" is relative and the feed has no http(s) address, dropped']


def test_dates() -> None:
    def published(date: str) -> tuple[datetime | None, list[str]]:
        item, notes = one(f"<title>T</title><link>https://e.com/</link><pubDate>{date}</pubDate>")
        return item.published, notes

    assert published("Wed, 04 Jun 2025 12:59:00 GMT") == (at(2025, 6, 4, 12, 59), [])  # within the hour
    assert published("Wed, 04 Jun 2025 14:30:00 +0100") == (
        NOW,
        ['item "T": dated in the future (2025-06-04 13:30 UTC), dated now instead'],
    )
    assert published("2025-06-01T10:00:00-05:00") == (at(2025, 6, 1, 15), [])
    assert one("<title>T</title><link>https://e.com/</link>")[0].published is None


def test_now_defaults_to_the_clock() -> None:
    with freeze_time("2030-01-01 00:30:00"):
        feed = parse_feed((FEEDS / "rss_edge_cases.xml").read_bytes(), "https://edge.example.com/rss")
    assert not any("in the future" in note for note in feed.notes)
    assert feed.items[3].published == at(2030, 1, 1)


@pytest.mark.parametrize(
    ("channel", "ttl"),
    [
        ("<ttl>60</ttl>", timedelta(hours=1)),
        ("<ttl> 15 </ttl>", timedelta(minutes=15)),
        ("<ttl>0</ttl>", None),
        ("<ttl>-5</ttl>", None),
        ("<ttl>soon</ttl>", None),
        ("<ttl>9999999</ttl>", None),
        ("", None),
    ],
)
def test_ttl(channel: str, ttl: timedelta | None) -> None:
    assert parse_feed(rss("", channel), "https://e.com/feed", now=NOW).ttl == ttl


def test_a_feed_without_items_is_no_problem() -> None:
    assert parse_feed(rss(""), "https://e.com/feed", now=NOW) == ParsedFeed(title="T")


def test_feeds_served_with_odd_content_types_are_no_problem() -> None:
    body = (FEEDS / "rss_latin1.xml").read_bytes()
    for content_type in ("text/html", "text/plain", "application/octet-stream", "text/xml"):
        feed = parse_feed(body, "https://cafe.example.fr/rss", content_type, now=NOW)
        assert (feed.problem, feed.items[1].title) == ("", "Über den Zaun"), content_type
    # text/xml without a charset means US-ASCII (RFC 3023); read as UTF-8, as everyone does.
    utf8 = rss("<item><title>Café</title><link>https://e.com/</link></item>")
    feed = parse_feed(utf8, "https://e.com/feed", "text/xml", now=NOW)
    assert (feed.problem, feed.items[0].title) == ("", "Café")


@pytest.mark.parametrize(
    ("body", "content_type", "problem"),
    [
        (b"", "", "not a feed: empty body"),
        (b" \r\n\t", "application/rss+xml", "not a feed: empty body"),
        (b"Just some words.", "text/plain; charset=utf-8", "not a feed: text/plain"),
        (b"Just some words.", "", "not a feed: text, neither XML nor HTML"),
        (
            b'{"version": "https://jsonfeed.org/version/1.1"}',
            "application/feed+json",
            "not a feed: application/feed+json",
        ),
        (bytes(range(256)) * 4, "", "not a feed: binary data"),
        (
            b'<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"><url/></urlset>',
            "application/xml",
            "not a feed: an XML document whose root is <urlset>, neither RSS nor Atom",
        ),
        (
            b'<?xml version="1.0"?>\n<rs',
            "",
            "not a feed: malformed XML (unclosed token at line 2, column 1), neither RSS nor Atom",
        ),
    ],
)
def test_not_a_feed(body: bytes, content_type: str, problem: str) -> None:
    assert parse_feed(body, "https://e.com/feed", content_type, now=NOW) == ParsedFeed(problem=problem)


def test_never_fetches_or_opens_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # feedparser.parse() opens a str or bytes that names a file, and fetches one that is a URL.
    feed_file = tmp_path / "feed.xml"
    feed_file.write_bytes((FEEDS / "rss2_blog.xml").read_bytes())
    touched: list[Any] = []
    real_open = builtins.open

    def spy_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        touched.append(file)
        return real_open(file, *args, **kwargs)

    def spy_connect(self: socket.socket, address: Any) -> None:
        touched.append(address)
        raise OSError("no network in this test")

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(socket.socket, "connect", spy_connect)
    for body in (b"http://127.0.0.1:1/feed", b"file:///etc/passwd", b"/etc/passwd", str(feed_file).encode()):
        feed = parse_feed(body, "https://e.com/feed", now=NOW)
        assert (feed.problem, feed.items) == ("not a feed: text, neither XML nor HTML", []), body
    assert touched == []


def test_garbage_never_raises() -> None:
    blog = (FEEDS / "rss2_blog.xml").read_bytes()
    bodies = [blog[:cut] for cut in range(0, len(blog), len(blog) // 25)]
    bodies += [
        blog.replace(b"<item>", b"<item><title>\xff\xfe\x00</title>", 1),
        rss(f'<item><title x="{"a" * 2_000_000}">Big</title></item>'),
        rss("<item><title>Deep</title><description><![CDATA[" + "<div>" * 5000 + "x]]></description></item>"),
        rss("<item><title>Deep XML</title><description>" + "<b>" * 3000 + "</description></item>"),
        "\ufeff<?xml version='1.0' encoding='utf-16'?><rss version='2.0'/>".encode("utf-16"),
        b'<?xml version="1.0" encoding="no-such-codec"?><rss version="2.0"><channel><item><title>x</title>',
    ]
    for body in bodies:
        assert isinstance(parse_feed(body, "https://e.com/feed", "text/xml", now=NOW), ParsedFeed)


def test_char_refs_that_name_no_character() -> None:
    # JavaScript-style surrogate pairs for an emoji; a lone surrogate; past U+10FFFF. Left as
    # they are, they make feedparser raise and the whole feed would be lost.
    item, _ = one(
        "<title>Party &#55356;&#57225; time &#xD83C;&#xDF89;</title><link>https://e.com/</link>"
        "<description>x&#xD800;y &#1114112;z</description>"
    )
    assert (item.title, item.paragraphs) == ("Party 🎉 time 🎉", ["x\ufffdy \ufffdz"])


def test_the_richest_text_is_chosen() -> None:
    content = "http://purl.org/rss/1.0/modules/content/"
    doc = f"""<rss version="2.0" xmlns:content="{content}"><channel><title>T</title>
<item><title>Short description</title><link>https://e.com/1</link>
<description>Teaser.</description>
<content:encoded><![CDATA[<p>The whole story.</p><p>Two paragraphs.</p>]]></content:encoded></item>
<item><title>Long description</title><link>https://e.com/2</link>
<description><![CDATA[<p>A long description, longer than the content.</p>]]></description>
<content:encoded><![CDATA[<p>Short.</p>]]></content:encoded></item>
</channel></rss>""".encode()
    feed = parse_feed(doc, "https://e.com/feed", now=NOW)
    assert [i.paragraphs for i in feed.items] == [
        ["The whole story.", "Two paragraphs."],
        ["A long description, longer than the content."],
    ]
    atom = b"""<feed xmlns="http://www.w3.org/2005/Atom"><title>A</title><entry><id>1</id><title>E</title>
<content type="text">Plain copy of the story, a little longer.</content>
<content type="html">&lt;p&gt;HTML copy.&lt;/p&gt;&lt;p&gt;With paragraphs.&lt;/p&gt;</content>
</entry></feed>"""
    # Of several contents, HTML is preferred to plain text.
    assert parse_feed(atom, "https://e.com/atom", now=NOW).items[0].paragraphs == [
        "HTML copy.",
        "With paragraphs.",
    ]


# html_to_paragraphs (mailer.feeds.text)


@pytest.mark.parametrize(
    ("html", "paragraphs"),
    [
        (
            "<p>One <script>alert('x')</script>two</p><style>p{color:red}</style><p>Three</p>",
            ["One two", "Three"],
        ),
        ("<div><div>Outer <div>inner</div> tail</div></div>", ["Outer", "inner", "tail"]),
        (
            "First line<br>same paragraph<br/><br />New paragraph<br> <br>Another",
            [
                "First line same paragraph",
                "New paragraph",
                "Another",
            ],
        ),
        (
            "<ul><li>One</li><li>Two <b>bold</b></li></ul><ol><li>Three</li></ol>",
            ["One", "Two bold", "Three"],
        ),
        (
            "<p>&amp; &lt;tag&gt; &eacute;t&eacute; &#8220;q&#8221; &hellip;&nbsp;x</p>",
            ["& <tag> été “q” … x"],
        ),
        (
            "<p>日本語のテキスト。</p><p>Ελληνικά — עברית</p><p>emoji 🎉</p>",
            [
                "日本語のテキスト。",
                "Ελληνικά — עברית",
                "emoji 🎉",
            ],
        ),
        ("<h1>Title</h1><blockquote><p>Quote</p></blockquote><hr><p>After</p>", ["Title", "Quote", "After"]),
        ("<table><tr><th>A</th><th>B</th></tr><tr><td>1</td><td>2</td></tr></table>", ["A B", "1 2"]),
        ("<p>Text<!-- a comment --> goes on</p><!-- <p>hidden</p> -->", ["Text goes on"]),
        ("<p><img src='a.png' alt='Alt text'>Caption</p>", ["Caption"]),
        # An HTML 4 parser makes <embed> a container; HTML5 (and browsers) do not.
        ("<p>Before</p><embed src='v.swf'><p>After</p>", ["Before", "After"]),
        (
            "<noscript>Enable JS</noscript><iframe src='x'>frame</iframe><form><input value='v'>Form</form>"
            "<object>obj</object><embed src='e'><template><p>tpl</p></template><svg><text>svg</text></svg>"
            "<p>Kept</p>",
            ["Kept"],
        ),
        (
            "<p>co\u00adop\u00aderation</p><p>\u200bzero\u200bwidth</p><p>* * *</p><p></p><p> </p>",
            [
                "cooperation",
                "zerowidth",
            ],
        ),
        ("<pre>line one\nline two\n\nsecond block</pre>", ["line one line two", "second block"]),
        ("<html><head><title>Doc</title><script>x</script></head><body><p>Body</p></body></html>", ["Body"]),
        ("", []),
        ("<!-- only a comment -->", []),
        ("<script>only()</script>", []),
    ],
)
def test_html_to_paragraphs(html: str, paragraphs: list[str]) -> None:
    assert html_to_paragraphs(html) == paragraphs


def test_plain_text_gives_its_blank_line_paragraphs() -> None:
    assert html_to_paragraphs("First paragraph,\nwrapped.\n\nSecond one.\n \n\nThird &amp; last.") == [
        "First paragraph, wrapped.",
        "Second one.",
        "Third & last.",
    ]
    # Inline tags only: still text, so its blank lines still separate paragraphs.
    assert html_to_paragraphs("Read <a href='/x'>this</a>.\n\nAnd <em>that</em>.") == [
        "Read this.",
        "And that.",
    ]


def test_xhtml_is_read_as_xml() -> None:
    # As HTML, <script/> would swallow everything after it; as XML it is empty.
    xhtml = '<p>One<br></br>still one</p><script src="x.js"/><p>Two</p>'
    assert html_to_paragraphs(xhtml, xhtml=True) == ["One still one", "Two"]
    # Not well-formed: read as HTML after all.
    assert html_to_paragraphs("<p>Salt & pepper<p>More", xhtml=True) == ["Salt & pepper", "More"]


def test_deep_nesting_does_not_recurse() -> None:
    html = "<div>" * 200 + "deep" + "</div>" * 200 + "<p>after</p>"
    assert html_to_paragraphs(html) == ["deep", "after"]


def test_words_prefixed_tags_are_read_and_never_raise() -> None:
    body = (
        b"<?xml version='1.0'?><rss version='2.0'><channel><title>Notes</title><item><guid>1</guid>"
        b"<title>Pasted from Word</title><description>&lt;p class=MsoNormal&gt;Minutes of the meeting"
        b"&lt;o:p&gt;&lt;/o:p&gt;&lt;/p&gt;</description></item></channel></rss>"
    )

    parsed = parse_feed(body, "https://notes.example/feed")

    assert [(i.title, i.paragraphs) for i in parsed.items] == [
        ("Pasted from Word", ["Minutes of the meeting"])
    ]
    assert html_to_paragraphs("<p>Word<o:p></o:p></p><p>Two</p>") == ["Word", "Two"]
