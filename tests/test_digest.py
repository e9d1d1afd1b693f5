"""Building and rendering the digest: one per slot, themed sections, safe and small HTML."""

from __future__ import annotations

import html as html_lib
import logging
import re
from datetime import UTC, datetime

import pytest
from sqlalchemy import event, func, select

from mailer import campaign, render
from mailer import digest as digests
from mailer.articles import ArticleStore
from mailer.config import load_config
from mailer.errors import InputError
from mailer.models import Article, Delivery, Digest
from mailer.scheduler import Slot
from mailer.subscribers import SubscriberStore
from tests.conftest import write_config

NOW = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)


def _slot(key: str = "2026-11-30T08:00") -> Slot:
    return Slot(key, NOW)


def _count(db, model, *where) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where)) or 0


def test_building_reserves_the_unsent_articles_and_freezes_the_audience(seeded, cfg):
    unsent_before = _count(seeded, Article, Article.digest_id.is_(None))
    d = digests.build(seeded, cfg, _slot())
    assert d is not None and d.status == "sending" and d.issue_number == 1
    assert _count(seeded, Article, Article.digest_id == d.id) == unsent_before
    assert _count(seeded, Delivery, Delivery.digest_id == d.id, Delivery.status == "queued") == 3
    # Sent only once the digest has delivered.
    assert _count(seeded, Article, Article.sent_at.is_not(None)) == 0


def test_articles_imported_after_the_build_wait_for_the_next_digest(seeded, cfg):
    d = digests.build(seeded, cfg, _slot())
    late = ArticleStore(seeded, cfg).add("Late news about chips", "A new chip fab opens.")
    with seeded.session() as s:
        assert s.get(Article, late.id).digest_id is None
    preview = digests.preview(seeded, cfg)
    assert preview is not None and preview.article_count == 1 and preview.issue == d.issue_number + 1


def test_a_slot_never_gets_a_second_digest(seeded, cfg):
    assert digests.build(seeded, cfg, _slot()) is not None
    ArticleStore(seeded, cfg).add("Another", "More text here for a new article.")
    assert digests.build(seeded, cfg, _slot()) is None
    assert _count(seeded, Digest) == 1


def test_too_few_articles_skips_the_week_and_logs_it(db, tmp_path, smtp_server, caplog):
    cfg = load_config(str(write_config(tmp_path, smtp_server.port, digest={"min_articles": 3})))
    store = ArticleStore(db, cfg)
    store.add("One", "First article body.")
    store.add("Two", "Second article body.")
    with caplog.at_level(logging.INFO, logger="mailer.digest"):
        d = digests.build(db, cfg, _slot())
    assert d is not None and d.status == "skipped" and d.issue_number is None
    assert "2 unsent article(s), the minimum is 3" in caplog.text
    assert _count(db, Article, Article.digest_id.is_not(None)) == 0
    with pytest.raises(InputError, match="minimum is 3"):
        digests.build(db, cfg, digests.manual_slot(NOW), record_skip=False)


def test_more_articles_than_the_maximum_leaves_the_newest_for_next_week(db, tmp_path, smtp_server):
    cfg = load_config(
        str(write_config(tmp_path, smtp_server.port, digest={"max_articles": 5, "min_articles": 1}))
    )
    store = ArticleStore(db, cfg)
    ids = [store.add(f"Story {i}", f"Body number {i} of the story.").id for i in range(8)]
    SubscriberStore(db).add("a@example.com")
    d = digests.build(db, cfg, _slot())
    with db.session() as s:
        chosen = set(s.scalars(select(Article.id).where(Article.digest_id == d.id)))
    assert chosen == set(ids[:5])


def test_preview_and_build_load_only_the_articles_the_digest_holds(db, tmp_path, smtp_server):
    # Counted with SQLAlchemy's load event: with 100,000 articles waiting, loading them all
    # took seconds and hundreds of MB for every /preview request.
    cfg = load_config(
        str(write_config(tmp_path, smtp_server.port, digest={"max_articles": 5, "min_articles": 1}))
    )
    store = ArticleStore(db, cfg)
    ids = [store.add(f"Story {i}", f"Body number {i} of the story.").id for i in range(60)]
    SubscriberStore(db).add("a@example.com")
    loaded: list[int] = []

    def on_load(article: Article, _context: object) -> None:
        loaded.append(article.id)

    event.listen(Article, "load", on_load)
    try:
        preview = digests.preview(db, cfg)
        by_preview, loaded[:] = sorted(loaded), []
        d = digests.build(db, cfg, _slot())
    finally:
        event.remove(Article, "load", on_load)

    assert preview is not None and preview.article_count == 5
    assert by_preview == ids[:5]
    assert d is not None and sorted(loaded) == ids[:5]
    assert [f"Story {i}" in preview.text for i in range(7)] == [True] * 5 + [False] * 2


def test_html_has_themed_sections_in_theme_order_and_email_safe_markup(seeded, cfg):
    d = digests.build(seeded, cfg, _slot())
    html = d.html
    positions = [
        html.find(f'id="{slug}"') for slug in ("ai", "chips", "cyber", "robotics", "policy", "business")
    ]
    assert all(p > 0 for p in positions) and positions == sorted(positions)
    assert '<html lang="en"' in html
    assert 'role="presentation"' in html and 'width="600"' in html
    # premailer inlined the CSS onto the elements.
    assert 'class="t" style="' in html
    assert "Issue #1" in html and render.UNSUBSCRIBE_PLACEHOLDER in html
    assert "Read more" in d.text and render.UNSUBSCRIBE_PLACEHOLDER in d.text
    with seeded.session() as s:
        titles = list(s.scalars(select(Article.title).where(Article.digest_id == d.id)))
    text = " ".join(d.text.split())  # titles are wrapped in the text part
    for title in titles:
        assert " ".join(title.split()) in text
        assert html_lib.escape(title, quote=False) in html


def test_subject_comes_from_the_config_template(seeded, cfg):
    d = digests.build(seeded, cfg, _slot())
    assert (
        d.subject
        == "Tech Policy Weekly #1: AI models and companies, Policy and regulation, Chips and hardware"
    )


def test_article_text_is_escaped_in_the_html(db, cfg):
    ArticleStore(db, cfg).add(
        "<script>alert('x')</script> & co", "<b>bold</b> <img src=x onerror=alert(1)> text"
    )
    p = digests.preview(db, cfg)
    assert "<script>alert" not in p.html and "&lt;script&gt;" in p.html
    assert "<img src=x" not in p.html and "&lt;b&gt;bold&lt;/b&gt;" in p.html


def test_html_part_stays_under_100_kb_for_40_long_articles(db, tmp_path, smtp_server):
    cfg = load_config(str(write_config(tmp_path, smtp_server.port, digest={"max_articles": 40})))
    store = ArticleStore(db, cfg)
    themes = ["ai", "chips", "cyber", "robotics", "policy", "business", "other"]
    for i in range(40):
        title = f"Story {i}: " + "a long and winding headline about regulation " * 3
        first = " ".join(["This opening paragraph is deliberately long to test the lead cut."] * 12)
        store.add(
            title[:250],
            f"{first}\n\nSecond paragraph {i}.",
            url=f"https://news.example.com/{i}/" + "x" * 80,
            theme=themes[i % len(themes)],
        )
    p = digests.preview(db, cfg)
    assert p.article_count == 40
    assert len(p.html.encode("utf-8")) < 100 * 1024


def test_preview_changes_no_state(seeded, cfg):
    before = (_count(seeded, Digest), _count(seeded, Article, Article.digest_id.is_(None)))
    assert digests.preview(seeded, cfg) is not None
    assert (_count(seeded, Digest), _count(seeded, Article, Article.digest_id.is_(None))) == before


def test_lead_is_about_the_first_paragraph_cut_at_a_word():
    assert render.lead_of(["Short one.", "Second."], 100) == "Short one."
    lead = render.lead_of(["word " * 100], 50)
    assert lead.endswith("…") and len(lead) <= 51 and "  " not in lead


LONG_TITLE = (
    "An unusually long headline about semiconductor export controls, data-centre power contracts "
    "and what the new rules mean for every small chip designer in Europe"
)
URL = re.compile(r"https?://")


def test_text_part_is_wrapped_signed_with_dash_dash_space_and_ends_in_a_newline(db, tmp_path, smtp_server):
    """RFC 3676: the signature separator is "-- " (mail clients fold or strip what follows
    it, and "--" is not recognised); text lines stay within 78 columns; a text file ends in
    a newline. Checked in what the SMTP server received."""
    postal = "Tech Policy Weekly, care of a rather long organisation name, 1 Example Street, 1000 City"
    cfg = load_config(str(write_config(tmp_path, smtp_server.port, digest={"postal_address": postal})))
    store = ArticleStore(db, cfg)
    store.add(LONG_TITLE, "First paragraph of the long one.\n\nSecond paragraph.")
    for i in range(3):
        store.add(f"Story {i}", f"Text of story {i}, long enough to be an article.")
    SubscriberStore(db).add("ada@example.com", "Ada")
    [summary] = campaign.send_now(db, cfg, NOW)
    assert summary.sent == 1
    part = smtp_server.received[0].message.get_body(("plain",))
    assert part is not None
    text = part.get_content().replace("\r\n", "\n")  # MIME canonical form: CRLF line ends

    lines = text.split("\n")
    assert text.endswith("\n") and not text.endswith("\n\n")
    assert lines.count("-- ") == 1 and "--" not in lines
    signature = lines[lines.index("-- ") + 1 :]
    assert signature[0] == cfg.digest.footer_text
    assert "Unsubscribe: " in signature[-2]
    too_long = [line for line in lines if len(line) > 78 and not URL.search(line)]
    assert too_long == []
    assert " ".join(LONG_TITLE.split()) in " ".join(text.split())
    assert LONG_TITLE not in text  # it was wrapped, between words
    assert " ".join(postal.split()) in " ".join(" ".join(signature).split())
