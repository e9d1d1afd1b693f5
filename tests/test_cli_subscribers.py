"""`mailer subscribers forget` asks before it erases someone: on a terminal it waits for a
yes, without one (a script, a pipe) it refuses unless given --yes. The terminal is a real
pseudo-terminal and the command a real process."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from click.testing import Result

from mailer.db import Database
from mailer.subscribers import SubscriberStore

RunCli = Callable[..., Result]


def _emails(db: Database) -> list[str]:
    return [s.email for s in SubscriberStore(db).list()]


def test_forget_without_a_terminal_or_yes_refuses_in_one_line(run_cli: RunCli, db: Database) -> None:
    SubscriberStore(db).add("ann@example.com", "Ann")

    result = run_cli("subscribers", "forget", "Ann@Example.com")

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == "error: forgetting ann@example.com cannot be undone: pass --yes to confirm\n"
    assert _emails(db) == ["ann@example.com"]


def test_forget_with_yes_erases_without_asking(run_cli: RunCli, db: Database) -> None:
    SubscriberStore(db).add("ann@example.com", "Ann")
    SubscriberStore(db).add("bob@example.com")

    result = run_cli("subscribers", "forget", "ANN@example.com", "--yes")

    assert (result.exit_code, result.stdout, result.stderr) == (0, "ann@example.com forgotten\n", "")
    assert _emails(db) == ["bob@example.com"]


def _on_a_terminal(config_path: Path, answer: bytes, *args: str) -> tuple[int, str]:
    """Run `mailer --config … subscribers forget ARGS` with a pseudo-terminal as stdin,
    stdout and stderr; answer the prompt once it shows. (exit status, everything shown)."""
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailer", "--config", str(config_path), "subscribers", "forget", *args],
        stdin=child,
        stdout=child,
        stderr=child,
        close_fds=True,
    )
    os.close(child)
    shown = b""
    answered = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            shown += chunk
        if not answered and b"[y/N]" in shown:
            os.write(main, answer)
            answered = True
        if proc.poll() is not None and not ready:
            break
    os.close(main)
    return proc.wait(timeout=10), shown.decode("utf-8").replace("\r\n", "\n")


def test_forget_on_a_terminal_asks_and_a_no_keeps_the_person(config_path: Path, db: Database) -> None:
    SubscriberStore(db).add("ann@example.com", "Ann Lee")

    status, shown = _on_a_terminal(config_path, b"n\n", "ann@example.com")

    assert status == 1
    assert shown == (
        "Erase ann@example.com (Ann Lee) and their delivery records for good? [y/N]: n\naborted\n"
    )
    assert _emails(db) == ["ann@example.com"]

    status, shown = _on_a_terminal(config_path, b"y\n", "ann@example.com")

    assert status == 0
    assert shown == (
        "Erase ann@example.com (Ann Lee) and their delivery records for good? [y/N]: y\n"
        "ann@example.com forgotten\n"
    )
    assert _emails(db) == []
