"""`mailer digest list` fits the terminal (the subject cut short with "…", in full with
--json) and shows slots in local time with their zone, as the dashboard and the digests
page do; `digest preview --open` without a browser says so and where the file is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import webbrowser
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import lxml.html
import pytest
from click.testing import Result

from mailer import digest as digests
from mailer.articles import ArticleStore
from mailer.config import Config, load_config
from mailer.db import Database
from mailer.scheduler import Slot
from mailer.subscribers import SubscriberStore
from tests.conftest import SEEDS, write_config
from tests.smtp_server import SmtpServer
from tests.web_server import WebServer

RunCli = Callable[..., Result]

# A scheduled slot (08:00 in Berlin) and a `digest send --now` at 02:17:23 UTC.
SCHEDULED = Slot("2026-11-30T08:00", datetime(2026, 11, 30, 7, 0, tzinfo=UTC))
MANUAL = digests.manual_slot(datetime(2026, 11, 26, 2, 17, 23, tzinfo=UTC))


@pytest.fixture
def config_path(tmp_path: Path, smtp_server: SmtpServer, database_url: str) -> Path:
    # Room for every seed article in one digest, so the manual slot after it is skipped.
    return write_config(tmp_path, smtp_server.port, database_url, digest={"max_articles": 500})


@pytest.fixture
def two_digests(db: Database, cfg: Config) -> int:
    """Issue #1 of the scheduled slot (every article, three readers queued), then a
    manual slot skipped for want of articles; the number of articles in #1."""
    ArticleStore(db, cfg).import_paths([str(SEEDS)])
    for address in ("ann@example.com", "bob@example.com", "cy@example.com"):
        SubscriberStore(db).add(address)
    first = digests.build(db, cfg, SCHEDULED)
    assert first is not None and first.issue_number == 1
    skipped = digests.build(db, cfg, MANUAL)
    assert skipped is not None and skipped.status == "skipped"
    return len(ArticleStore(db, cfg).list())


def test_digest_list_fits_80_columns_with_slots_in_local_time(config_path: Path, two_digests: int) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    result = subprocess.run(
        [sys.executable, "-m", "mailer", "--config", str(config_path), "digest", "list"],
        env={**env, "COLUMNS": "80"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert (result.returncode, result.stderr) == (0, "")
    assert [line.rstrip() for line in result.stdout.splitlines()] == [
        "id issue slot                 status  articles sent pending failed subject",
        " 2     - 2026-11-26 03:17 CET skipped        0    0       0      0 skipped: 0 u…",
        f" 1     1 2026-11-30 08:00 CET sending {two_digests:>8}    0       3      0 Tech Policy …",
        "2 digest(s)",
    ]
    assert max(len(line) for line in result.stdout.splitlines()) <= 80


def test_digest_list_json_carries_the_subject_in_full_and_the_slot_key_as_stored(
    run_cli: RunCli, cfg: Config, two_digests: int
) -> None:
    result = run_cli("digest", "list", "--json")

    assert result.exit_code == 0, result.output
    skipped, first = json.loads(result.stdout)
    assert (first["slot"], first["slot_at"], first["manual"]) == (
        "2026-11-30T08:00",
        "2026-11-30T07:00:00+00:00",
        False,
    )
    assert (skipped["slot"], skipped["slot_at"], skipped["manual"]) == (
        "manual:2026-11-26T02:17:23",
        "2026-11-26T02:17:23+00:00",
        True,
    )
    assert first["subject"].startswith(f"{cfg.digest.name} #1: ") and len(first["subject"]) > 60
    assert (first["articles"], first["counts"]) == (two_digests, {"queued": 3})


def test_the_dashboard_and_the_digests_page_show_slots_in_local_time(
    db: Database, config_path: Path, two_digests: int
) -> None:
    server = WebServer(db, load_config(str(config_path))).start()
    try:
        pages = {path: lxml.html.document_fromstring(server.get(path).body) for path in ("/", "/digests")}
    finally:
        server.close()

    for path, doc in pages.items():
        cells = [tr.xpath("./td")[1] for tr in doc.cssselect("table tr") if len(tr.xpath("./td")) == 10]
        shown = [(" ".join(td.text_content().split()), td.get("title")) for td in cells]
        assert shown == [
            ("Thu 26 Nov 2026 03:17 CET (manual)", "slot manual:2026-11-26T02:17:23"),
            ("Mon 30 Nov 2026 08:00 CET", "slot 2026-11-30T08:00"),
        ], path


@pytest.fixture
def no_browser_env(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """No $BROWSER; the URLs webbrowser.open was asked for, and it finds no browser."""
    opened: list[str] = []

    def refuse(url: str, *args: object, **kwargs: object) -> bool:
        opened.append(url)
        return False

    monkeypatch.delenv("BROWSER", raising=False)
    monkeypatch.setattr(webbrowser, "open", refuse)
    return opened


def test_preview_open_without_a_browser_says_so_and_where_the_file_is(
    run_cli: RunCli, seeded: Database, cfg: Config, no_browser_env: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPLAY", ":0")
    preview = digests.preview(seeded, cfg)
    assert preview is not None
    path = (cfg.var_dir / "preview.html").resolve()

    result = run_cli("digest", "preview", "--open")

    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"{preview.subject} ({preview.article_count} articles) written to {cfg.var_dir / 'preview.html'}\n"
    )
    assert result.stderr == f"could not open a browser (none found); the preview is in {path}\n"
    assert no_browser_env == [path.as_uri()]
    assert path.read_text(encoding="utf-8") == preview.html


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="DISPLAY is how Linux has a screen")
def test_preview_open_without_a_display_tries_no_browser(
    run_cli: RunCli, seeded: Database, cfg: Config, no_browser_env: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    path = (cfg.var_dir / "preview.txt").resolve()

    result = run_cli("digest", "preview", "--open", "--text")

    assert result.exit_code == 0, result.output
    assert result.stderr == f"could not open a browser (no DISPLAY); the preview is in {path}\n"
    assert no_browser_env == []
    assert path.is_file()
