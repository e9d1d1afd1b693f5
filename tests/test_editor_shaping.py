"""Shaping the next issue: `articles pin/unpin` (chosen first, top of its section),
`articles hold/release` (out of every digest, stays unsent, shown as held),
`articles edit --title/--summary` (the summary replaces the computed lead), only on unsent
articles; `schedule skip [--undo]` records the next slot as skipped, so the scheduler's
build for it does nothing, and `digest list` and the dashboard show it. Real
`.venv/bin/mailer` processes, a real database, SMTP server and web server."""

from __future__ import annotations

import json
import subprocess
from datetime import timedelta
from pathlib import Path

import lxml.html
import pytest
from sqlalchemy import select

from mailer import campaign
from mailer import digest as digests
from mailer.articles import ArticleStore
from mailer.config import Config, load_config
from mailer.db import Database
from mailer.models import Article, Digest, utcnow
from mailer.scheduler import Schedule
from mailer.subscribers import SubscriberStore
from tests.conftest import ROOT, write_config
from tests.smtp_server import SmtpServer
from tests.web_server import WebServer

MAILER = str(ROOT / ".venv" / "bin" / "mailer")


def mailer(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MAILER, "--config", str(config), *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def config_path(tmp_path: Path, smtp_server: SmtpServer, database_url: str) -> Path:
    # Three articles a digest: which three is what pinning and holding decide.
    return write_config(
        tmp_path, smtp_server.port, database_url, digest={"max_articles": 3, "min_articles": 1}
    )


@pytest.fixture
def five(db: Database, cfg: Config) -> list[int]:
    """Five unsent articles on one theme, oldest first, and one reader."""
    store = ArticleStore(db, cfg)
    ids = [
        store.add(
            f"Story {n} about chips", f"Chip story number {n} opens here. It goes on.", theme="chips"
        ).id
        for n in range(1, 6)
    ]
    SubscriberStore(db).add("ann@example.com")
    return ids


def chosen(db: Database, cfg: Config) -> list[str]:
    preview = digests.preview(db, cfg)
    assert preview is not None
    doc = lxml.html.document_fromstring(preview.html)
    return [h.text_content() for h in doc.cssselect("h2.t")]


def test_pin_hold_and_edit_print_what_they_did(config_path: Path, five: list[int]) -> None:
    first, second = five[0], five[1]
    cases = [
        (
            ("articles", "pin", str(first)),
            f"article #{first} pinned to the top of chips: Story 1 about chips\n",
        ),
        (("articles", "unpin", str(first)), f"article #{first} not pinned: Story 1 about chips\n"),
        (
            ("articles", "hold", str(second)),
            f"article #{second} held: no digest takes it until `mailer articles release {second}`\n",
        ),
        (
            ("articles", "edit", str(first), "--title", "  A  better\ttitle ", "--summary", "Just this."),
            f"edited article #{first} [chips] A better title\n  summary: Just this.\n",
        ),
        (
            ("articles", "edit", str(first), "--summary", ""),
            f"edited article #{first} [chips] A better title\n"
            "  summary: none (the digest shows the opening text)\n",
        ),
    ]
    for args, expected in cases:
        proc = mailer(config_path, *args)
        assert (proc.returncode, proc.stderr, proc.stdout) == (0, "", expected), args

    listed = mailer(config_path, "articles", "list", "--json")
    states = {a["id"]: (a["state"], a["held_at"] is not None) for a in json.loads(listed.stdout)}
    assert states[second] == ("held", True) and states[first] == ("unsent", False)
    table = mailer(config_path, "articles", "list").stdout.splitlines()
    assert [line.split()[-1] for line in table[1:-1]] == ["unsent", "held", "unsent", "unsent", "unsent"]

    released = mailer(config_path, "articles", "release", str(second))
    assert released.stdout == f"article #{second} released: it can go into the next digest\n"


def test_shaping_refusals_are_one_line_and_exit_1(
    db: Database, cfg: Config, config_path: Path, five: list[int]
) -> None:
    built = digests.build(db, cfg, digests.manual_slot(utcnow()))
    assert built is not None
    in_digest = five[0]
    unsent = five[4]
    cases = {
        ("articles", "pin", "999"): "error: article #999 does not exist\n",
        ("articles", "pin", str(in_digest)): (
            f"error: article #{in_digest} is in digest #{built.id}; only unsent ones can be pinned\n"
        ),
        ("articles", "hold", str(in_digest)): (
            f"error: article #{in_digest} is in digest #{built.id}; only unsent ones can be held\n"
        ),
        ("articles", "edit", str(in_digest), "--title", "New"): (
            f"error: article #{in_digest} is in digest #{built.id}; only unsent ones can be edited\n"
        ),
        ("articles", "edit", str(unsent)): "error: give --title, --summary or both\n",
        ("articles", "edit", str(unsent), "--title", " "): "error: --title is empty\n",
        ("articles", "edit", str(unsent), "--title", "!!! ???"): "error: --title has no letters or digits\n",
        (
            "articles",
            "edit",
            str(unsent),
            "--title",
            "x" * 301,
        ): "error: --title is longer than 300 characters\n",
        ("articles", "edit", str(unsent), "--summary", "y" * 1001): (
            "error: --summary is longer than 1000 characters\n"
        ),
    }
    for args, expected in cases.items():
        proc = mailer(config_path, *args)
        assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", expected), args
    with db.session() as s:
        assert s.get(Article, unsent).title == "Story 5 about chips"  # type: ignore[union-attr]


def test_pinned_articles_are_chosen_first_and_lead_their_section(
    db: Database, cfg: Config, five: list[int]
) -> None:
    store = ArticleStore(db, cfg)
    assert chosen(db, cfg) == ["Story 1 about chips", "Story 2 about chips", "Story 3 about chips"]
    store.pin(five[4])
    store.pin(five[2])
    # The newest, pinned first, then the other pinned one, then the oldest unpinned.
    assert chosen(db, cfg) == ["Story 5 about chips", "Story 3 about chips", "Story 1 about chips"]
    store.pin(five[4], pinned=False)
    assert chosen(db, cfg) == ["Story 3 about chips", "Story 1 about chips", "Story 2 about chips"]


def test_a_held_article_stays_out_and_unsent_until_released(
    db: Database, cfg: Config, five: list[int], smtp_server: SmtpServer
) -> None:
    store = ArticleStore(db, cfg)
    store.hold(five[0])
    store.pin(five[0])  # a pin does not override a hold
    summaries = campaign.send_now(db, cfg, utcnow())
    assert [(s.sent, s.finished) for s in summaries] == [(1, True)]
    html = smtp_server.received[0].message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "Story 1 about chips" not in html and "Story 4 about chips" in html
    with db.session() as s:
        held = s.get(Article, five[0])
        assert held is not None and (held.digest_id, held.sent_at) == (None, None)
    store.hold(five[0], held=False)
    assert chosen(db, cfg) == ["Story 1 about chips", "Story 5 about chips"]


def test_the_summary_and_the_edited_title_are_what_the_digest_shows(
    db: Database, cfg: Config, five: list[int]
) -> None:
    ArticleStore(db, cfg).edit(five[0], title="Chips, rewritten", summary="The editor's own words.")
    preview = digests.preview(db, cfg)
    assert preview is not None
    doc = lxml.html.document_fromstring(preview.html)
    first = doc.cssselect("td.item")[0]
    assert first.cssselect("h2.t")[0].text_content() == "Chips, rewritten"
    assert first.cssselect("p.lead")[0].text_content() == "The editor's own words."
    assert "Chips, rewritten\nThe editor's own words.\nRead more: " in preview.text
    assert "Chip story number 1 opens here" not in preview.html + preview.text
    # The second article keeps the lead computed from its text.
    assert doc.cssselect("p.lead")[1].text_content().startswith("Chip story number 2 opens here.")


def test_schedule_skip_records_the_next_slot_and_the_scheduler_sends_nothing_then(
    db: Database, cfg: Config, config_path: Path, five: list[int], smtp_server: SmtpServer
) -> None:
    slot = Schedule.of(cfg).next_slots(utcnow(), 1)[0]
    shown = slot.at.astimezone(cfg.zone).strftime("%Y-%m-%d %H:%M %Z")

    skip = mailer(config_path, "schedule", "skip")
    assert (skip.returncode, skip.stderr, skip.stdout) == (
        0,
        "",
        f"the slot {shown} is skipped: no digest then\n",
    )
    again = mailer(config_path, "schedule", "skip")
    assert (again.returncode, again.stdout, again.stderr) == (
        1,
        "",
        f"error: the slot {slot.key} is already skipped\n",
    )
    listed = json.loads(mailer(config_path, "digest", "list", "--json").stdout)
    assert [(r["slot"], r["status"], r["note"], r["issue"]) for r in listed] == [
        (slot.key, "skipped", "skipped by the editor", None)
    ]
    table = mailer(config_path, "digest", "list").stdout
    # At 80 columns (not a terminal) the note is cut short, as subjects are.
    row = ["1", "-", *shown.split(), "skipped", "0", "0", "0", "0", "skipped", "by", "t…"]
    assert table.splitlines()[1].split() == row

    # The scheduler's job at the slot's time: nothing built, nothing sent, articles wait.
    assert campaign.run_due(db, cfg, slot.at + timedelta(minutes=1)) == []
    assert smtp_server.received == []
    with db.session() as s:
        assert s.scalars(select(Digest.status)).all() == ["skipped"]
        assert s.scalars(select(Article.digest_id)).all() == [None] * 5


def test_schedule_skip_undo_sends_in_the_slot_again(
    db: Database, cfg: Config, config_path: Path, five: list[int], smtp_server: SmtpServer
) -> None:
    slot = Schedule.of(cfg).next_slots(utcnow(), 1)[0]
    shown = slot.at.astimezone(cfg.zone).strftime("%Y-%m-%d %H:%M %Z")
    nothing = mailer(config_path, "schedule", "skip", "--undo")
    assert (nothing.returncode, nothing.stderr) == (1, f"error: the slot {slot.key} is not skipped\n")
    assert mailer(config_path, "schedule", "skip").returncode == 0
    undo = mailer(config_path, "schedule", "skip", "--undo")
    assert (undo.returncode, undo.stdout) == (0, f"the slot {shown} is no longer skipped\n")

    summaries = campaign.run_due(db, cfg, slot.at + timedelta(minutes=1))
    assert [(s.issue, s.sent) for s in summaries] == [(1, 1)]


def test_a_slot_that_has_its_digest_cannot_be_skipped(db: Database, cfg: Config, five: list[int]) -> None:
    now = utcnow()
    slot = Schedule.of(cfg).next_slots(now, 1)[0]
    built = digests.build(db, cfg, slot)
    assert built is not None
    with pytest.raises(
        digests.InputError, match=rf"^the slot {slot.key} already has digest id {built.id} \(sending\)$"
    ):
        campaign.skip_next(db, cfg, now)


def test_the_dashboard_shows_the_next_slot_as_skipped(
    db: Database, config_path: Path, five: list[int]
) -> None:
    cfg = load_config(str(config_path))
    assert mailer(config_path, "schedule", "skip").returncode == 0
    server = WebServer(db, cfg).start()
    try:
        doc = lxml.html.document_fromstring(server.get("/").body)
    finally:
        server.close()
    next_send = doc.cssselect("#next-send p")[0]
    assert next_send.cssselect("#next-send-skipped")[0].text_content() == "(skipped by the editor)"
    recent = [[" ".join(td.text_content().split()) for td in tr] for tr in doc.cssselect("#recent tr")[1:]]
    assert len(recent) == 1
    assert recent[0][2:] == ["skipped", "0", "0", "0", "0", "0", "0", "skipped by the editor"]
