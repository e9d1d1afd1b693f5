"""The ledger of what comes back after delivery (mailer.bounces.ledger) and VERP: a real
digest sent to a real SMTP server (aiosmtpd), then bounces and complaints recorded against
its deliveries, on SQLite and PostgreSQL; and what `digest status`, `bounces list` and
`subscribers show` then print."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from mailer import campaign
from mailer.articles import ArticleStore
from mailer.bounces import ledger
from mailer.bounces.report import BounceKind, Report, Source
from mailer.bounces.verp import delivery_of, envelope_sender
from mailer.config import Config, load_config
from mailer.db import Database
from mailer.models import Delivery, Subscriber, utcnow
from mailer.signup import Signup, confirm, request
from mailer.tokens import Tokens, load_secret
from tests.conftest import write_config
from tests.smtp_server import SmtpServer
from tests.web_server import WebServer

BOUNCES = "bounces@example.org"


@pytest.fixture
def verp_cfg(tmp_path: Path, smtp_server: SmtpServer, database_url: str) -> Config:
    return load_config(
        str(write_config(tmp_path, smtp_server.port, database_url, bounces={"address": BOUNCES}))
    )


@pytest.fixture
def sent(seeded: Database, verp_cfg: Config) -> dict[str, Delivery]:
    """The sample digest delivered to the three demo readers: their deliveries by address."""
    campaign.send_now(seeded, verp_cfg, utcnow())
    with seeded.reader() as s:
        rows = s.execute(
            select(Subscriber.email, Delivery).join(Delivery, Delivery.subscriber_id == Subscriber.id)
        )
        return {email: d for email, d in rows}


def tokens(cfg: Config) -> Tokens:
    return Tokens(load_secret(cfg.var_dir))


def report(kind: BounceKind = BounceKind.HARD, event: str = "e1", **kw: object) -> Report:
    return Report(kind, Source.MX, event, status=str(kw.pop("status", "5.1.1")), **kw)  # type: ignore[arg-type]


def reader(db: Database, email: str) -> Subscriber:
    with db.reader() as s:
        sub = s.scalar(select(Subscriber).where(Subscriber.email == email))
        assert sub is not None
        return sub


# ---------------------------------------------------------------- VERP


def test_each_message_s_envelope_sender_names_its_delivery(
    sent: dict[str, Delivery], verp_cfg: Config, smtp_server: SmtpServer
) -> None:
    senders = {r.recipients[0]: r.sender for r in smtp_server.received}

    for email, delivery in sent.items():
        assert senders[email] == envelope_sender(verp_cfg, tokens(verp_cfg), delivery.id)
        assert senders[email].startswith("bounces+") and senders[email].endswith("@example.org")
        assert delivery_of(verp_cfg, tokens(verp_cfg), senders[email].upper()) == delivery.id
    assert len(set(senders.values())) == 3


def test_without_a_bounce_address_the_envelope_sender_is_the_from_address(
    seeded: Database, cfg: Config, smtp_server: SmtpServer
) -> None:
    campaign.send_now(seeded, cfg, utcnow())
    assert {r.sender for r in smtp_server.received} == {cfg.smtp.from_address}


@pytest.mark.parametrize(
    "address",
    [
        pytest.param("bounces+1-aaaaaaaaaaaaaaaa@example.org", id="forged-mac"),
        pytest.param("bounces@example.org", id="no-token"),
        pytest.param("other+{token}@example.org", id="other-local-part"),
        pytest.param("bounces+{token}@example.net", id="other-domain"),
    ],
)
def test_an_address_that_is_not_a_verp_address_of_ours_names_no_delivery(
    sent: dict[str, Delivery], verp_cfg: Config, address: str
) -> None:
    token = tokens(verp_cfg).verp(sent["ada@example.com"].id)
    assert delivery_of(verp_cfg, tokens(verp_cfg), address.format(token=token)) is None


# ---------------------------------------------------------------- the ledger


def test_a_hard_bounce_by_verp_token_bounces_the_reader_once_and_a_replay_changes_nothing(
    seeded: Database, sent: dict[str, Delivery], verp_cfg: Config
) -> None:
    token = tokens(verp_cfg).verp(sent["ada@example.com"].id)

    first = ledger.record(seeded, verp_cfg, report(verp_token=token))
    again = ledger.record(seeded, verp_cfg, report(verp_token=token))

    assert first == ledger.Recorded("applied", "ada@example.com", sent["ada@example.com"].id)
    assert again.outcome == "replay"
    ada = reader(seeded, "ada@example.com")
    assert (ada.status, ada.bounce_count) == ("bounced", 1)


def test_a_forged_token_matches_nothing_and_changes_nothing(
    seeded: Database, sent: dict[str, Delivery], verp_cfg: Config
) -> None:
    forged = f"{sent['ada@example.com'].id}-aaaaaaaaaaaaaaaa"

    got = ledger.record(seeded, verp_cfg, report(verp_token=forged))

    assert got == ledger.Recorded("unmatched", None, None)
    assert reader(seeded, "ada@example.com").status == "active"


def test_a_bounce_is_matched_by_the_message_id_of_the_message_that_bounced(
    seeded: Database, sent: dict[str, Delivery], verp_cfg: Config, smtp_server: SmtpServer
) -> None:
    [mail] = [r.message for r in smtp_server.received if r.recipients == ["grace@example.com"]]

    got = ledger.record(seeded, verp_cfg, report(message_id=mail["Message-ID"]))

    assert got.delivery_id == sent["grace@example.com"].id
    assert reader(seeded, "grace@example.com").status == "bounced"


def test_a_guessed_message_id_matches_no_delivery(
    seeded: Database, sent: dict[str, Delivery], verp_cfg: Config
) -> None:
    d = sent["grace@example.com"]
    guessed = f"<digest-{d.digest_id}.sub-{d.subscriber_id}.{'0' * 32}@example.org>"

    assert ledger.record(seeded, verp_cfg, report(message_id=guessed)).outcome == "unmatched"


def test_a_bounce_naming_only_the_address_counts_for_the_reader_but_no_delivery(
    seeded: Database, sent: dict[str, Delivery], verp_cfg: Config
) -> None:
    got = ledger.record(seeded, verp_cfg, report(recipient="ZOE@example.com"))

    assert (got.outcome, got.delivery_id) == ("applied", None)
    assert reader(seeded, "zoe@example.com").bounce_count == 1


def test_a_complaint_stops_the_reader_at_once_and_only_their_own_sign_up_brings_them_back(
    seeded: Database, sent: dict[str, Delivery], verp_cfg: Config
) -> None:
    token = tokens(verp_cfg).verp(sent["ada@example.com"].id)
    ledger.record(seeded, verp_cfg, report(BounceKind.COMPLAINT, verp_token=token, status=""))
    assert reader(seeded, "ada@example.com").status == "complained"

    # The editor cannot put them back; their own double opt-in can.
    from mailer.subscribers import SubscriberStore

    SubscriberStore(seeded).add("ada@example.com")
    assert reader(seeded, "ada@example.com").status == "complained"
    request(seeded, verp_cfg, Signup("ada@example.com"), "203.0.113.9", utcnow())
    ada = reader(seeded, "ada@example.com")
    assert ada.status == "complained"
    t = tokens(verp_cfg)
    confirm(seeded, verp_cfg, t, t.confirm(ada.id, ada.token_nonce), "203.0.113.9", utcnow())
    assert reader(seeded, "ada@example.com").status == "active"


def test_soft_bounces_change_no_status_and_a_later_good_delivery_resets_them(
    seeded: Database, sent: dict[str, Delivery], verp_cfg: Config, smtp_server: SmtpServer
) -> None:
    token = tokens(verp_cfg).verp(sent["zoe@example.com"].id)
    for n in (1, 2):
        ledger.record(seeded, verp_cfg, report(BounceKind.SOFT, f"soft{n}", verp_token=token, status="4.2.2"))
    zoe = reader(seeded, "zoe@example.com")
    assert zoe.status == "active" and ledger.soft_bounce_count(seeded, zoe.id) == 2

    store = ArticleStore(seeded, verp_cfg)
    for n in range(verp_cfg.digest.min_articles):
        store.add(f"Next week's story {n}", f"Story {n} of next week, about chips and models.")
    # The next issue (a slot of its own: a minute later), delivered with no bounce.
    campaign.send_now(seeded, verp_cfg, utcnow() + timedelta(minutes=1))
    with seeded.reader() as s:
        assert s.scalar(select(func.count()).where(Delivery.subscriber_id == zoe.id)) == 2

    assert ledger.soft_bounce_count(seeded, zoe.id) == 0


# ---------------------------------------------------------------- what the editor sees


def test_digest_status_shows_what_came_back_and_warns_past_the_providers_thresholds(
    seeded: Database, sent: dict[str, Delivery], verp_cfg: Config, run_cli: Callable[..., object]
) -> None:
    t = tokens(verp_cfg)
    ledger.record(seeded, verp_cfg, report(verp_token=t.verp(sent["ada@example.com"].id)))
    ledger.record(
        seeded, verp_cfg, report(BounceKind.COMPLAINT, "c1", verp_token=t.verp(sent["zoe@example.com"].id))
    )

    out = run_cli("--config", str(verp_cfg.path), "digest", "status").output  # type: ignore[attr-defined]
    data = json.loads(run_cli("--config", str(verp_cfg.path), "digest", "status", "--json").output)  # type: ignore[attr-defined]

    assert "  after delivery: 1 bounced later (33.3%), 0 soft bounce(s), 1 complained (33.33%)\n" in out
    assert "  warning: bounce rate 33.3% is over 5% (Amazon SES reviews senders above it)" in out
    assert "  warning: complaint rate 33.33% is over 0.1%" in out
    assert data["returned"]["bounced"] == 1 and data["returned"]["complained"] == 1


def test_bounces_list_names_the_reader_and_the_digest(
    seeded: Database, sent: dict[str, Delivery], verp_cfg: Config, run_cli: Callable[..., object]
) -> None:
    d = sent["ada@example.com"]
    ledger.record(
        seeded, verp_cfg, report(verp_token=tokens(verp_cfg).verp(d.id), diagnostic="550 5.1.1 no such user")
    )
    ledger.record(seeded, verp_cfg, report(event="e2", recipient="stranger@example.net"))

    [unmatched, bounced] = json.loads(
        run_cli("--config", str(verp_cfg.path), "bounces", "list", "--json").output  # type: ignore[attr-defined]
    )

    assert (bounced["email"], bounced["digest_id"], bounced["kind"], bounced["status"]) == (
        "ada@example.com",
        d.digest_id,
        "hard",
        "5.1.1",
    )
    assert (unmatched["email"], unmatched["matched"], unmatched["digest_id"]) == (
        "stranger@example.net",
        False,
        None,
    )


def test_the_dashboard_shows_each_digests_rates_and_warns_past_the_thresholds(
    seeded: Database, sent: dict[str, Delivery], verp_cfg: Config
) -> None:
    token = tokens(verp_cfg).verp(sent["zoe@example.com"].id)
    ledger.record(seeded, verp_cfg, report(BounceKind.COMPLAINT, "c1", verp_token=token))
    web = WebServer(seeded, verp_cfg).start()
    try:
        [row] = web.get("/").doc().cssselect("#recent tr")[1:]
    finally:
        web.close()

    cells = [td.text_content().strip() for td in row.cssselect("td")]
    assert cells[7] == "0"
    assert cells[8].startswith("1 (33.33%)")
    [alert] = row.cssselect('[role="alert"]')
    assert alert.text_content().startswith("⚠ complaint rate 33.33% is over 0.1%")
