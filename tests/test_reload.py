"""`mailer serve` reloads its config while running: a real service process, its web pages
over real HTTP, its log, and a scheduled send to a real SMTP server (aiosmtpd).

A theme's name is what each test changes: it shows on /preview and in the digest, and
`mailer digest preview` (a fresh process) always had it right, the service did not.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import ROOT, populate
from tests.smtp_server import SmtpServer, free_port
from tests.web_server import write_test_config

OLD_NAME = "AI models and companies"
NEW_NAME = "Machine learning labs"
SAME_SIZE_NAME = "AI labs and model firms"  # as long as OLD_NAME: the file keeps its size
ZONE = "Europe/Berlin"
# No slot of this schedule is ever due while a test runs (1 January, 08:00, 5 minutes' grace).
NEVER = "0 8 1 1 *"


def _wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Served:
    """A `mailer serve` process; its log (stderr) and banner (stdout) are read as they come."""

    def __init__(self, config: Path, port: int) -> None:
        self.config = config
        self.port = port
        self.log: list[str] = []
        self.out: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailer", "--config", str(config), "serve"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.readers = [
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.log), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out), daemon=True),
        ]
        for reader in self.readers:
            reader.start()
        _wait_for(lambda: self.get("/healthz")[0] == 200, 30, "the web server")

    @staticmethod
    def _pump(stream: object, sink: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            sink.append(line.rstrip("\n"))

    def get(self, path: str, port: int | None = None) -> tuple[int, str]:
        assert self.proc.poll() is None, "the service is not running:\n" + "\n".join(self.log)
        conn = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=10)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode("utf-8")
        except OSError:
            return 0, ""
        finally:
            conn.close()

    def preview_shows(self, name: str) -> bool:
        status, body = self.get("/preview")
        return status == 200 and name in body

    def logged(self, text: str) -> list[str]:
        return [line for line in self.log if text in line]

    def wait_for_log(self, text: str, timeout: float = 15) -> str:
        _wait_for(lambda: self.logged(text), timeout, f"the log line {text!r}")
        return self.logged(text)[0]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        for reader in self.readers:
            reader.join(timeout=5)


@pytest.fixture
def config(tmp_path: Path, smtp_server: SmtpServer, database_url: str) -> Path:
    path = write_test_config(
        tmp_path,
        smtp_server.port,
        database_url,
        web={"port": free_port()},
        schedule={"cron": NEVER, "timezone": ZONE, "grace_hours": 0},
    )
    populate(path, 2)
    return path


@pytest.fixture
def service(config: Path) -> Iterator[Served]:
    from mailer.config import load_config

    served = Served(config, load_config(str(config)).web.port)
    assert served.preview_shows(OLD_NAME)
    # The banner names the pages, the test copy's among them (mailer.web.editor).
    _wait_for(lambda: any("test copy:" in line for line in served.out), 10, "the banner")
    assert f"  test copy:    http://127.0.0.1:{served.port}/preview/test-copy" in served.out
    yield served
    served.stop()
    assert served.proc.returncode == 0, "\n".join(served.log)
    assert not served.logged("Traceback"), "\n".join(served.log)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def rename_theme(path: Path, new: str) -> None:
    edit(path, f'name = "{OLD_NAME}"', f'name = "{new}"')


def cli_error(config: Path) -> str:
    """The one line `mailer` prints for this config, without its `error: `."""
    done = subprocess.run(
        [sys.executable, "-m", "mailer", "--config", str(config), "schedule"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and done.stderr.startswith("error: "), done.stderr
    return done.stderr.removeprefix("error: ").rstrip("\n")


def test_sighup_reloads_the_config(service: Served, config: Path) -> None:
    # Edited in place with the same size and mtime, so only the signal can tell the service.
    before = os.stat(config)
    rename_theme(config, SAME_SIZE_NAME)
    os.utime(config, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(config).st_size == before.st_size

    service.proc.send_signal(signal.SIGHUP)

    line = service.wait_for_log("config reloaded from")
    assert f"config reloaded from {config} (on SIGHUP): changed themes" in line
    assert service.preview_shows(SAME_SIZE_NAME) and not service.preview_shows(OLD_NAME)


def test_editing_the_file_is_enough(service: Served, config: Path) -> None:
    rename_theme(config, NEW_NAME)

    _wait_for(lambda: service.preview_shows(NEW_NAME), 15, "the new theme name on /preview")
    [line] = service.logged("config reloaded from")
    assert f"config reloaded from {config} (the file changed): changed themes" in line
    # Touched but not changed: nothing to reload, nothing logged.
    os.utime(config)
    time.sleep(5)
    assert len(service.logged("config reloaded")) == 1


def test_a_config_that_does_not_load_is_refused_and_the_old_one_stays(service: Served, config: Path) -> None:
    rename_theme(config, NEW_NAME)
    edit(config, f'timezone = "{ZONE}"', 'timezone = "Mars/Olympus_Mons"')
    error = cli_error(config)
    assert "Mars/Olympus_Mons" in error

    line = service.wait_for_log("not reloaded")
    assert line.endswith(f"config {config} not reloaded: {error}; keeping the one in force")
    # The service keeps answering, with the old config (the rename came with the error).
    assert service.get("/healthz") == (200, "ok\n")
    assert service.preview_shows(OLD_NAME) and not service.preview_shows(NEW_NAME)
    time.sleep(5)  # one line per edit, not one per look at the file
    assert len(service.logged("not reloaded")) == 1

    edit(config, 'timezone = "Mars/Olympus_Mons"', f'timezone = "{ZONE}"')
    _wait_for(lambda: service.preview_shows(NEW_NAME), 15, "the new theme name on /preview")
    assert f"config reloaded from {config} (the file changed): changed themes" in service.log[-1]


def test_settings_that_need_a_restart_keep_their_values(service: Served, config: Path) -> None:
    new_port = free_port()
    rename_theme(config, NEW_NAME)
    edit(config, f"port = {service.port}", f"port = {new_port}")

    line = service.wait_for_log("needs a restart")
    assert line.endswith(
        f"config {config}: web.port ({service.port} -> {new_port}) needs a restart; "
        "the old value stays in force until then"
    )
    assert "changed themes" in service.wait_for_log("config reloaded from")
    # The old port still serves, with everything else of the new config in force.
    assert service.preview_shows(NEW_NAME)
    assert service.get("/healthz", port=new_port) == (0, "")


def test_the_scheduler_follows_a_reloaded_schedule_and_themes(
    service: Served, config: Path, smtp_server: SmtpServer
) -> None:
    # A slot a minute ago under the new schedule: due at once, within the 5 minutes' grace.
    slot = datetime.now(ZoneInfo(ZONE)) - timedelta(minutes=1)
    cron = f"{slot.minute} {slot.hour} * * *"
    rename_theme(config, NEW_NAME)
    edit(config, f'cron = "{NEVER}"', f'cron = "{cron}"')

    assert "changed schedule.cron, themes" in service.wait_for_log("config reloaded from")
    assert f"schedule now {cron!r} in {ZONE}: next digest " in service.wait_for_log("schedule now")
    _wait_for(lambda: len(smtp_server.received) == 2, 30, "the scheduled digest")
    for got in smtp_server.received:
        html = got.message.get_body(("html",)).get_content()
        assert NEW_NAME in html and OLD_NAME not in html
