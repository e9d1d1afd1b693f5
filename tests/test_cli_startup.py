"""Commands start fast because each imports only what it uses (issue 13): `mailer --help`
imports no more than click and the CLI's frame, and `mailer subscribers list` none of the
sending, rendering, web, feed and scheduling machinery. Each command runs in a fresh
`python -m mailer` and reports the modules it imported; the timings themselves are
bench/startup.py's, not a test's.

`mailer --help` lists every command from mailer.cli.base.COMMANDS without importing them,
so the help written there must stay that of the command itself."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
from click.testing import CliRunner

from mailer.cli import cli
from mailer.cli.base import COMMANDS, LazyGroup
from tests.conftest import ROOT, write_config

# Runs `python -m mailer ARGS` and writes to $PROBE_OUT at exit the modules it imported and
# the cyclic garbage collector's state.
PROBE = """
import atexit, gc, json, os, runpy, sys

def report():
    state = {"modules": sorted(sys.modules), "gc": gc.isenabled(), "frozen": gc.get_freeze_count()}
    with open(os.environ["PROBE_OUT"], "w") as out:
        json.dump(state, out)

atexit.register(report)
runpy.run_module("mailer", run_name="__main__", alter_sys=True)
"""

# Heavy for a command that does not use them: the delivery engine, rendering, the web
# server, feeds, the scheduler's service side, migrations, DKIM.
HEAVY = [
    "alembic",
    "apscheduler.schedulers",
    "cryptography",
    "dkim",
    "feedparser",
    "flask",
    "httpx",
    "jinja2",
    "lxml",
    "premailer",
    "trafilatura",
    "werkzeug",
    "mailer.bounces",
    "mailer.delivery",
    "mailer.notices",
    "mailer.render",
    "mailer.service",
    "mailer.web",
]


def run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    out = tmp_path / "probe.json"
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=ROOT,
        env={**os.environ, "PROBE_OUT": str(out)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(out.read_text())


def imported_by(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    proc, state = run(tmp_path, *args)
    return proc, set(state["modules"])


def loaded(modules: set[str], names: list[str]) -> list[str]:
    """Those of `names` (packages: with any of their modules) that were imported."""
    return [n for n in names if any(m == n or m.startswith(n + ".") for m in modules)]


def test_help_imports_only_click_and_the_frame(tmp_path: Path) -> None:
    proc, modules = imported_by(tmp_path, "--help")

    assert "subscribers" in proc.stdout
    # (runpy runs mailer/__main__.py as __main__.)
    assert sorted(m for m in modules if m.split(".")[0] == "mailer") == [
        "mailer",
        "mailer.cli",
        "mailer.cli.base",
    ]
    # Not even the database or the config: SQLAlchemy and pydantic cost the most to import.
    assert loaded(modules, [*HEAVY, "apscheduler", "sqlalchemy", "pydantic", "rich", "email_validator"]) == []


def test_subscribers_list_imports_no_sending_web_or_feed_machinery(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    for email in ("ada@example.org", "grace@example.org"):
        result = CliRunner().invoke(cli, ["--config", str(config), "subscribers", "add", email])
        assert result.exit_code == 0, result.output

    proc, modules = imported_by(tmp_path, "--config", str(config), "subscribers", "list")

    assert "2 subscriber(s)" in proc.stdout
    assert loaded(modules, HEAVY) == []
    # The other command groups stay unimported too.
    others = [
        f"mailer.cli.{name}" for name in ("articles", "bounces", "digest", "feeds", "schedule", "serve")
    ]
    assert loaded(modules, others) == []


def test_the_collector_runs_again_once_the_command_is_imported(tmp_path: Path) -> None:
    # main() holds it back while the command's modules are imported, then freezes them: a
    # collector left off would let `mailer serve` grow without bound.
    config = write_config(tmp_path)

    _, state = run(tmp_path, "--config", str(config), "schedule")

    assert state["gc"] is True
    assert state["frozen"] > 10_000


def test_each_listed_help_is_the_commands_own() -> None:
    for name, (where, listed) in COMMANDS.items():
        module, attr = where.split(":")
        command = getattr(__import__(module, fromlist=[attr]), attr)
        assert isinstance(command, click.Command), where
        first_paragraph = inspect.cleandoc(command.help or "").split("\n\n")[0]
        assert listed == " ".join(first_paragraph.split()), f"COMMANDS[{name!r}]"


def test_the_lazy_listing_is_clicks_own_of_the_imported_commands() -> None:
    context = click.Context(cli)
    imported = click.Group(commands={name: cli.get_command(context, name) for name in COMMANDS})
    fresh = LazyGroup(lazy_commands=COMMANDS)  # nothing imported through it yet

    assert commands_listed(fresh) == commands_listed(imported)
    assert not fresh.commands


def commands_listed(group: click.Group) -> str:
    formatter = click.HelpFormatter(width=80)
    group.format_commands(click.Context(group), formatter)
    return formatter.getvalue()
