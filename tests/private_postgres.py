"""A throw-away PostgreSQL server for one test, which the test may stop and start.

The shared server on 127.0.0.1:5432 must never be stopped, so a test about a server that
goes away gets its own: `initdb` into a temporary folder, `pg_ctl start` on a free loopback
port (socket in that folder, TCP on 127.0.0.1 only, fsync off: nothing here must survive a
power cut; synchronous_commit stays on, so a crash of the server itself, `stop("immediate")`,
keeps every commit it acknowledged), and the folder removed afterwards whatever happened (a
cluster left by a test run that was killed is removed by the next one). PostgreSQL refuses
to run as root, so as root the binaries run as the `postgres` user (`runuser`) in a folder
it owns.

    with PrivatePostgres.started() as pg:
        url = pg.url()          # postgresql+psycopg://postgres@127.0.0.1:<port>/mailer
        pg.stop("immediate")    # or "fast"; start(), restart()

`unusable()` says why this machine cannot run one (not root, no binaries, no `postgres`
user); the tests skip with that reason.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql

BIN = Path(os.environ.get("MAILER_TEST_POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))
USER = "postgres"
DATABASE = "mailer"
PREFIX = "mailer-pg-"
OWNER = "owner.pid"  # the test process's pid: its cluster is a leftover once it is gone
Mode = Literal["smart", "fast", "immediate"]

SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "'16MB'",
    "max_connections": "200",
    "logging_collector": "off",
}


def unusable() -> str:
    """Why a private server cannot be run here ("" when it can)."""
    if os.geteuid() != 0:
        return "a private PostgreSQL server needs root (to run initdb and pg_ctl as the postgres user)"
    missing = [name for name in ("initdb", "pg_ctl", "postgres") if not (BIN / name).is_file()]
    if missing:
        return f"PostgreSQL binaries missing in {BIN}: {', '.join(missing)}"
    if shutil.which("runuser") is None:
        return "runuser not found (needed to run PostgreSQL as the postgres user)"
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return f"no {USER!r} user to run PostgreSQL as"
    return ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivatePostgres:
    """One cluster in a temporary folder; `close()` stops it and removes the folder."""

    def __init__(self, folder: Path | None = None) -> None:
        """A new cluster's folder (owned by the postgres user), or an existing one's."""
        self.port = 0
        self.started_once = False
        if folder is None:
            _remove_leftovers()
            folder = Path(tempfile.mkdtemp(prefix=PREFIX))
            owner = pwd.getpwnam(USER)
            os.chown(folder, owner.pw_uid, owner.pw_gid)
            folder.chmod(0o700)
            (folder / OWNER).write_text(str(os.getpid()))
        self.folder = folder
        self.data = folder / "data"
        self.log = folder / "server.log"

    @classmethod
    @contextmanager
    def started(cls) -> Iterator[PrivatePostgres]:
        """A running server with an empty database `mailer`, removed on leaving."""
        server = cls()
        try:
            server.init()
            server.start()
            server.create_database(DATABASE)
            yield server
        finally:
            server.close()

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["runuser", "-u", USER, "--", *args],
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _check(self, what: str, done: subprocess.CompletedProcess[str]) -> None:
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{what} failed ({done.returncode}): {done.stdout}{done.stderr}{log}")

    def init(self) -> None:
        done = self._run(
            str(BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            USER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        self._check("initdb", done)
        self.port = _free_port()
        self._configure()

    def _configure(self) -> None:
        settings = {**SETTINGS, "port": str(self.port), "unix_socket_directories": f"'{self.folder}'"}
        lines = "".join(f"{key} = {value}\n" for key, value in settings.items())
        # Appended as the postgres user's file: later lines win over the defaults above them.
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# tests/private_postgres.py\n" + lines)

    def start(self) -> None:
        for _attempt in range(3):
            done = self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "start")
            if done.returncode == 0:
                self.started_once = True
                return
            # The port may have been taken since it was chosen: another one, but only at the
            # cluster's first start (later starts must keep the port the clients know).
            if self.started_once or "already in use" not in self.log.read_text(errors="replace"):
                break
            self.port = _free_port()
            self._configure()
        self._check("pg_ctl start", done)

    def stop(self, mode: Mode = "fast") -> None:
        done = self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")
        self._check(f"pg_ctl stop -m {mode}", done)

    def restart(self, mode: Mode = "fast") -> None:
        self.stop(mode)
        self.start()

    def running(self) -> bool:
        return self._postmaster() is not None

    def _postmaster(self) -> int | None:
        pid_file = self.data / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return None
        return pid

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=USER, dbname=database, autocommit=True, connect_timeout=5
        )

    def create_database(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def close(self) -> None:
        """Stop the server (whatever state it is in) and remove its folder."""
        try:
            if self.data.exists() and self.running():
                self._run(
                    str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=30
                )
                pid = self._postmaster()
                if pid is not None:  # pg_ctl could not stop it: the postmaster, by its pid
                    os.kill(pid, signal.SIGKILL)
                    deadline = time.monotonic() + 10
                    while self._postmaster() is not None and time.monotonic() < deadline:
                        time.sleep(0.05)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def _remove_leftovers() -> None:
    """Clusters of test processes that are gone (killed before their teardown)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        try:
            owner = int((folder / OWNER).read_text())
            os.kill(owner, 0)
        except (OSError, ValueError):
            pass
        else:
            continue  # its test process is alive: its own
        if (folder / OWNER).exists():  # (a folder without one is still being set up)
            PrivatePostgres(folder).close()
