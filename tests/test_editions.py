"""Readers who chose themes get an edition of the digest with only those themes, through
a real send to a real SMTP server, on SQLite and PostgreSQL."""

from __future__ import annotations

import re

from sqlalchemy import select, update

from mailer import delivery
from mailer import digest as digests
from mailer.models import Article, Delivery, DigestEdition, Subscriber, utcnow


def _contents(text: str) -> list[str]:
    """The section names of a mail's "In this issue" list (text part)."""
    block = text.replace("\r\n", "\n").split("In this issue:\n", 1)[1].split("\n\n", 1)[0]
    return [re.sub(r" \(\d+\)$", "", line.removeprefix("- ")) for line in block.splitlines()]


def test_each_reader_gets_the_sections_of_the_themes_they_chose(seeded, cfg, smtp_server) -> None:
    with seeded.session() as s:
        s.execute(update(Subscriber).where(Subscriber.email == "ada@example.com").values(themes="ai,cyber"))
        # A theme with no article this time: no mail, and the ledger says why.
        s.execute(update(Subscriber).where(Subscriber.email == "zoe@example.com").values(themes="gardening"))
    d = digests.build(seeded, cfg, digests.manual_slot(utcnow()))
    assert d is not None
    summary = delivery.deliver(seeded, cfg, d.id)
    assert summary.finished and summary.sent == 2

    names = {t.slug: t.name for t in cfg.themes}
    mails = {r.recipients[0]: r.message for r in smtp_server.received}
    assert sorted(mails) == ["ada@example.com", "grace@example.com"]
    whole = _contents(mails["grace@example.com"].get_body(("plain",)).get_content())
    chosen = _contents(mails["ada@example.com"].get_body(("plain",)).get_content())
    assert len(whole) > 2 and chosen == [n for n in whole if n in (names["ai"], names["cyber"])]
    # The subject names the edition's themes only; the whole digest's names more.
    assert mails["ada@example.com"]["Subject"] != mails["grace@example.com"]["Subject"]
    for other in set(whole) - set(chosen):
        assert other not in mails["ada@example.com"]["Subject"]
        assert f">{other}<" not in mails["ada@example.com"].get_body(("html",)).get_content()
    with seeded.reader() as s:
        zoe = s.scalar(select(Delivery).join(Subscriber).where(Subscriber.email == "zoe@example.com"))
        assert (zoe.status, zoe.last_reply) == ("skipped", digests.NO_ARTICLE_IN_THEMES)
        editions = s.scalars(select(DigestEdition.themes).where(DigestEdition.digest_id == d.id)).all()
        assert editions == ["ai,cyber"]
        # Every article of the whole digest is reserved for it, whoever got which.
        in_digest = s.scalars(select(Article.theme).where(Article.digest_id == d.id)).all()
        assert {names[t] for t in in_digest} == set(whole)


def test_a_choice_covering_every_article_gets_the_whole_digest(seeded, cfg, smtp_server) -> None:
    every = ",".join(sorted(t.slug for t in cfg.themes))
    with seeded.session() as s:
        s.execute(update(Subscriber).where(Subscriber.email == "ada@example.com").values(themes=every))
    d = digests.build(seeded, cfg, digests.manual_slot(utcnow()))
    delivery.deliver(seeded, cfg, d.id)
    subjects = {r.message["Subject"] for r in smtp_server.received}
    assert len(subjects) == 1 and len(smtp_server.received) == 3
    with seeded.reader() as s:
        assert s.scalars(select(DigestEdition)).all() == []
