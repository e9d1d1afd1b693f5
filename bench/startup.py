"""Start-up benchmark: how long a command takes before it does anything (issue 13, target 2).

Each command runs `--repeat` times (10 by default, after one untimed warm-up run that fills
the page cache and the bytecode cache) in a fresh process, and the median wall time and the
largest peak RSS are printed beside those of `python -c pass` from the same run, the floor
no command can go under. Peak RSS is GNU time's %M (`apt-get install time`; without it,
none is printed).

  - `python -c pass`: the interpreter alone (the venv's python);
  - `mailer --help`: the venv's `mailer` script, which lists every command;
  - `mailer subscribers list`: on a small SQLite database (a temporary config, three
    readers), so that it opens the database, reads and prints a table.

The commands run without PYTHONDONTWRITEBYTECODE, so that the warm-up run caches mailer's
own bytecode (__pycache__, ignored by git) as an installed copy has it (pip compiles at
install); with the variable set and no cache, each start compiles mailer's modules again.

Targets on this machine (issue 13): `--help` at most 0.25 s, `subscribers list` at most
0.5 s. Only figures from the same run mean anything on a shared machine.

Usage: python bench/startup.py [--repeat 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import write_config  # noqa: E402

PYTHON = sys.executable
# The console script a user runs, else the same entry point through -m.
SCRIPT = Path(PYTHON).parent / "mailer"
MAILER = [str(SCRIPT)] if SCRIPT.exists() else [PYTHON, "-m", "mailer"]
# What the measured commands see: no MAILER_* of the caller's shell, bytecode cached.
ENV = {k: v for k, v in os.environ.items() if not k.upper().startswith("MAILER_")}
ENV.pop("PYTHONDONTWRITEBYTECODE", None)
# GNU time reports the command's own peak RSS; the benchmark's ru_maxrss for a child would
# count this (larger) process too, which the child's RSS started from before its exec.
GNU_TIME = shutil.which("time", path="/usr/bin:/bin")
READERS = ["ada@example.org", "grace@example.org", "edsger@example.org"]
TARGETS = {"mailer --help": 0.25, "mailer subscribers list": 0.5}


def run_once(argv: list[str], rss_file: Path) -> tuple[float, int]:
    """Wall time (s) and peak RSS (KiB) of one run; a failing command stops the benchmark."""
    timed = [GNU_TIME, "-f", "%M", "-o", str(rss_file), *argv] if GNU_TIME else argv
    start = time.perf_counter()
    proc = subprocess.run(timed, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, env=ENV)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)}: exit status {proc.returncode}\n{proc.stderr.decode()}")
    return elapsed, int(rss_file.read_text().split()[-1]) if GNU_TIME else 0


def measure(argv: list[str], repeat: int, rss_file: Path) -> tuple[float, int]:
    """Median wall time and largest peak RSS over `repeat` runs, after one warm-up run."""
    run_once(argv, rss_file)
    runs = [run_once(argv, rss_file) for _ in range(repeat)]
    return statistics.median(t for t, _ in runs), max(rss for _, rss in runs)


def small_database(folder: Path) -> Path:
    """A config and a migrated SQLite database with a few readers (set-up, not measured)."""
    config = write_config(folder)
    for email in READERS:
        argv = [*MAILER, "--config", str(config), "subscribers", "add", email]
        subprocess.run(argv, env=ENV, check=True, stdout=subprocess.DEVNULL)
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = small_database(Path(tmp))
        cases = {
            "python -c pass": [PYTHON, "-c", "pass"],
            "mailer --help": [*MAILER, "--help"],
            "mailer subscribers list": [*MAILER, "--config", str(config), "subscribers", "list"],
        }
        rss_file = Path(tmp) / "rss"
        results = {name: measure(argv, args.repeat, rss_file) for name, argv in cases.items()}
    base_t = results["python -c pass"][0]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"median of {args.repeat} runs each, peak RSS the largest; {' '.join(MAILER)}")
    print(f"load average {load} on {os.cpu_count()} CPUs")
    print(f"{'command':<26}{'median':>9}{'- python':>10}{'peak RSS':>11}{'target':>9}")
    for name, (t, rss) in results.items():
        target = TARGETS.get(name)
        verdict = "" if target is None else f"{target:.2f} {'ok' if t <= target else 'MISSED'}"
        extra = "" if name == "python -c pass" else f"+{t - base_t:.3f}"
        print(f"{name:<26}{t:>8.3f}s{extra:>10}{rss / 1024:>8.1f} MB  {verdict}")


if __name__ == "__main__":
    main()
