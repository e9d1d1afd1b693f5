"""Lists of people in and out: `mailer subscribers import` of other services' exports, of
semicolon- and tab-separated files and of plain address lists, and `subscribers export`
(read back by import with the same people, statuses and dates)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from click.testing import Result
from sqlalchemy import select, update

from mailer.db import Database
from mailer.models import Subscriber

RunCli = Callable[..., Result]


def _people(db: Database) -> list[tuple[str, str, str]]:
    with db.session() as s:
        return [(p.email, p.name, p.status) for p in s.scalars(select(Subscriber).order_by(Subscriber.id))]


def _file(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_bytes(text.encode("utf-8"))
    return path


# Each service's export as it comes (columns trimmed to a few of the many they have).
MAILCHIMP = (
    '"Email Address","First Name","Last Name",Address,"Phone Number",MEMBER_RATING,OPTIN_TIME\n'
    'ann@example.com,Ann,Lee,"1 Main St, Springfield",,2,"2024-01-02 10:00:00"\n'
    "bob@example.com,Bob,,,,2,\n"
    "cy@example.com,,,,,1,\n"
)
LISTMONK = (
    "uuid\temail\tname\tattributes\tstatus\tcreated_at\tupdated_at\n"
    'a1\tdee@example.com\tDee Park\t"{""city"": ""Oslo"", ""tags"": [1, 2]}"\tenabled\t'
    "2023-05-06 07:08:09.123456+00:00\t2023-05-06 07:08:09.123456+00:00\n"
    "a2\teve@example.com\tEve\t{}\tblocklisted\t2023-05-06 07:08:09+00:00\t2023-05-06 07:08:09+00:00\n"
)
SUBSTACK = (
    "Email,Active Subscription,Expiry,Plan,Email Disabled,Created At\n"
    "fay@example.com,false,,free,false,4/5/2022\n"
)
BUTTONDOWN = (
    "email,notes,metadata,tags,subscriber_type,creation_date\n"
    'gus@example.com,"met at a conference, 2023","{""first"": ""Gus""}",friends,regular,2021-01-01\n'
)


def test_the_exports_of_mailchimp_listmonk_substack_and_buttondown_import(
    run_cli: RunCli, db: Database, tmp_path: Path
) -> None:
    results = [
        run_cli("subscribers", "import", str(_file(tmp_path, name, text)))
        for name, text in [
            ("mailchimp.csv", MAILCHIMP),
            ("listmonk.tsv", LISTMONK),
            ("substack.csv", SUBSTACK),
            ("buttondown.csv", BUTTONDOWN),
        ]
    ]

    assert [(r.exit_code, r.stdout, r.stderr) for r in results] == [
        (0, "3 added, 0 already on the list\n", ""),
        (0, "2 added, 0 already on the list\n", ""),
        (0, "1 added, 0 already on the list\n", ""),
        (0, "1 added, 0 already on the list\n", ""),
    ]
    assert _people(db) == [
        ("ann@example.com", "Ann Lee", "active"),  # first and last name joined
        ("bob@example.com", "Bob", "active"),
        ("cy@example.com", "", "active"),
        ("dee@example.com", "Dee Park", "active"),
        ("eve@example.com", "Eve", "unsubscribed"),  # blocklisted in listmonk: stays gone
        ("fay@example.com", "", "active"),
        ("gus@example.com", "", "active"),
    ]


def test_semicolon_separated_and_plain_lists_import(run_cli: RunCli, db: Database, tmp_path: Path) -> None:
    semicolons = _file(
        tmp_path, "excel.csv", "E-Mail;Name\r\nann@example.com;Lee, Ann\r\nbob@example.com;Bob\r\n"
    )
    plain = _file(tmp_path, "list.txt", "cy@example.com\n\ndee@example.com\nann@example.com\n")

    first = run_cli("subscribers", "import", str(semicolons))
    second = run_cli("subscribers", "import", str(plain))

    assert (first.exit_code, first.stdout) == (0, "2 added, 0 already on the list\n")
    assert (second.exit_code, second.stdout) == (0, "2 added, 1 already on the list\n")
    assert _people(db) == [
        ("ann@example.com", "Lee, Ann", "active"),
        ("bob@example.com", "Bob", "active"),
        ("cy@example.com", "", "active"),
        ("dee@example.com", "", "active"),
    ]


def test_an_empty_email_cell_is_a_missing_email_naming_file_line_and_column(
    run_cli: RunCli, db: Database, tmp_path: Path
) -> None:
    path = _file(
        tmp_path,
        "export.csv",
        '"Email Address","First Name","Last Name"\nann@example.com,Ann,Lee\n,Bob,Ray\n"  ",Cy,\n',
    )

    result = run_cli("subscribers", "import", str(path))

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{path}:3: missing email (column 'Email Address')",
        f"{path}:4: missing email (column 'Email Address')",
        f"error: {path}: 2 bad row(s); nothing imported (fix them, or use --skip-invalid)",
    ]
    assert _people(db) == []


def test_an_unknown_status_is_a_bad_row_naming_its_column(
    run_cli: RunCli, db: Database, tmp_path: Path
) -> None:
    path = _file(tmp_path, "people.csv", "email,Status\nann@example.com,active\nbob@example.com,paused\n")

    result = run_cli("subscribers", "import", str(path))

    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        f"{path}:3: unknown status 'paused' (column 'Status') (one of: active, subscribed, enabled,"
        " unsubscribed, disabled, blocklisted, bounced, cleaned, complained)"
    )
    assert _people(db) == []


def test_export_csv_keeps_status_and_dates_and_imports_back_into_an_empty_database(
    run_cli: RunCli, db: Database, tmp_path: Path
) -> None:
    run_cli("subscribers", "add", "ann@example.com", "--name", "Ann Lee, Jr.")
    run_cli("subscribers", "add", "bob@example.com")
    run_cli("subscribers", "remove", "bob@example.com")
    created = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    changed = datetime(2025, 6, 7, 8, 9, 10, tzinfo=UTC)
    with db.session() as s:
        s.execute(update(Subscriber).values(created_at=created, status_changed_at=changed))

    result = run_cli("subscribers", "export")

    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "email,name,status,created_at,status_changed_at,bounce_count,"
        "signup_at,signup_ip,confirmed_at,confirm_ip,themes\n"
        'ann@example.com,"Ann Lee, Jr.",active,2025-01-02T03:04:05+00:00,2025-06-07T08:09:10+00:00,0,,,,,\n'
        "bob@example.com,,unsubscribed,2025-01-02T03:04:05+00:00,2025-06-07T08:09:10+00:00,0,,,,,\n"
    )
    with db.session() as s:
        s.query(Subscriber).delete()
    back = run_cli("subscribers", "import", str(_file(tmp_path, "export.csv", result.stdout)))
    assert (back.exit_code, back.stdout) == (0, "2 added, 0 already on the list\n")
    assert _people(db) == [
        ("ann@example.com", "Ann Lee, Jr.", "active"),
        ("bob@example.com", "", "unsubscribed"),
    ]
    with db.session() as s:
        assert {(p.created_at, p.status_changed_at) for p in s.scalars(select(Subscriber))} == {
            (created, changed)
        }


def test_export_json_of_one_status_to_a_file(run_cli: RunCli, db: Database, tmp_path: Path) -> None:
    run_cli("subscribers", "add", "ann@example.com", "--name", "Ann")
    run_cli("subscribers", "add", "bob@example.com")
    run_cli("subscribers", "remove", "bob@example.com")
    target = tmp_path / "gone.json"

    result = run_cli(
        "subscribers", "export", "--status", "unsubscribed", "--format", "json", "--out", str(target)
    )

    assert (result.exit_code, result.stdout) == (0, f"1 subscriber(s) written to {target}\n")
    (bob,) = json.loads(target.read_text(encoding="utf-8"))
    assert (bob["email"], bob["name"], bob["status"], bob["bounce_count"]) == (
        "bob@example.com",
        "",
        "unsubscribed",
        0,
    )
    assert datetime.fromisoformat(bob["status_changed_at"]) >= datetime.fromisoformat(bob["created_at"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".gone")] == []  # no temp file left
    assert target.stat().st_mode & 0o777 == 0o600  # people's addresses: for the owner only


def test_export_to_a_folder_that_does_not_exist_is_one_line_and_exit_1(
    run_cli: RunCli, tmp_path: Path
) -> None:
    target = tmp_path / "nowhere" / "people.csv"

    result = run_cli("subscribers", "export", "--out", str(target))

    assert result.exit_code == 1
    assert result.stderr == f"error: {target}: cannot write: No such file or directory\n"
