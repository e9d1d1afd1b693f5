"""Delivery benchmark: mailer against Postfix's smtp-source and a naive Python baseline.

All in one run on this machine, into Postfix's smtp-sink on loopback:
  1. mailer delivering a 40-article digest to N subscribers (N = 10,000 and 100,000) as
     `mailer digest send --now` in its own process: messages/s, peak memory (VmHWM), and
     the sink's own count of messages;
  2. smtp-source sending messages of the same size over the same number of sessions;
  3. a naive baseline: per recipient, render the template, run premailer, build an
     EmailMessage, open a new SMTP connection and send;
  4. creating the delivery queue (building the digest) for N subscribers;
  5. the shared rate limit: a configured max_per_second against the measured rate.
Only ratios from the same run mean anything on a shared machine.

Usage: python bench/delivery.py [--sizes 10000,100000] [--naive 200] [--limit 200]
Needs smtp-sink and smtp-source (Debian package postfix; the daemon is not needed).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailer import delivery  # noqa: E402
from mailer import digest as digests  # noqa: E402
from mailer.articles import ArticleStore  # noqa: E402
from mailer.config import load_config  # noqa: E402
from mailer.db import Database  # noqa: E402
from mailer.message import MessageTemplate, Recipient  # noqa: E402
from tests.conftest import SEEDS, write_config  # noqa: E402

CONNECTIONS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sink:
    """Postfix's smtp-sink on loopback, counting what it receives (-c)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.out = tempfile.NamedTemporaryFile(prefix="sink-", delete=False)  # noqa: SIM115 (lives with the sink)
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        self.proc = subprocess.Popen(
            ["smtp-sink", "-c", *user, f"127.0.0.1:{self.port}", "1024"],
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("smtp-sink did not start")

    def messages(self) -> int:
        text = Path(self.out.name).read_bytes().decode("ascii", "replace")
        found = re.findall(r"mesg=(\d+)", text)
        return int(found[-1]) if found else 0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait()
        os.unlink(self.out.name)


def make_db(folder: Path, port: int, n: int, **sections) -> tuple[Path, object]:
    folder.mkdir(parents=True, exist_ok=True)
    config = write_config(
        folder, port, smtp={"connections": CONNECTIONS, **sections.pop("smtp", {})}, **sections
    )
    cfg = load_config(str(config))
    db = Database(cfg.database_url)
    db.migrate()
    ArticleStore(db, cfg).import_paths([str(SEEDS)])
    db.dispose()
    # Subscribers in bulk straight into SQLite: this is set-up, not what is measured.
    path = cfg.database_url.removeprefix("sqlite:///")
    conn = sqlite3.connect(path)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    conn.executemany(
        "INSERT INTO subscribers (email, name, status, created_at, status_changed_at, token_nonce,"
        " bounce_count) VALUES (?, ?, 'active', ?, ?, ?, 0)",
        ((f"reader{i}@example.com", f"Reader {i}", now, now, os.urandom(16).hex()) for i in range(n)),
    )
    conn.commit()
    conn.close()
    return config, cfg


def bench_mailer(n: int, tmp: Path) -> dict[str, float]:
    sink = Sink()
    try:
        config, cfg = make_db(tmp / f"mailer-{n}", sink.port, n)
        db = Database(cfg.database_url)
        t0 = time.perf_counter()
        d = digests.build(db, cfg, digests.manual_slot(datetime.now(UTC)))
        queue_s = time.perf_counter() - t0
        template = MessageTemplate(cfg, d.id, d.subject, d.html, d.text)
        size = len(template.render(Recipient(1, "reader1@example.com", "Reader 1", "x" * 80)))
        db.dispose()
        # Through GNU time: a child forked from this (large) process would report this
        # process's pages in its own peak RSS.
        rss_file = tmp / f"rss-{n}"
        t0 = time.perf_counter()
        proc = subprocess.run(
            [
                "/usr/bin/time",
                "-f",
                "%M",
                "-o",
                str(rss_file),
                sys.executable,
                "-m",
                "mailer",
                "--config",
                str(config),
                "digest",
                "send",
                "--now",
            ],
            cwd=ROOT,
            capture_output=True,
            check=False,
        )
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"mailer failed: {proc.stderr.decode()}")
        rss = int(rss_file.read_text().split()[-1]) / 1024
        # The command's own figure for the delivery phase (without process start-up).
        m = re.search(r"([\d,]+) msg/s over", proc.stdout.decode())
        send_rate = float(m.group(1).replace(",", "")) if m else 0.0
        time.sleep(0.3)
        received = sink.messages()
        return {
            "n": n,
            "rate": n / wall,
            "wall": wall,
            "rss": rss,
            "queue_s": queue_s,
            "send_rate": send_rate,
            "received": received,
            "size": size,
        }
    finally:
        sink.stop()


def bench_smtp_source(n: int, size: int) -> float:
    sink = Sink()
    try:
        t0 = time.perf_counter()
        subprocess.run(
            [
                "smtp-source",
                "-d",
                "-s",
                str(CONNECTIONS),
                "-m",
                str(n),
                "-l",
                str(size),
                "-f",
                "digest@example.org",
                "-t",
                "reader@example.com",
                f"127.0.0.1:{sink.port}",
            ],
            check=True,
        )
        wall = time.perf_counter() - t0
        time.sleep(0.3)
        if sink.messages() != n:
            raise SystemExit(f"smtp-sink counted {sink.messages()} of {n} smtp-source messages")
        return n / wall
    finally:
        sink.stop()


def bench_naive(n: int, tmp: Path) -> float:
    """What a first attempt looks like: everything per recipient, a connection each."""
    sink = Sink()
    try:
        _, cfg = make_db(tmp / "naive", sink.port, 1)
        db = Database(cfg.database_url)
        renderer = digests.Renderer(cfg)
        with db.session() as s:
            articles = digests._unsent(s, cfg.digest.max_articles, renderer.themes)
        content = renderer.content(articles, 1, datetime.now(UTC))
        t0 = time.perf_counter()
        for i in range(n):
            url = f"{cfg.digest.base_url}/unsubscribe/{i}"
            html = renderer.html(content, url)  # Jinja + premailer for every recipient
            text = renderer.text(content, url)
            msg = EmailMessage()
            msg["From"] = cfg.smtp.from_address
            msg["To"] = f"reader{i}@example.com"
            msg["Subject"] = content.subject
            msg.set_content(text)
            msg.add_alternative(html, subtype="html")
            with smtplib.SMTP("127.0.0.1", sink.port) as smtp:
                smtp.send_message(msg)
        rate = n / (time.perf_counter() - t0)
        time.sleep(0.3)
        if sink.messages() != n:
            raise SystemExit(f"smtp-sink counted {sink.messages()} of {n} naive messages")
        db.dispose()
        return rate
    finally:
        sink.stop()


def bench_rate_limit(limit: int, seconds: int, tmp: Path) -> tuple[float, int]:
    """Deliver for `seconds` under max_per_second = limit; (rate, busiest 1-second window)."""
    sink = Sink()
    try:
        n = limit * seconds
        _, cfg = make_db(tmp / "limit", sink.port, n, smtp={"max_per_second": limit})
        db = Database(cfg.database_url)
        d = digests.build(db, cfg, digests.manual_slot(datetime.now(UTC)))
        stamps: list[float] = []
        lock = threading.Lock()

        def on_progress(summary: delivery.RunSummary, k: int) -> None:
            with lock:
                stamps.extend([time.monotonic()] * k)

        delivery.deliver(db, cfg, d.id, on_progress=on_progress)
        db.dispose()
        stamps.sort()
        # Messages per second, counted in whole 1-second windows from the first message
        # (the limiter is a moving window, so each second holds up to the limit), and the
        # busiest 1-second window anywhere, which must never exceed the limit.
        full = int(stamps[-1] - stamps[0])
        windows = [0] * full
        for t in stamps:
            k = int(t - stamps[0])
            if k < full:
                windows[k] += 1
        rate = sum(windows) / full if full else 0.0
        busiest, j = 0, 0
        for i, t in enumerate(stamps):
            while stamps[j] <= t - 1.0:
                j += 1
            busiest = max(busiest, i - j + 1)
        time.sleep(0.3)
        if sink.messages() != n:
            raise SystemExit(f"smtp-sink counted {sink.messages()} of {n} rate-limited messages")
        return rate, busiest
    finally:
        sink.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--naive", type=int, default=200, help="recipients for the naive baseline")
    ap.add_argument("--limit", type=int, default=200, help="max_per_second for the rate-limit check")
    ap.add_argument("--limit-seconds", type=int, default=10)
    args = ap.parse_args()
    for tool in ("smtp-sink", "smtp-source"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install postfix (the daemon is not needed)")
    sizes = [int(x) for x in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="mailer-bench-") as t:
        tmp = Path(t)
        print(f"machine: {os.cpu_count()} cores; {CONNECTIONS} SMTP connections; sink: Postfix smtp-sink")
        results = []
        for n in sizes:
            r = bench_mailer(n, tmp)
            results.append(r)
            print(
                f"mailer   N={n:>7,}: {r['rate']:7.0f} msg/s  ({r['wall']:.1f} s, process start included; "
                f"delivery phase {r['send_rate']:.0f} msg/s)  "
                f"peak RSS {r['rss']:.0f} MB  queue built in {r['queue_s']:.2f} s  "
                f"sink counted {r['received']:,}  message {r['size'] / 1024:.0f} KB"
            )
            if r["received"] != n:
                raise SystemExit(f"smtp-sink counted {r['received']} messages, expected {n}")
        size = int(results[0]["size"])
        source_n = min(max(sizes), 20000)
        source = bench_smtp_source(source_n, size)
        print(f"smtp-source -d -s {CONNECTIONS}, {source_n:,} x {size / 1024:.0f} KB: {source:7.0f} msg/s")
        naive = bench_naive(args.naive, tmp)
        print(f"naive Python baseline, {args.naive} recipients: {naive:7.1f} msg/s")
        rate, busiest = bench_rate_limit(args.limit, args.limit_seconds, tmp)
        print(
            f"rate limit max_per_second={args.limit}: {rate:.1f} msg/s over whole seconds "
            f"({(rate / args.limit - 1) * 100:+.1f}%), busiest 1-second window {busiest} (limit {args.limit})"
        )
        print("ratios:")
        for r in results:
            print(
                f"  N={r['n']:>7,}: mailer / smtp-source = {r['rate'] / source:.2f} (target >= 0.5); "
                f"mailer / naive = {r['rate'] / naive:.0f}x (target >= 30x)"
            )
        if len(results) > 1:
            print(
                f"  peak memory N={results[-1]['n']:,} / N={results[0]['n']:,} = "
                f"{results[-1]['rss'] / results[0]['rss']:.2f} (target <= 1.2; and < 100 MB)"
            )
        print(f"  queue for N={results[-1]['n']:,}: {results[-1]['queue_s']:.2f} s (target < 2 s)")


if __name__ == "__main__":
    main()
