"""What `mailer articles import` will read: regular files only, never more than the size
cap, nothing a folder's symlinks point to outside it, and each file once."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from mailer import article_files
from mailer.articles import ArticleStore
from mailer.db import Database
from tests.conftest import ROOT
from tests.test_articles import export, stored, write

# The old code read /dev/zero until memory ran out: a ceiling keeps a regression from taking
# the machine down with it (it fails the test with a MemoryError instead).
ADDRESS_SPACE = 2 * 1024**3
LEAVES = "symlink leaves the folder"


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def mailer(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`mailer --config CONFIG ARGS` in its own process, with a memory ceiling and a timeout."""
    return subprocess.run(
        [sys.executable, "-m", "mailer", "--config", str(config), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_limited,
    )


def error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    return proc.stderr.splitlines()


# ---------------------------------------------------------------- regular files only


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_dev_zero_is_refused_as_not_a_regular_file_without_being_read(
    config_path: Path, db: Database
) -> None:
    proc = mailer(config_path, "articles", "import", "/dev/zero")

    assert error_lines(proc) == ["/dev/zero: error: not a regular file (a character device)"]
    assert stored(db) == []


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_named_or_in_a_folder_is_refused_at_once_instead_of_hanging(
    config_path: Path, db: Database, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    good = write(folder / "good.txt", export("Good story"))
    os.mkfifo(folder / "pipe.txt")
    named = tmp_path / "named.txt"
    os.mkfifo(named)

    proc = mailer(config_path, "articles", "import", str(folder), str(named))

    assert sorted(error_lines(proc)) == [
        f"{folder / 'pipe.txt'}: error: not a regular file (a FIFO)",
        f"{named}: error: not a regular file (a FIFO)",
    ]
    assert f"{good}: 1 added" in proc.stdout
    assert [a.title for a in stored(db)] == ["Good story"]


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_the_read_is_capped_even_when_the_file_holds_more_than_its_size_says(
    store: ArticleStore, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file that grows after it was measured cannot be timed reliably; a /proc file is the
    # same case for certain: stat says 0 bytes, reading it yields more than the cap.
    proc_file = Path("/proc/self/status")
    assert proc_file.stat().st_size == 0 and len(proc_file.read_bytes()) > 200
    monkeypatch.setattr(article_files, "MAX_FILE_BYTES", 200)

    (report,) = store.import_paths([str(proc_file)])

    assert report.error == "file is larger than 200 bytes"
    assert stored(db) == []


# ---------------------------------------------------------------- symlinks in a folder


def test_a_folder_import_skips_symlinks_that_leave_the_folder_and_says_so(
    run_cli, db: Database, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    write(folder / "a.txt", export("Story in the folder"))
    secret = write(tmp_path / "private" / "secret.txt", export("Private notes"))
    (folder / "notes.txt").symlink_to(secret)
    (folder / "private").symlink_to(tmp_path / "private", target_is_directory=True)

    text = run_cli("articles", "import", str(folder))
    as_json = run_cli("articles", "import", "--json", str(folder))

    assert text.exit_code == 0, text.output
    for link in ("notes.txt", "private"):
        assert f"{folder / link}: 0 added, 0 duplicate(s)\n  skipped: {LEAVES}" in text.stdout
    reports = {Path(r["path"]).name: r for r in json.loads(as_json.stdout)}
    assert reports["notes.txt"]["skipped"] == [f"{LEAVES} (to {secret})"]
    assert reports["private"]["skipped"] == [f"{LEAVES} (to {tmp_path / 'private'})"]
    assert [a.title for a in stored(db)] == ["Story in the folder"]


def test_a_link_inside_the_folder_is_followed_but_each_file_is_read_once(
    store: ArticleStore, db: Database, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    real = write(folder / "a.txt", export("Story A"))
    write(folder / "drafts" / "b.md", export("Story B"))
    (folder / "0-alias.txt").symlink_to("a.txt")  # sorts first, yet a.txt is read under its own name
    (folder / "b.txt").symlink_to(Path("drafts", "b.md"))
    (folder / "again").symlink_to("drafts", target_is_directory=True)

    reports = {Path(r.path).name: r for r in store.import_paths([str(folder)])}

    assert reports["a.txt"].added == 1
    assert reports["0-alias.txt"].skipped == [f"same file as {real}"]
    assert reports["b.txt"].added == 1
    assert "again" not in reports  # inside the folder: its files are walked under their own names
    assert sum(r.duplicates for r in reports.values()) == 0
    assert sorted(a.title for a in stored(db)) == ["Story A", "Story B"]


@pytest.fixture
def store(db: Database, cfg) -> ArticleStore:
    return ArticleStore(db, cfg)
