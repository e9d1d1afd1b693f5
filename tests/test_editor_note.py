"""The editor's note: `mailer digest note` sets, shows and clears the note for the next
issue; it is Markdown rendered safely (no raw HTML, no images, http(s) and mailto: links
only) at the top of the HTML part, and as plain text wrapped at 72 in the text part; the
build attaches it to the digest it builds, so it is in that issue only and a resumed send
mails it unchanged. Real `.venv/bin/mailer` processes, a real database and SMTP server."""

from __future__ import annotations

import subprocess
from pathlib import Path

import lxml.html
from sqlalchemy import select

from mailer import campaign, notes
from mailer import digest as digests
from mailer.articles import ArticleStore
from mailer.config import Config
from mailer.db import Database
from mailer.models import EditorNote, utcnow
from mailer.subscribers import SubscriberStore
from tests.conftest import ROOT, SEEDS
from tests.smtp_server import SmtpServer

MAILER = str(ROOT / ".venv" / "bin" / "mailer")

NOTE = """# A word before the news

Welcome to *this* week's issue: <script>alert(1)</script> and <b>no HTML</b>, a
[safe link](https://example.org/about), [a script link](javascript:alert(1)), a
[relative one](/about) and an image ![pixel](https://tracker.example/p.gif).

- write to [the editor](mailto:editor@example.org)
- or reply to this mail

1. first
2. second
"""

NOTE_TEXT = """A word before the news

Welcome to this week's issue: <script>alert(1)</script> and <b>no
HTML</b>, a safe link (https://example.org/about), [a script
link](javascript:alert(1)), a [relative one](/about) and an image !pixel
(https://tracker.example/p.gif).

- write to the editor (mailto:editor@example.org)
- or reply to this mail

1. first
2. second"""


def mailer(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`mailer --config CONFIG ARGS` in its own process (tests pass `db`: migrated already)."""
    return subprocess.run(
        [MAILER, "--config", str(config), *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_digest_note_sets_shows_and_clears_the_note_for_the_next_issue(
    db: Database, config_path: Path, tmp_path: Path
) -> None:
    none = mailer(config_path, "digest", "note")
    assert (none.returncode, none.stdout, none.stderr) == (0, "no note for the next issue\n", "")

    done = mailer(config_path, "digest", "note", "Short *note* this week.")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == ("note for the next issue set (23 characters); `mailer digest preview` shows it\n")
    assert mailer(config_path, "digest", "note").stdout == "Short *note* this week.\n"

    note_file = tmp_path / "note.md"
    note_file.write_bytes(NOTE.replace("\n", "\r\n").encode())
    from_file = mailer(config_path, "digest", "note", "--file", str(note_file))
    assert from_file.returncode == 0, from_file.stderr
    assert mailer(config_path, "digest", "note").stdout == NOTE.strip() + "\n"  # replaced, CRLF gone

    cleared = mailer(config_path, "digest", "note", "--clear")
    assert (cleared.returncode, cleared.stdout) == (0, "note for the next issue removed\n")
    again = mailer(config_path, "digest", "note", "--clear")
    assert (again.returncode, again.stdout) == (0, "there was no note for the next issue\n")
    assert mailer(config_path, "digest", "note").stdout == "no note for the next issue\n"


def test_digest_note_refusals_are_one_line_and_exit_1(
    db: Database, config_path: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.md"
    cases = {
        ("digest", "note", "text", "--clear"): "error: give one of TEXT, --file FILE or --clear\n",
        ("digest", "note", "   "): "error: the note is empty (mailer digest note --clear removes it)\n",
        ("digest", "note", "x" * 10_001): "error: the note is longer than 10000 characters\n",
        ("digest", "note", "--file", str(missing)): f"error: {missing}: No such file or directory\n",
        (
            "digest",
            "note",
            "--file",
            "/dev/zero",
        ): "error: /dev/zero: not a regular file (a character device)\n",
    }
    for args, expected in cases.items():
        proc = mailer(config_path, *args)
        assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", expected), args


def test_the_note_renders_as_safe_html_and_as_text_wrapped_at_72() -> None:
    html = str(notes.note_html(NOTE))
    doc = lxml.html.fragment_fromstring(html, create_parent="div")
    assert [a.get("href") for a in doc.iter("a")] == [
        "https://example.org/about",
        "https://tracker.example/p.gif",  # a link to the image, never the image loaded
        "mailto:editor@example.org",
    ]
    assert not list(doc.iter("script", "img", "b"))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "javascript:" in doc.text_content()
    assert [el.tag for el in doc] == ["h1", "p", "ul", "ol"]

    text = notes.note_text(NOTE)
    assert text == NOTE_TEXT
    assert max(len(line) for line in text.splitlines()) <= 72


def test_the_note_leads_the_mailed_digest_once_and_stays_with_its_issue(
    seeded: Database, cfg: Config, config_path: Path, smtp_server: SmtpServer
) -> None:
    notes.set_note(seeded, NOTE)
    preview = digests.preview(seeded, cfg)
    assert preview is not None and "A word before the news" in preview.html
    assert preview.text.split("=" * 60 + "\n\n", 1)[1].startswith(NOTE_TEXT + "\n\nIn this issue:")

    sent = mailer(config_path, "digest", "send", "--now")
    assert sent.returncode == 0, sent.stderr
    messages = smtp_server.received
    assert len(messages) == 3
    for received in messages:
        msg = received.message
        text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")  # type: ignore[union-attr]
        html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
        view, header, rest = text.split("\n\n", 2)
        assert view == f"View in browser: {cfg.digest.base_url}/archive/1"
        assert header.endswith("=" * 60) and rest.startswith(NOTE_TEXT + "\n\nIn this issue:")
        doc = lxml.html.document_fromstring(html)
        rows = [td.get("class") for td in doc.cssselect("table.card > tr > td")]
        assert rows[:4] == ["web", "head", "note", "toc"]
        note_td = doc.cssselect("td.note")[0]
        assert note_td.cssselect("h1")[0].text_content() == "A word before the news"
        # Styled inline, as the rest of the card, for clients that drop <style>.
        assert "padding:20px 32px 0 32px" in note_td.get("style", "")
        assert "color:" in note_td.cssselect("a")[0].get("style", "")

    # The note went with issue #1: the next issue has none until one is set.
    assert notes.next_note(seeded) == ""
    with seeded.session() as s:
        kept = s.scalars(select(EditorNote)).all()
        assert [(n.markdown, n.digest_id is not None) for n in kept] == [(NOTE.strip(), True)]
        first_id = kept[0].digest_id
    assert mailer(config_path, "digest", "note").stdout == "no note for the next issue\n"
    stored = digests.get_digest(seeded, first_id)  # type: ignore[arg-type]
    assert stored is not None and "A word before the news" in stored.html

    ArticleStore(seeded, cfg).add("Late news about chips", "A new chip fab opens in Dresden.")
    later = digests.preview(seeded, cfg)
    assert later is not None and "A word before the news" not in later.html + later.text
    assert 'class="note"' not in later.html


def test_a_resumed_send_mails_the_note_it_was_built_with(seeded: Database, cfg: Config) -> None:
    notes.set_note(seeded, "The note at build time.")
    built = digests.build(seeded, cfg, digests.manual_slot(utcnow()))
    assert built is not None and "The note at build time." in built.text
    # A note set after the build is for the next issue; the digest being sent is unchanged.
    notes.set_note(seeded, "A later note.")
    summaries = campaign.deliver_unfinished(seeded, cfg)
    assert [(s.sent, s.finished) for s in summaries] == [(3, True)]
    stored = digests.get_digest(seeded, built.id)
    assert stored is not None and (stored.html, stored.text) == (built.html, built.text)
    assert "A later note." not in stored.text and notes.next_note(seeded) == "A later note."


def test_a_slot_skipped_for_want_of_articles_leaves_the_note_waiting(db: Database, cfg: Config) -> None:
    SubscriberStore(db).add("ann@example.com")
    notes.set_note(db, "Still waiting.")
    skipped = digests.build(db, cfg, digests.manual_slot(utcnow()))
    assert skipped is not None and skipped.status == digests.SKIPPED
    assert notes.next_note(db) == "Still waiting."
    ArticleStore(db, cfg).import_paths([str(SEEDS)])
    preview = digests.preview(db, cfg)
    assert preview is not None and "Still waiting." in preview.text


def test_the_note_fits_a_phone_without_the_style_block_and_is_readable_in_dark_mode(
    seeded: Database, cfg: Config
) -> None:
    from playwright.sync_api import sync_playwright

    from tests.chromium import CHROMIUM_ARGS
    from tests.test_email_layout import LONG_WORD, open_page, rgb

    long_url = "https://example.org/" + "a" * 120
    notes.set_note(seeded, f"{LONG_WORD} and <{long_url}>, then [a link]({long_url}).")
    preview = digests.preview(seeded, cfg)
    assert preview is not None and long_url in preview.html
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            for styles in (True, False):
                page = open_page(browser, preview.html, 375, styles=styles)
                scroll = page.evaluate("document.scrollingElement.scrollWidth")
                page.context.close()
                assert scroll <= 375, f"{'with' if styles else 'without'} <style>: {scroll} px wide"
            page = open_page(browser, preview.html, 375, scheme="dark")
            colour = page.evaluate("getComputedStyle(document.querySelector('td.note p')).color")
            page.context.close()
            assert rgb(colour) == "#f9fafb"
        finally:
            browser.close()
