"""`articles add --body-file` reads like `articles import`: a regular file within the size
limit, else one error line and exit 1; never an endless read of /dev/zero or a wait on a
FIFO. Real `.venv/bin/mailer` processes, their memory capped so a regression fails fast
instead of filling the machine."""

from __future__ import annotations

import os
import resource
import subprocess

import pytest

from mailer.article_files import MAX_FILE_BYTES
from tests.conftest import ROOT, write_config

MAILER = str(ROOT / ".venv" / "bin" / "mailer")
MEMORY_CAP = 1 << 30  # 1 GiB of address space: far more than the command needs


def _capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def _add(config, body_file) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MAILER, "--config", str(config), "articles", "add", "--title", "T", "--body-file", str(body_file)],
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=_capped,
    )


def _fifo(folder):
    path = folder / "fifo"
    os.mkfifo(path)
    return path


def _oversized(folder):
    path = folder / "big.txt"
    with open(path, "wb") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda folder: "/dev/zero", "not a regular file (a character device)"),
        (_fifo, "not a regular file (a FIFO)"),
        (_oversized, "file is larger than 20 MB"),
    ],
    ids=["dev-zero", "fifo", "oversized"],
)
def test_body_file_that_is_not_a_readable_article_is_one_error_line(tmp_path, make, reason):
    config = write_config(tmp_path)
    body_file = make(tmp_path)
    proc = _add(config, body_file)
    assert proc.returncode == 1
    assert proc.stderr == f"error: {body_file}: {reason}\n"
    assert proc.stdout == ""
