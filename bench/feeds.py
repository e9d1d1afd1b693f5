"""Feed polling benchmark: --feeds feeds (200) of --items items (50) each, served on
loopback by tests/feed_server.py in a process of its own, polled by a real
`mailer feeds poll` process, twice:

  1. the first poll: every feed fetched whole, parsed, and its items imported (all are
     recent, so all are imported): wall time, peak RSS (GNU time's %M), articles stored;
  2. the second poll: every feed answers 304 Not Modified to the conditional GET: wall
     time, and its ratio to the first (the issue asks for at most 0.10).

Beside them, `python -c pass` and `mailer --help` in the same run: a poll's fixed cost
(interpreter, imports, config, database) is in both polls, so the ratio cannot go below
that floor however fast 304s are.

Only ratios from the same run mean anything on a shared machine; nothing here asserts a
time. Usage: python bench/feeds.py [--feeds 200] [--items 50] [--database sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import write_config  # noqa: E402
from tests.feed_server import FeedServer, Route  # noqa: E402

BIN = Path(sys.executable).parent


def feed(n: int, items: int, now: datetime) -> bytes:
    """An RSS 2.0 feed with `items` recent items of a few paragraphs each (~1 KB)."""
    body = []
    for i in range(items):
        text = " ".join(f"Feed {n} item {i} sentence {k} about chips, models and policy." for k in range(12))
        body.append(
            f"<item><guid>feed{n}-item{i}</guid><title>Feed {n}: story {i}</title>"
            f"<link>https://feed{n}.example/{i}</link>"
            f"<pubDate>{format_datetime(now - timedelta(minutes=i))}</pubDate>"
            f"<description>&lt;p&gt;{text}&lt;/p&gt;&lt;p&gt;{text[::-1]}&lt;/p&gt;</description></item>"
        )
    return (
        f"<?xml version='1.0' encoding='utf-8'?><rss version='2.0'><channel><title>Feed {n}</title>"
        f"<link>https://feed{n}.example/</link>{''.join(body)}</channel></rss>"
    ).encode()


def serve(feeds: int, items: int, ready: multiprocessing.Queue, stop: multiprocessing.Event) -> None:  # type: ignore[type-arg]
    now = datetime.now(UTC)
    with FeedServer() as server:
        urls = [
            server.route(f"/feed{n}.xml", Route(body=feed(n, items, now), etag=f'"feed{n}-v1"', gzip=True))
            for n in range(feeds)
        ]
        ready.put(urls)
        stop.wait()


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS in MB (GNU time), and stdout of a command that must succeed."""
    with tempfile.NamedTemporaryFile("r") as rss:
        start = time.perf_counter()
        done = subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", rss.name, *cmd], env=env, capture_output=True, text=True
        )
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        return elapsed, int(rss.read().strip().splitlines()[-1]) // 1024, done.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--feeds", type=int, default=200)
    ap.add_argument("--items", type=int, default=50)
    ap.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    args = ap.parse_args()

    ready: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
    stop = multiprocessing.Event()
    server = multiprocessing.Process(target=serve, args=(args.feeds, args.items, ready, stop), daemon=True)
    server.start()
    urls = ready.get(timeout=120)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        database_url = ""
        if args.database == "postgresql":
            from tests import databases

            name = databases.create()
            database_url = databases.url_of(name)
        # All items count as recent: the first poll imports every one of them.
        config = write_config(folder, database_url=database_url, feeds={"max_age_days": 30})
        with config.open("a", encoding="utf-8") as fh:
            for url in urls:
                fh.write(f'\n[[feeds.sources]]\nurl = "{url}"\n')
        env = {**os.environ, "MAILER_CONFIG": str(config)}
        mailer = [str(BIN / "mailer")]
        subprocess.run([*mailer, "feeds", "list"], env=env, check=True, capture_output=True)  # migrate, sync

        floor, _, _ = timed([sys.executable, "-c", "pass"], env)
        help_s, _, _ = timed([*mailer, "--help"], env)
        first, first_rss, first_out = timed([*mailer, "feeds", "poll", "--json"], env)
        second, second_rss, second_out = timed([*mailer, "feeds", "poll", "--json"], env)
        stop.set()
        server.join(10)
        if args.database == "postgresql":
            databases.drop(name)

    imported = sum(int(n) for n in re.findall(r'"imported": (\d+)', first_out))
    again = sum(int(n) for n in re.findall(r'"imported": (\d+)', second_out))
    not_modified = second_out.count('"http_status": 304')
    print(f"feeds: {args.feeds} x {args.items} items, {args.database}, served gzip'd from another process")
    print(f"python -c pass           {floor:7.2f} s")
    print(f"mailer --help            {help_s:7.2f} s")
    print(f"first poll               {first:7.2f} s  peak RSS {first_rss} MB  {imported} articles imported")
    print(
        f"second poll (all 304)    {second:7.2f} s  peak RSS {second_rss} MB  "
        f"{not_modified} answered 304, {again} imported"
    )
    print(f"second / first           {second / first:7.3f}  (target <= 0.10)")


if __name__ == "__main__":
    main()
