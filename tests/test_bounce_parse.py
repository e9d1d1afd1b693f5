"""mailer.bounces.dsn on real bounces and complaints: the DSNs a private Postfix wrote here,
and Exim, Gmail, Exchange, Outlook, qmail, Yahoo, Amazon SES and ARF samples from public
test suites of bounce parsers (tests/bounces/SOURCES.md says where each file comes from).

Each sample's Reports are checked field by field; cases no sample has (a DSN without Status,
an ARF report without its original, a 5 MB attachment, garbage) are made here from the
samples, by a visible edit. Everything is in memory: the module takes well under a second.
"""

from __future__ import annotations

import hashlib
import random
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path

import flufl.bounce as flufl_bounce
import pytest

from mailer.bounces import dsn, nonstandard
from mailer.bounces.dsn import MAX_MESSAGE_BYTES, NOT_A_BOUNCE, Parsed, parse_mail
from mailer.bounces.report import BounceKind, Source

SAMPLES = Path(__file__).parent / "bounces"
RECEIVED = datetime(2030, 1, 1, tzinfo=UTC)  # after every sample's Date
TOKEN = "41-abcdefghijklmnop"
HARD, SOFT, COMPLAINT = BounceKind.HARD, BounceKind.SOFT, BounceKind.COMPLAINT
KEY = "0f8e4c2a9b1d4e6f8a0c2e4f6a8b0d1c"  # the key in the Message-IDs of the Postfix samples


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def parse(data: bytes, token: str | None = TOKEN) -> Parsed:
    return parse_mail(data, Source.IMAP, verp_token=token, received_at=RECEIVED)


def sha(name: str) -> str:
    return "sha256:" + hashlib.sha256(sample(name)).hexdigest()


def digest_id(n: int) -> str:
    return f"<digest-{n}.sub-7.{KEY}@example.org>"


# file -> (kind, recipient, status, message_id, event_id) of each report, in order
EXPECTED: dict[str, list[tuple[BounceKind, str | None, str, str | None, str]]] = {
    "postfix-user-unknown.eml": [
        (
            HARD,
            "gone@example.net",
            "5.1.1",
            digest_id(41),
            "<20261126102915.A242720E4DD@mx.mailer.test>|gone@example.net",
        )
    ],
    "postfix-two-failed.eml": [
        (
            HARD,
            "gone2@example.net",
            "5.2.1",
            digest_id(42),
            "<20261126102915.A434920E4D6@mx.mailer.test>|gone2@example.net",
        ),
        (
            HARD,
            "gone@example.net",
            "5.1.1",
            digest_id(42),
            "<20261126102915.A434920E4D6@mx.mailer.test>|gone@example.net",
        ),
    ],
    "postfix-delayed.eml": [
        (
            SOFT,
            "busy@example.net",
            "4.2.2",
            digest_id(43),
            "<20261126102915.AD61320E228@mx.mailer.test>|busy@example.net",
        )
    ],
    # Given up after 4xx: failed, but the address itself was never refused.
    "postfix-expired-4xx.eml": [
        (
            SOFT,
            "busy@example.net",
            "4.2.2",
            digest_id(48),
            "<20261126103156.B5D6D20C7E3@mx.mailer.test>|busy@example.net",
        )
    ],
    # One failed, one relayed: only the failure is a report.
    "postfix-failed-and-relayed.eml": [
        (
            HARD,
            "gone@example.net",
            "5.1.1",
            digest_id(45),
            "<20261126103010.D5D9820E5F4@mx.mailer.test>|gone@example.net",
        )
    ],
    "exim-two-failed.eml": [
        (
            HARD,
            "kijitora@example.jp",
            "5.1.1",
            "<E1X58pB-0004bW-2s@marutamachi.example.org>",
            "<E1X58pT-0004bZ-Co@marutamachi.example.org>|kijitora@example.jp",
        ),
        (
            HARD,
            "sabatora@example.jp",
            "5.2.1",
            "<E1X58pB-0004bW-2s@marutamachi.example.org>",
            "<E1X58pT-0004bZ-Co@marutamachi.example.org>|sabatora@example.jp",
        ),
    ],
    "gmail-text.eml": [
        (
            HARD,
            "aougoueioaldljgoiuiorghladkgke@example.fr",
            "5.1.1",
            "<45B7FBD7-1218-4FCD-ACA1-4706F111E682@gmail.com>",
            "<001636e0a5ece778400491be7b6c@google.com>|aougoueioaldljgoiuiorghladkgke@example.fr",
        )
    ],
    # No code in the text: flufl.bounce's "permanent" decides.
    "exchange2003-ndr.eml": [
        (
            HARD,
            "kijitora@example.jp",
            "",
            "<00000000000.ffffffffffff.ff@example.net>",
            "<0000000000000000000000000000000000000000@mailgw0.example.net>|kijitora@example.jp",
        )
    ],
    "outlook-hotmail-dsn.eml": [
        (
            HARD,
            "kijitora@example.jp",
            "5.2.2",
            "<BLU436-SMTP6645ECA6E7FEFFE86D040BBA770@phx.gbl>",
            "<a0xtAEHLB0000d09e@BLU004-OMC3S13.hotmail.example.com>|kijitora@example.jp",
        )
    ],
    # No Message-ID of its own: the event is named by the bytes. "(#5.5.0)" beats the bare 550.
    "qmail.eml": [
        (
            HARD,
            "kijitora@example.ne.jp",
            "5.5.0",
            "<000000000.9999999999999.JavaMail.postmaster@mailhub>",
            sha("qmail.eml") + "|kijitora@example.ne.jp",
        )
    ],
    # "Status: 5.0.0 (permanent failure)": the comment is not the status.
    "amazon-ses-dsn.eml": [
        (
            HARD,
            "kijitora@example.jp",
            "5.0.0",
            "<00000132d6ca0cd4-ff6d8ee5-29a0-4501-a68a-3ff8695254bb-000000@email.amazonses.com>",
            "<00000132d6ca199d-48d84a95-efb8-11e0-a93e-ade7bf36e322-000000@email.amazonses.com>"
            "|kijitora@example.jp",
        )
    ],
    "arf-yahoo.eml": [
        (
            COMPLAINT,
            "this-local-part-does-not-exist-on-yahoo@yahoo.com",
            "",
            "<000000000000000000000000.smtp@example.com>",
            "<00000000000000.00000.smtp@mx8.example.com>|this-local-part-does-not-exist-on-yahoo@yahoo.com",
        )
    ],
    # A spam trap's report naming two recipients, neither the one the original was To.
    "arf-several-recipients.eml": [
        (COMPLAINT, None, "", "<EEEEEEEE-0000-0000-0000-EEEEEEEE2222@example.net>", "000000-FFFFFF-22-ARF|")
    ],
    # To: "undisclosed Terra recipient": nobody named, the Message-ID still ties it.
    "arf-terra-undisclosed.eml": [
        (
            COMPLAINT,
            None,
            "",
            "<f6fbba8a761ce682e1b00a323a21b372@example.net>",
            "<20141216120859.0222E605FA@poma02.lan.returnpath.net>|",
        )
    ],
}

NOT_BOUNCES = {
    "ordinary-mail.eml": NOT_A_BOUNCE,
    "autoreply-aol.eml": NOT_A_BOUNCE,  # Auto-Submitted: auto-replied
    "autoreply-out-of-office.eml": NOT_A_BOUNCE,  # no Auto-Submitted, "Out of Office:" subject
    "jmrp-hotmail-not-arf.eml": NOT_A_BOUNCE,  # a complaint, but a plain forward, not ARF
    "postfix-success.eml": f"{NOT_A_BOUNCE} (a DSN of successful delivery only)",
    "postfix-bounce-of-a-bounce.eml": f"{NOT_A_BOUNCE} (a bounce of a bounce)",
    "arf-dmarc-auth-failure.eml": f"{NOT_A_BOUNCE} (an ARF auth-failure report, not a complaint)",
}


def test_every_sample_is_checked_and_listed_in_sources() -> None:
    files = {p.name for p in SAMPLES.glob("*.eml")}
    assert files == set(EXPECTED) | set(NOT_BOUNCES)
    sources = (SAMPLES / "SOURCES.md").read_text()
    assert all(f"| {name} |" in sources for name in files)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_sample_gives_exactly_its_reports(name: str) -> None:
    parsed = parse(sample(name))
    got = [(r.kind, r.recipient, r.status, r.message_id, r.event_id) for r in parsed.reports]
    assert (got, parsed.problem) == (EXPECTED[name], "")
    for report in parsed.reports:
        assert report.source is Source.IMAP
        assert report.verp_token == TOKEN  # the caller's, copied
        assert report.diagnostic == " ".join(report.diagnostic.split())  # one line
        assert len(report.diagnostic) <= 500


@pytest.mark.parametrize("name", sorted(NOT_BOUNCES))
def test_what_is_not_a_bounce_or_complaint_gives_no_report_and_says_so(name: str) -> None:
    assert parse(sample(name)) == Parsed([], NOT_BOUNCES[name])


def test_the_diagnostic_is_the_reply_the_failure_quotes() -> None:
    postfix = parse(sample("postfix-user-unknown.eml")).reports[0]
    assert postfix.diagnostic == (
        "550 5.1.1 <gone@example.net>: Recipient address rejected: User unknown in virtual mailbox table"
    )
    kijitora, sabatora = parse(sample("exim-two-failed.eml")).reports
    assert kijitora.diagnostic == (
        "SMTP error from remote mail server after RCPT TO:<kijitora@example.jp>: "
        "host mx.example.jp [192.0.2.153]: 550 5.1.1 <kijitora@example.jp>... User Unknown"
    )
    assert "sabatora" in sabatora.diagnostic and "kijitora" not in sabatora.diagnostic
    assert parse(sample("arf-yahoo.eml")).reports[0].diagnostic == "abuse report (Yahoo!-Mail-Feedback/1.0)"


def test_occurred_at_is_the_reports_date_unless_that_is_later_than_its_arrival() -> None:
    report = parse(sample("exim-two-failed.eml")).reports[0]
    assert report.occurred_at == datetime(2014, 7, 10, 7, 31, 43, tzinfo=UTC)  # 16:31:43 +0900
    early = parse_mail(
        sample("exim-two-failed.eml"), Source.MX, received_at=datetime(2014, 7, 10, tzinfo=UTC)
    )
    assert early.reports[0].occurred_at == datetime(2014, 7, 10, tzinfo=UTC)
    no_date = parse(sample("arf-several-recipients.eml")).reports[0]
    assert no_date.occurred_at == RECEIVED


def test_the_same_report_twice_is_the_same_event_and_the_token_is_never_read_from_content() -> None:
    data = sample("postfix-user-unknown.eml")
    first = parse_mail(data, Source.MX, verp_token=None, received_at=RECEIVED)
    again = parse_mail(data, Source.MX, verp_token=None, received_at=RECEIVED)
    assert first == again
    # The bounce was sent to bounces+41-abcdefghijklmnop@example.org: that is the receiver's to say.
    assert first.reports[0].verp_token is None


# --- DSN fields missing: made from the Postfix sample ---------------------------------


def edited(name: str, *cuts: bytes) -> bytes:
    data = sample(name)
    for cut in cuts:
        assert cut in data, cut
        data = data.replace(cut, b"")
    return data


def test_a_dsn_without_status_is_reported_with_status_empty_and_the_kind_its_action_gives() -> None:
    parsed = parse(edited("postfix-user-unknown.eml", b"Status: 5.1.1\r\n"))
    assert [(r.kind, r.recipient, r.status) for r in parsed.reports] == [(HARD, "gone@example.net", "")]


def test_a_dsn_without_action_is_reported_by_its_status_class() -> None:
    parsed = parse(edited("postfix-delayed.eml", b"Action: delayed\r\n"))
    assert [(r.kind, r.status) for r in parsed.reports] == [(SOFT, "4.2.2")]


def test_a_dsn_with_neither_action_nor_status_is_a_problem_not_a_guess() -> None:
    parsed = parse(edited("postfix-user-unknown.eml", b"Action: failed\r\n", b"Status: 5.1.1\r\n"))
    assert parsed == Parsed([], "a DSN with neither Action nor Status for gone@example.net")


def test_a_dsn_with_no_recipient_is_a_problem() -> None:
    parsed = parse(
        edited(
            "postfix-user-unknown.eml",
            b"Final-Recipient: rfc822; gone@example.net\r\n",
            b"Original-Recipient: rfc822;gone@example.net\r\n",
        )
    )
    assert parsed == Parsed([], "a DSN with no recipient")


def test_original_recipient_is_preferred_to_final_recipient() -> None:
    # Forwarded on the way: the address mailer sent to is the original one.
    data = sample("postfix-user-unknown.eml").replace(
        b"Final-Recipient: rfc822; gone@example.net", b"Final-Recipient: rfc822; gone@elsewhere.example"
    )
    assert [r.recipient for r in parse(data).reports] == ["gone@example.net"]


# --- ARF without what ties it to someone: made from the Yahoo report --------------------


def arf_without_original() -> bytes:
    data = sample("arf-yahoo.eml")
    data = data.replace(b"Original-Rcpt-To: this-local-part-does-not-exist-on-yahoo@yahoo.com\n", b"")
    start = data.index(
        b"--_----------=F000000000000000000000\nContent-Disposition: inline\n"
        b"Content-Transfer-Encoding: 7bit\nContent-Type: message/rfc822"
    )
    return data[:start] + b"--_----------=F000000000000000000000--\n"


def test_an_arf_report_without_the_original_message_cannot_tell_whose() -> None:
    parsed = parse(arf_without_original(), token=None)
    assert parsed == Parsed([], "an ARF report without the original message: no way to tell whose")


def test_an_arf_report_without_the_original_is_used_when_it_came_to_a_verp_address() -> None:
    (report,) = parse(arf_without_original(), token=TOKEN).reports
    assert (report.kind, report.recipient, report.message_id, report.verp_token) == (
        COMPLAINT,
        None,
        None,
        TOKEN,
    )


def test_an_arf_report_naming_its_recipient_needs_no_original() -> None:
    data = sample("arf-yahoo.eml")
    start = data.index(
        b"--_----------=F000000000000000000000\nContent-Disposition: inline\n"
        b"Content-Transfer-Encoding: 7bit\nContent-Type: message/rfc822"
    )
    (report,) = parse(data[:start] + b"--_----------=F000000000000000000000--\n", token=None).reports
    assert (report.recipient, report.message_id) == (
        "this-local-part-does-not-exist-on-yahoo@yahoo.com",
        None,
    )


# --- flufl.bounce's weak spots, found by fuzzing: it raises, and nothing after it runs ----


def test_a_bounce_without_from_is_still_read_by_flufl() -> None:
    # flufl.bounce 6.0's Yale detector indexes getaddresses(From)[0]: IndexError without From.
    parsed = parse(edited("qmail.eml", b"From: MAILER-DAEMON@mx4.example.jp\n"))
    assert [(r.recipient, r.status) for r in parsed.reports] == [("kijitora@example.ne.jp", "5.5.0")]


def test_a_bounce_with_raw_utf8_in_a_header_is_still_read_by_flufl() -> None:
    # compat32 returns a Header for raw 8-bit bytes, and flufl.bounce calls .lower() on it.
    data = sample("qmail.eml").replace(
        b"From: MAILER-DAEMON@mx4.example.jp",
        "From: Système de messagerie <MAILER-DAEMON@mx4.example.jp>".encode(),
    )
    assert [r.recipient for r in parse(data).reports] == ["kijitora@example.ne.jp"]


# --- size and bad input ----------------------------------------------------------------


def test_a_message_over_10_mb_is_refused_unread() -> None:
    data = b"x" * (MAX_MESSAGE_BYTES + 1)
    assert parse(data) == Parsed([], "message larger than 10 MB (10.0 MB): not read")


def test_a_message_of_exactly_10_mb_is_read() -> None:
    data = sample("exim-two-failed.eml")
    line = b"x" * 76 + b"\n"  # long lines: 10 MB of short ones take the email parser seconds
    data = (data + line * (MAX_MESSAGE_BYTES // len(line)))[:MAX_MESSAGE_BYTES]
    assert len(data) == MAX_MESSAGE_BYTES
    assert [r.recipient for r in parse(data).reports] == ["kijitora@example.jp", "sabatora@example.jp"]


def test_flufl_bounce_reads_only_the_top_of_a_big_bounce(monkeypatch: pytest.MonkeyPatch) -> None:
    # It runs ~60 patterns over every line: 10 MB of short lines would take minutes.
    seen: list[int] = []

    def all_failures(msg: Message) -> tuple[frozenset[bytes], frozenset[bytes]]:
        seen.append(len(msg.as_bytes()))
        return flufl_bounce.all_failures(msg)

    monkeypatch.setattr(nonstandard, "all_failures", all_failures)
    data = sample("exim-two-failed.eml") + b"quoted\n" * 300_000
    assert [r.status for r in parse(data).reports] == ["5.1.1", "5.2.1"]
    assert seen and max(seen) <= nonstandard.FLUFL_BYTES + 100  # the cut, give or take the From fix


def test_a_5_mb_attachment_inside_a_dsn_changes_nothing() -> None:
    data = sample("postfix-user-unknown.eml")
    end = b"--96D6B20E4D6.1795688955/mx.mailer.test--"
    attachment = (
        b"--96D6B20E4D6.1795688955/mx.mailer.test\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + b"QUJD" * 19 * 66_000 + b"\r\n"
    )
    big = data.replace(end, attachment + end)
    assert len(big) > 5_000_000
    assert parse(big) == parse(data)


def test_garbage_never_raises() -> None:
    rng = random.Random(12)
    samples = [p.read_bytes() for p in sorted(SAMPLES.glob("*.eml"))]
    cases = [b"", b"\r\n", b"\xff" * 64, b"Content-Type: multipart/report; boundary=\r\n\r\n--\r\n"]
    cases += [rng.randbytes(rng.randrange(1, 2000)) for _ in range(100)]
    for data in samples:
        cases += [data[:cut] for cut in range(0, len(data), 97)]  # truncated anywhere
        noisy = bytearray(data)
        for _ in range(20):
            noisy[rng.randrange(len(noisy))] = rng.randrange(256)
        cases.append(bytes(noisy))
    for data in cases:
        parsed = parse(data)
        assert isinstance(parsed, Parsed)
        assert parsed.reports or parsed.problem
        assert "\n" not in parsed.problem


def test_mime_nested_thousands_deep_is_a_problem_line() -> None:
    data = b"Content-Type: multipart/mixed; boundary=b0\n\n" + b"".join(
        b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (i, i + 1) for i in range(3000)
    )
    assert parse(data) == Parsed([], "unreadable message (RecursionError)")


def test_a_dsn_naming_thousands_of_recipients_gives_the_first_hundred_and_says_so() -> None:
    block = (
        b"Final-Recipient: rfc822; gone@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        b"Diagnostic-Code: smtp; 550 5.1.1 <gone@example.net>: Recipient address\r\n"
        b"    rejected: User unknown in virtual mailbox table\r\n\r\n"
    )
    many = b"".join(block.replace(b"gone@", b"gone%d@" % i) for i in range(5000))
    first = b"Final-Recipient: rfc822; gone@example.net\r\n"
    data = sample("postfix-user-unknown.eml").replace(first, many + first)
    parsed = parse(data)
    assert len(parsed.reports) == dsn.MAX_REPORTS
    assert parsed.reports[0].recipient == "gone0@example.net"
    assert parsed.problem == "a DSN naming over 100 recipients"
