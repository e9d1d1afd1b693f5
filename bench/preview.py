"""Preview benchmark: the next digest's preview with N unsent articles waiting.

`/preview` and `mailer digest preview` render the next digest on every request. The digest
holds at most `digest.max_articles` (40) articles, so the cost should not depend on how many
are waiting. For each N (100 and 100,000 by default) this fills a temporary SQLite database
with N unsent articles (the sample articles' text, repeated) and times `digest.preview` in a
fresh process, so that its peak memory (getrusage ru_maxrss) is the preview's own:
  - `limit`: the current code (the database picks the 40 oldest, ORDER BY ... LIMIT);
  - `all-rows`: the code before it, which loaded every unsent article to choose 40,
    kept here as the baseline.
Only figures from the same run mean anything on a shared machine.

Usage: python bench/preview.py [--sizes 100,100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import select  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from mailer import digest as digests  # noqa: E402
from mailer.articles import ArticleStore  # noqa: E402
from mailer.config import load_config  # noqa: E402
from mailer.db import Database  # noqa: E402
from mailer.models import Article  # noqa: E402
from mailer.themes import Themes  # noqa: E402
from tests.conftest import SEEDS, write_config  # noqa: E402


def all_rows_unsent(s: Session, limit: int, themes: Themes) -> list[Article]:
    """The selection before this change: every unsent article loaded, 40 kept."""
    rows = list(s.scalars(select(Article).where(Article.digest_id.is_(None))))
    rows.sort(key=lambda a: (themes.order(a.theme), a.imported_at, a.id))
    if len(rows) <= limit:
        return rows
    keep = {a.id for a in sorted(rows, key=lambda a: (a.imported_at, a.id))[:limit]}
    return [a for a in rows if a.id in keep]


def make_db(folder: Path, n: int) -> Path:
    """A config and database with n unsent articles (set-up, not measured)."""
    folder.mkdir(parents=True)
    config = write_config(folder)
    cfg = load_config(str(config))
    db = Database(cfg.database_url)
    db.migrate()
    ArticleStore(db, cfg).import_paths([str(SEEDS)])
    db.dispose()
    conn = sqlite3.connect(cfg.database_url.removeprefix("sqlite:///"))
    seeds = conn.execute("SELECT title, body, source, theme FROM articles").fetchall()
    conn.execute("DELETE FROM articles")
    start = datetime(2026, 1, 1, tzinfo=UTC)

    def rows() -> Iterator[tuple[str, ...]]:
        for i in range(n):
            title, body, source, theme = seeds[i % len(seeds)]
            when = (start + timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S.%f")
            body = f"{body}\n\nCopy {i}."
            yield f"{title} ({i})", body, source, when, theme, hashlib.sha256(body.encode()).hexdigest()

    conn.executemany(
        "INSERT INTO articles (title, body, source, imported_at, theme, fingerprint)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        rows(),
    )
    conn.commit()
    conn.close()
    return config


def measure(config: str, mode: str, repeat: int) -> dict[str, float]:
    """In this (fresh) process: time preview `repeat` times; peak memory before and after."""
    if mode == "all-rows":
        digests._unsent = all_rows_unsent
    cfg = load_config(config)
    db = Database(cfg.database_url)
    import premailer  # noqa: F401  (loaded by the first preview; not part of what is measured)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        p = digests.preview(db, cfg)
        times.append(time.perf_counter() - started)
        assert p is not None and p.article_count == min(cfg.digest.max_articles, 40)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    later = statistics.median(times[1:] or times)
    return {"first": times[0], "median": later, "before": before, "peak": peak}


def run_measure(config: Path, mode: str, repeat: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--measure", str(config), "--mode", mode, "--repeat", str(repeat)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,100000")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="limit", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.mode, args.repeat)))
        return
    with tempfile.TemporaryDirectory(prefix="mailer-bench-preview-") as t:
        print(f"preview of a 40-article digest, {args.repeat} calls in a fresh process per line")
        for n in (int(x) for x in args.sizes.split(",")):
            config = make_db(Path(t) / str(n), n)
            for mode in ("limit", "all-rows"):
                r = run_measure(config, mode, args.repeat)
                first, then = r["first"] * 1000, r["median"] * 1000
                print(
                    f"  N={n:>7,} {mode:>8}: first {first:6.0f} ms, then {then:6.0f} ms;"
                    f" peak RSS {r['peak'] / 1024:5.0f} MB (+{(r['peak'] - r['before']) / 1024:4.0f} MB"
                    " over the process before the first preview)"
                )


if __name__ == "__main__":
    main()
