"""Database failures are one line, `error: database <where>: <reason>`, exit status 1: a
database that cannot be opened says which file and why, and the driver's own exceptions
(raw DB-API connections, as the delivery workers use) read the same as SQLAlchemy's."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from mailer.cli import cli
from tests.conftest import ROOT, write_config

# A database file that cannot be opened or written (read-only disk, permissions, a full
# disk, another process's write lock): what is named is the SQLite file and its folder.
pytestmark = pytest.mark.sqlite_only(reason="SQLite's database file and its folder")

RUN: dict[str, Any] = {"cwd": ROOT, "capture_output": True, "text": True, "timeout": 60}


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def config_for(folder: Path, db_file: Path) -> Path:
    return write_config(folder, database={"url": f"sqlite:///{db_file}"})


def _can_mount() -> bool:
    """A private mount namespace (root, or CAP_SYS_ADMIN) where a tmpfs can be mounted."""
    if shutil.which("unshare") is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    with tempfile.TemporaryDirectory() as t:
        probe = subprocess.run(["unshare", "-m", "mount", "-t", "tmpfs", "tmpfs", t], capture_output=True)
    return probe.returncode == 0


needs_mount = pytest.mark.skipif(not _can_mount(), reason="needs root and unshare to mount a private tmpfs")


def in_private_mount(folder: Path, then: str) -> subprocess.CompletedProcess[str]:
    """The shell commands `then` in a private mount namespace where `folder` is a fresh tmpfs
    of 1 MB: nothing is mounted outside that process."""
    script = f"mount -t tmpfs -o size=1m tmpfs {shlex.quote(str(folder))} && {then}"
    return subprocess.run(["unshare", "-m", "sh", "-c", script], **RUN)


# ---------------------------------------------------------------- a database that cannot be opened


@needs_mount
@pytest.mark.parametrize(
    ("setup", "db_name"),
    [
        pytest.param("mount -o remount,ro {disk}", "mailer.db", id="new-database"),
        pytest.param("{init} && mount -o remount,ro {disk}", "mailer.db", id="existing-database"),
        pytest.param("mount -o remount,ro {disk}", "sub/mailer.db", id="missing-folder"),
    ],
)
def test_a_read_only_disk_is_named_with_the_database_file_and_the_cause(
    tmp_path: Path, setup: str, db_name: str
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    db_file = disk / db_name
    config = config_for(tmp_path, db_file)
    mailer = shlex.join([sys.executable, "-m", "mailer", "--config", str(config)])
    setup = setup.format(disk=shlex.quote(str(disk)), init=f"{mailer} init")

    proc = in_private_mount(disk, f"{setup} && exec {mailer} articles list")

    line = one_line(proc)
    assert line.startswith(f"error: database {db_file}: "), line
    assert f"read-only file system at {disk}" in line
    if db_name.startswith("sub/"):
        assert f"no such folder {disk / 'sub'}, and it cannot be created" in line


def test_a_folder_without_write_permission_is_named(tmp_path: Path) -> None:
    # As root nothing is ever denied, so the command drops to nobody once it has imported
    # what it needs (the interpreter's own files may be out of nobody's reach): the command's
    # module (`mailer.cli` imports it only when it runs) and what loading the config and
    # opening the database import on their way.
    with tempfile.TemporaryDirectory() as t:
        folder = Path(t)
        folder.chmod(0o755)
        locked = folder / "locked"
        locked.mkdir(mode=0o555)
        config = config_for(folder, locked / "mailer.db")
        config.chmod(0o644)
        drop = "os.setegid(65534); os.seteuid(65534)" if os.geteuid() == 0 else "pass"
        needs = "sqlite3, mailer.cli.articles, mailer.scheduler, email_validator, sqlalchemy.dialects.sqlite"
        code = f"import os, sys, {needs}; from mailer.cli import main; {drop}; sys.argv[0] = 'mailer'; main()"
        proc = subprocess.run(
            [sys.executable, "-c", code, "--config", str(config), "articles", "list"], **RUN
        )

    assert one_line(proc) == (
        f"error: database {locked / 'mailer.db'}: permission denied: {locked} is not writable by this user"
        " (unable to open database file)"
    )


@pytest.mark.parametrize("case", ["folder-at-the-file", "file-at-a-folder"])
def test_something_in_the_way_of_the_database_file_is_named(tmp_path: Path, case: str) -> None:
    if case == "folder-at-the-file":
        db_file = tmp_path / "mailer.db"
        db_file.mkdir()
        expected = (
            f"error: database {db_file}: it is a folder, not a database file (unable to open database file)"
        )
    else:
        (tmp_path / "var").write_text("not a folder")
        db_file = tmp_path / "var" / "mailer.db"
        expected = f"error: database {db_file}: {tmp_path / 'var'} is not a folder"
    config = config_for(tmp_path, db_file)

    result = CliRunner().invoke(cli, ["--config", str(config), "articles", "list"])

    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stderr.splitlines() == [expected]


# ---------------------------------------------------------------- the driver's own exceptions

# A command that writes through a raw DB-API connection, as the delivery workers do; with
# --locked, another connection holds the write lock (taken once the database is open, since
# every transaction of mailer's own begins with the write lock).
RAW_WRITE = """
import sqlite3, sys
import click
from mailer.cli import cli, command, main

@command(cli, "raw-write")
@click.option("--locked", is_flag=True)
def raw_write(app, locked):
    conn = app.db.engine.raw_connection()
    if locked:
        holder = sqlite3.connect(app.cfg.database_url.removeprefix("sqlite:///"), isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
    conn.execute("PRAGMA busy_timeout = 0")
    conn.execute("CREATE TABLE IF NOT EXISTS ballast (b BLOB)")
    conn.execute("INSERT INTO ballast VALUES (zeroblob(4 * 1024 * 1024))")

sys.argv[0] = "mailer"
main()
"""


def raw_write(config: Path, *options: str) -> list[str]:
    return [sys.executable, "-c", RAW_WRITE, "--config", str(config), "raw-write", *options]


def test_a_locked_database_met_on_a_raw_connection_is_one_line_naming_it(tmp_path: Path) -> None:
    db_file = tmp_path / "mailer.db"
    config = config_for(tmp_path, db_file)

    proc = subprocess.run(raw_write(config, "--locked"), **RUN)

    assert one_line(proc) == f"error: database {db_file}: database is locked"


@needs_mount
def test_a_full_disk_met_on_a_raw_connection_is_one_line_naming_the_database(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    config = config_for(tmp_path, disk / "mailer.db")

    proc = in_private_mount(disk, f"exec {shlex.join(raw_write(config))}")

    assert one_line(proc) == f"error: database {disk / 'mailer.db'}: database or disk is full"
