"""A reader that closes the pipe early (`mailer articles list | head -1`) is not an error:
no message, exit status 141 (128 + SIGPIPE), as Unix tools. Real `.venv/bin/mailer`
processes writing into real pipes."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import ROOT, populate, write_config

MAILER = str(ROOT / ".venv" / "bin" / "mailer")


@pytest.fixture
def config(tmp_path, database_url):
    path = write_config(tmp_path, database_url=database_url)
    populate(path, 5)
    return path


@pytest.mark.parametrize(
    "args",
    [
        ["articles", "list"],  # a rich table
        ["articles", "list", "--json"],  # click.echo
        ["subscribers", "list"],
        ["subscribers", "list", "--json"],
    ],
)
def test_a_pipe_closed_before_the_output_is_written_ends_the_command_quietly(config, args):
    proc = subprocess.Popen(
        [MAILER, "--config", str(config), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the command writes anything
    err = proc.stderr.read()
    proc.wait(timeout=60)
    assert err == b""
    assert proc.returncode == 141


def test_head_takes_the_first_line_and_mailer_says_nothing(config):
    script = f'"{MAILER}" --config "{config}" articles list | head -1; echo "mailer exit ${{PIPESTATUS[0]}}"'
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.stderr == ""
    first, status = proc.stdout.splitlines()
    assert first.split() == ["id", "theme", "title", "state"]
    assert status in ("mailer exit 0", "mailer exit 141")  # 0 when it all fitted in the pipe first
