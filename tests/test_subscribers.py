"""Subscribers: the model, `mailer subscribers add/import/list/remove/forget`, and what
unsubscribing or forgetting someone does to the deliveries of a digest being sent."""

from __future__ import annotations

import json
import re
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from mailer import digest as digests
from mailer.articles import ArticleStore
from mailer.config import Config
from mailer.db import Database
from mailer.models import Delivery, Digest, Subscriber
from mailer.subscribers import SubscriberStore
from tests.conftest import SEEDS

RunCli = Callable[..., Result]


def _get(db: Database, email: str) -> Subscriber | None:
    """The stored row for an address (exact stored spelling), or None."""
    with db.session() as s:
        return s.scalar(select(Subscriber).where(Subscriber.email == email))


def _emails(db: Database) -> list[str]:
    return [sub.email for sub in SubscriberStore(db).list()]


def _csv(folder: Path, data: str | bytes, name: str = "people.csv") -> Path:
    path = folder / name
    if isinstance(data, str):
        path.write_bytes(data.encode("utf-8"))
    else:
        path.write_bytes(data)
    return path


def _error_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def _deliveries(db: Database, subscriber_id: int) -> list[tuple[int, str]]:
    """(digest_id, status) of every row in the deliveries table for one subscriber id."""
    with db.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT digest_id, status FROM deliveries WHERE subscriber_id = :id ORDER BY id"),
            {"id": subscriber_id},
        )
        return [(r[0], r[1]) for r in rows]


def _build_digest(db: Database, cfg: Config) -> Digest:
    """A digest in progress, through the real code path: seeds imported, audience frozen."""
    ArticleStore(db, cfg).import_paths([str(SEEDS)])
    digest = digests.build(db, cfg, digests.manual_slot(datetime.now(UTC)))
    assert digest is not None and digest.status == "sending"
    return digest


# ---------------------------------------------------------------- the model and `add`


def test_add_stores_name_active_status_times_nonce_and_zero_bounces(run_cli: RunCli, db: Database) -> None:
    before = datetime.now(UTC)
    result = run_cli("subscribers", "add", "ann@example.com", "--name", "Ann Lee")
    assert result.exit_code == 0, result.output
    assert "added ann@example.com" in result.stdout
    run_cli("subscribers", "add", "bob@example.com")

    ann = _get(db, "ann@example.com")
    bob = _get(db, "bob@example.com")
    assert ann is not None and bob is not None
    assert (ann.name, ann.status, ann.bounce_count) == ("Ann Lee", "active", 0)
    assert bob.name == ""
    assert before <= ann.created_at <= datetime.now(UTC)
    assert before <= ann.status_changed_at <= datetime.now(UTC)
    assert re.fullmatch(r"[0-9a-f]{32}", ann.token_nonce)
    assert ann.token_nonce != bob.token_nonce


def test_adding_a_differently_cased_address_is_a_duplicate_that_changes_nothing(
    run_cli: RunCli, db: Database
) -> None:
    run_cli("subscribers", "add", "foo@example.com", "--name", "Foo")
    run_cli("subscribers", "remove", "foo@example.com")
    before = _get(db, "foo@example.com")
    assert before is not None and before.status == "unsubscribed"

    result = run_cli("subscribers", "add", "Foo@Example.com", "--name", "Someone Else")

    assert result.exit_code == 0, result.output
    assert "already on the list" in result.stdout
    assert _emails(db) == ["foo@example.com"]
    after = _get(db, "foo@example.com")
    assert after is not None
    assert (after.name, after.status, after.status_changed_at) == (
        "Foo",
        "unsubscribed",
        before.status_changed_at,
    )


def test_the_database_refuses_a_second_row_for_the_same_address_in_another_case(db: Database) -> None:
    SubscriberStore(db).add("foo@example.com")
    with pytest.raises(IntegrityError), db.session() as s:
        s.add(Subscriber(email="FOO@EXAMPLE.COM", name="", status="active", token_nonce="0" * 32))
    assert _emails(db) == ["foo@example.com"]


def test_add_checks_syntax_only_and_accepts_an_unresolvable_domain_without_network(
    run_cli: RunCli, db: Database
) -> None:
    # Every socket operation of this thread while the command runs is recorded: a DNS
    # look-up (getaddrinfo, or dnspython's UDP socket) would show up here.
    seen: list[str] = []
    watching = threading.get_ident()
    active = [True]

    def hook(event: str, _args: Any) -> None:
        if active[0] and event.startswith("socket.") and threading.get_ident() == watching:
            seen.append(event)

    sys.addaudithook(hook)
    try:
        result = run_cli("subscribers", "add", "user@example-nonexistent-domain-12345.com")
    finally:
        active[0] = False

    assert result.exit_code == 0, result.output
    assert _emails(db) == ["user@example-nonexistent-domain-12345.com"]
    assert seen == []


def test_add_with_a_bad_address_prints_one_line_naming_it_and_exits_1(run_cli: RunCli, db: Database) -> None:
    result = run_cli("subscribers", "add", "not-an-address")

    assert result.exit_code == 1
    lines = _error_lines(result)
    assert len(lines) == 1
    assert "not-an-address" in lines[0]
    assert _emails(db) == []


def test_add_cleans_line_breaks_and_control_characters_out_of_the_name(run_cli: RunCli, db: Database) -> None:
    result = run_cli("subscribers", "add", "eve@example.com", "--name", "Eve\r\nBcc: victim@example.com\x07")

    assert result.exit_code == 0, result.output
    eve = _get(db, "eve@example.com")
    assert eve is not None
    assert eve.name == "Eve Bcc: victim@example.com"


# ---------------------------------------------------------------- import


def test_import_adds_every_row_of_a_good_csv(run_cli: RunCli, db: Database, tmp_path: Path) -> None:
    path = _csv(tmp_path, "email,name\nann@example.com,Ann\nbob@example.com,Bob\n")

    result = run_cli("subscribers", "import", str(path))

    assert result.exit_code == 0, result.output
    assert "2 added" in result.stdout
    ann = _get(db, "ann@example.com")
    assert ann is not None and (ann.name, ann.status) == ("Ann", "active")
    assert _emails(db) == ["ann@example.com", "bob@example.com"]


BAD_ROWS = (
    "email,name\n"
    "ann@example.com,Ann\n"  # line 2
    "not-an-email,Broken\n"  # line 3
    "bob@example.com,Bob\n"  # line 4
    "carol@,Carol\n"  # line 5
    "ANN@example.com,Ann again\n"  # line 6: a duplicate inside the file
)


def test_import_with_bad_rows_lists_each_by_line_and_reason_and_imports_nothing(
    run_cli: RunCli, db: Database, tmp_path: Path
) -> None:
    path = _csv(tmp_path, BAD_ROWS)

    result = run_cli("subscribers", "import", str(path))

    assert result.exit_code == 1
    errors = result.stderr
    assert re.search(r"people\.csv:3: invalid email 'not-an-email': .+", errors)
    assert re.search(r"people\.csv:5: invalid email 'carol@': .+", errors)
    assert re.search(r"people\.csv:6: ann@example\.com appears twice in the file", errors, re.IGNORECASE)
    assert not re.search(r"people\.csv:[24]:", errors)
    assert "nothing imported" in errors
    assert _emails(db) == []


def test_import_skip_invalid_imports_the_good_rows_and_reports_the_bad_ones(
    run_cli: RunCli, db: Database, tmp_path: Path
) -> None:
    path = _csv(tmp_path, BAD_ROWS)

    result = run_cli("subscribers", "import", str(path), "--skip-invalid")

    assert result.exit_code == 0, result.output
    assert "people.csv:3:" in result.stderr and "people.csv:5:" in result.stderr
    assert "people.csv:6:" in result.stderr
    assert "2 added" in result.stdout and "3 bad row(s) skipped" in result.stdout
    assert _emails(db) == ["ann@example.com", "bob@example.com"]
    ann = _get(db, "ann@example.com")
    assert ann is not None and ann.name == "Ann"  # the first of the two rows


def test_import_reads_a_csv_with_a_bom_and_crlf_line_ends(
    run_cli: RunCli, db: Database, tmp_path: Path
) -> None:
    path = _csv(tmp_path, b"\xef\xbb\xbfEmail,Name\r\nann@example.com,Ann\r\nbob@example.com,Bob Ray\r\n")

    result = run_cli("subscribers", "import", str(path))

    assert result.exit_code == 0, result.output
    assert _emails(db) == ["ann@example.com", "bob@example.com"]
    bob = _get(db, "bob@example.com")
    assert bob is not None and bob.name == "Bob Ray"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b"email,name\njose@example.com,Jos\xe9\n", "not UTF-8", id="not-utf8"),
        pytest.param(b"mail,name\njose@example.com,Jose\n", "no email column", id="no-email-column"),
        pytest.param(b"", "empty file", id="empty"),
    ],
)
def test_import_of_an_unusable_csv_is_one_error_line_and_exit_1(
    run_cli: RunCli, db: Database, tmp_path: Path, data: bytes, reason: str
) -> None:
    path = _csv(tmp_path, data)

    result = run_cli("subscribers", "import", str(path))

    assert result.exit_code == 1
    lines = _error_lines(result)
    assert len(lines) == 1
    assert "people.csv" in lines[0] and reason in lines[0]
    assert "Traceback" not in result.output
    assert _emails(db) == []


def test_import_of_a_missing_file_is_one_error_line_and_exit_1(run_cli: RunCli, tmp_path: Path) -> None:
    result = run_cli("subscribers", "import", str(tmp_path / "nowhere.csv"))

    assert result.exit_code == 1
    lines = _error_lines(result)
    assert len(lines) == 1 and "nowhere.csv" in lines[0]


def test_import_cleans_line_breaks_and_control_characters_out_of_names(
    run_cli: RunCli, db: Database, tmp_path: Path
) -> None:
    # A quoted CSV field may hold CR/LF: the name would otherwise inject a header.
    path = _csv(tmp_path, 'email,name\r\neve@example.com,"Eve\r\nBcc: victim@example.com\x00\x1b"\r\n')

    result = run_cli("subscribers", "import", str(path))

    assert result.exit_code == 0, result.output
    eve = _get(db, "eve@example.com")
    assert eve is not None
    assert eve.name == "Eve Bcc: victim@example.com"


# ---------------------------------------------------------------- list


def test_list_filters_by_status_and_prints_json(run_cli: RunCli, tmp_path: Path) -> None:
    for address in ("ann@example.com", "bob@example.com", "cat@example.com"):
        run_cli("subscribers", "add", address, "--name", address[:3].title())
    run_cli("subscribers", "remove", "bob@example.com")

    everyone = json.loads(run_cli("subscribers", "list", "--json").stdout)
    gone = json.loads(run_cli("subscribers", "list", "--status", "unsubscribed", "--json").stdout)
    active_table = run_cli("subscribers", "list", "--status", "active")

    assert [s["email"] for s in everyone] == ["ann@example.com", "bob@example.com", "cat@example.com"]
    assert [(s["email"], s["name"], s["status"]) for s in gone] == [
        ("bob@example.com", "Bob", "unsubscribed")
    ]
    assert {"id", "created_at", "status_changed_at", "bounce_count"} <= set(gone[0])
    assert active_table.exit_code == 0
    assert "ann@example.com" in active_table.stdout and "cat@example.com" in active_table.stdout
    assert "bob@example.com" not in active_table.stdout
    assert "2 subscriber(s)" in active_table.stdout


def test_list_rejects_an_unknown_status(run_cli: RunCli) -> None:
    result = run_cli("subscribers", "list", "--status", "gone")

    assert result.exit_code == 2
    assert "gone" in result.stderr


# ---------------------------------------------------------------- remove and forget


def test_remove_keeps_the_record_and_a_later_import_does_not_resubscribe(
    run_cli: RunCli, db: Database, tmp_path: Path
) -> None:
    run_cli("subscribers", "add", "ann@example.com", "--name", "Ann")
    added = _get(db, "ann@example.com")
    assert added is not None

    result = run_cli("subscribers", "remove", "Ann@Example.com")

    assert result.exit_code == 0, result.output
    removed = _get(db, "ann@example.com")
    assert removed is not None and removed.status == "unsubscribed"
    assert removed.status_changed_at > added.status_changed_at

    path = _csv(tmp_path, "email,name\nANN@example.com,Ann\nbob@example.com,Bob\n")
    imported = run_cli("subscribers", "import", str(path))

    assert imported.exit_code == 0, imported.output
    assert "1 added, 1 already on the list" in imported.stdout
    again = _get(db, "ann@example.com")
    assert again is not None and again.status == "unsubscribed"
    assert _emails(db) == ["ann@example.com", "bob@example.com"]


def test_remove_finds_an_address_typed_with_its_unicode_domain(run_cli: RunCli, db: Database) -> None:
    run_cli("subscribers", "add", "ann@bücher.de")
    stored = _get(db, "ann@xn--bcher-kva.de")
    assert stored is not None

    result = run_cli("subscribers", "remove", "ann@bücher.de")

    assert result.exit_code == 0, result.output
    after = _get(db, "ann@xn--bcher-kva.de")
    assert after is not None and after.status == "unsubscribed"


@pytest.mark.parametrize("action", ["remove", "forget"])
def test_remove_or_forget_of_an_unknown_address_is_one_error_line_and_exit_1(
    run_cli: RunCli, db: Database, action: str
) -> None:
    run_cli("subscribers", "add", "ann@example.com")

    result = run_cli("subscribers", action, "nobody@example.com")

    assert result.exit_code == 1
    lines = _error_lines(result)
    assert len(lines) == 1 and "nobody@example.com" in lines[0]
    still = _get(db, "ann@example.com")
    assert still is not None and still.status == "active"


def test_remove_skips_the_queued_deliveries_of_a_digest_being_sent(
    run_cli: RunCli, db: Database, cfg: Config
) -> None:
    store = SubscriberStore(db)
    ann, _ = store.add("ann@example.com", "Ann")
    bob, _ = store.add("bob@example.com", "Bob")
    digest = _build_digest(db, cfg)
    assert _deliveries(db, ann.id) == [(digest.id, "queued")]

    result = run_cli("subscribers", "remove", "ann@example.com")

    assert result.exit_code == 0, result.output
    assert _deliveries(db, ann.id) == [(digest.id, "skipped")]
    assert _deliveries(db, bob.id) == [(digest.id, "queued")]
    with db.session() as s:
        assert s.get(Digest, digest.id).status == "sending"  # type: ignore[union-attr]


def test_forget_erases_the_person_and_their_delivery_rows(run_cli: RunCli, db: Database, cfg: Config) -> None:
    store = SubscriberStore(db)
    ann, _ = store.add("ann@example.com", "Ann")
    bob, _ = store.add("bob@example.com", "Bob")
    digest = _build_digest(db, cfg)
    assert _deliveries(db, ann.id) == [(digest.id, "queued")]

    result = run_cli("subscribers", "forget", "ANN@example.com", "--yes")

    assert result.exit_code == 0, result.output
    assert _get(db, "ann@example.com") is None
    assert _deliveries(db, ann.id) == []
    assert _deliveries(db, bob.id) == [(digest.id, "queued")]
    with db.session() as s:
        remaining = s.scalars(select(Delivery.subscriber_id).where(Delivery.digest_id == digest.id)).all()
    assert remaining == [bob.id]
