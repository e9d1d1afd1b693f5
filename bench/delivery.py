"""Delivery benchmark: mailer against Postfix's smtp-source and a naive Python baseline,
on SQLite and on PostgreSQL, with one `mailer digest send --now` process or two.

Everything runs on this machine over loopback; each mailer instance is a real
`mailer digest send --now` process (4 SMTP connections), timed from its start to its exit,
its peak RSS taken by GNU time (%M), and every message counted by the sink itself.
PostgreSQL runs use a throw-away database on the local server (127.0.0.1:5432, user
postgres; CREATE DATABASE before, DROP ... WITH (FORCE) after); SQLite a file in a
temporary folder. Subscribers are inserted in bulk (COPY, executemany): set-up, not timed.

--suite sizes (default; --database sqlite unless given):
  1. mailer delivering a 40-article digest to N subscribers (--sizes, 10,000 and 100,000)
     into Postfix's smtp-sink: messages/s, peak memory, the sink's count;
  2. smtp-source sending messages of the same size over the same number of sessions;
  3. a naive baseline: per recipient, render the template, run premailer, build an
     EmailMessage, open a new SMTP connection and send;
  4. creating the delivery queue (building the digest) for N subscribers;
  5. the shared rate limit: a configured max_per_second against the measured rate.

--suite instances (--database both unless given; issue 9's figures):
  1. one instance on PostgreSQL, one on SQLite, and smtp-source, side by side into
     smtp-sink, N readers (-n, 10,000): each rate and its ratio to smtp-source;
  2. relay-bound, on PostgreSQL: bench/slow_sink.py holds each message --delay (20 ms)
     before its 250, so one instance cannot pass 4 / 0.02 = 200 msg/s; one instance, then
     two processes started together on one digest (the second joins the first), timed
     from the first start to the last exit (--slow-n readers, 6,000): two / one;
  3. the digest build (the delivery queue) for --queue-n (100,000) subscribers on each
     database, and the largest peak RSS of all the sending processes above.

Only ratios from the same run mean anything on a shared machine; nothing here asserts a
time. --pg-synchronous-commit off shows what the per-message commit's WAL flush costs.

Usage: python bench/delivery.py [--sizes 10000,100000] [--naive 200] [--limit 200]
       python bench/delivery.py --suite instances [--database both] [-n 10000]
                                [--slow-n 6000] [--delay 0.02] [--queue-n 100000]
Needs smtp-sink and smtp-source (Debian package postfix; the daemon is not needed), and
for PostgreSQL a local server that user postgres reaches without a password.
"""

from __future__ import annotations

import argparse
import itertools
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
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailer import delivery, render  # noqa: E402
from mailer import digest as digests  # noqa: E402
from mailer.articles import ArticleStore  # noqa: E402
from mailer.config import Config, load_config  # noqa: E402
from mailer.db import Database  # noqa: E402
from mailer.message import MessageTemplate, Recipient  # noqa: E402
from tests.conftest import SEEDS, write_config  # noqa: E402

CONNECTIONS = 4
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1"


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


class Store:
    """Where a benchmark's data lives: an SQLite file in `folder`, or a throw-away database
    on the local PostgreSQL server (CREATE DATABASE on entry, DROP ... WITH (FORCE) on
    exit, so nothing is left behind even after a failure)."""

    _names = itertools.count()
    # --pg-synchronous-commit: "off" shows what the per-message commit's WAL flush costs.
    synchronous_commit = "on"

    def __init__(self, kind: str, folder: Path) -> None:
        self.kind = kind
        self.name = f"mailer_bench_{os.getpid()}_{next(Store._names)}"
        self.url = f"sqlite:///{folder / 'mailer.db'}" if kind == "sqlite" else f"{POSTGRES}/{self.name}"

    def __enter__(self) -> Store:
        if self.kind == "postgresql":
            with _admin() as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
                conn.execute(
                    sql.SQL("ALTER DATABASE {} SET synchronous_commit = {}").format(
                        sql.Identifier(self.name), sql.Literal(Store.synchronous_commit)
                    )
                )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.kind == "postgresql":
            with _admin() as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name))
                )

    def add_subscribers(self, n: int) -> None:
        """n active subscribers in bulk (set-up, not what is measured): executemany on
        SQLite, COPY on PostgreSQL."""
        now = datetime.now(UTC).replace(tzinfo=None)
        rows = (
            (f"reader{i}@example.com", f"Reader {i}", "active", now, now, os.urandom(16).hex(), 0)
            for i in range(n)
        )
        columns = "email, name, status, created_at, status_changed_at, token_nonce, bounce_count"
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.url.removeprefix("sqlite:///"))
            stamp = now.strftime("%Y-%m-%d %H:%M:%S.%f")
            conn.executemany(
                f"INSERT INTO subscribers ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                ((*r[:3], stamp, stamp, *r[5:]) for r in rows),
            )
            conn.commit()
            conn.close()
            return
        with psycopg.connect(f"postgresql://postgres@127.0.0.1/{self.name}") as conn, conn.cursor() as cur:
            with cur.copy(f"COPY subscribers ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            cur.execute("ANALYZE")


def _admin() -> psycopg.Connection:
    return psycopg.connect("postgresql://postgres@127.0.0.1/postgres", autocommit=True, connect_timeout=5)


def make_db(store: Store, folder: Path, port: int, n: int, **sections: dict[str, Any]) -> tuple[Path, Config]:
    """A config in `folder` for `store`, migrated, with the sample articles and n readers."""
    folder.mkdir(parents=True, exist_ok=True)
    smtp = {"connections": CONNECTIONS, **sections.pop("smtp", {})}
    config = write_config(folder, port, database_url=store.url, smtp=smtp, **sections)
    cfg = load_config(str(config))
    db = Database(cfg.database_url)
    db.migrate()
    ArticleStore(db, cfg).import_paths([str(SEEDS)])
    db.dispose()
    store.add_subscribers(n)
    return config, cfg


class SlowSink:
    """bench/slow_sink.py in its own process: a relay holding each message `delay` s."""

    def __init__(self, delay: float) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "slow_sink.py"), str(self.port), "--delay", str(delay)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit("bench/slow_sink.py did not start")

    def stop(self) -> int:
        """Stop it; the number of messages it accepted."""
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate()
        m = re.search(r"received (\d+)", out)
        return int(m.group(1)) if m else 0


@dataclass
class Sent:
    """One `mailer digest send --now` process: what it said it sent, its own delivery-phase
    rate, and its peak RSS (GNU time's %M)."""

    sent: int
    send_rate: float
    rss_mb: float


def start_send(config: Path, rss_file: Path) -> subprocess.Popen[bytes]:
    # Through GNU time: a child forked from this (large) process would report this
    # process's pages in its own peak RSS.
    command = ["/usr/bin/time", "-f", "%M", "-o", str(rss_file), sys.executable, "-m", "mailer"]
    return subprocess.Popen(
        [*command, "--config", str(config), "digest", "send", "--now"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish_send(proc: subprocess.Popen[bytes], rss_file: Path) -> Sent:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"mailer failed: {err.decode()}")
    text = out.decode()
    # The command's own figure for its delivery phase (without process start-up).
    rate = re.search(r"([\d,]+) msg/s over", text)
    sent = re.search(r"this run sent (\d+)", text)
    return Sent(
        sent=int(sent.group(1)) if sent else 0,
        send_rate=float(rate.group(1).replace(",", "")) if rate else 0.0,
        rss_mb=int(rss_file.read_text().split()[-1]) / 1024,
    )


def build_queue(cfg: Config) -> tuple[float, int]:
    """Build the digest (creates the delivery queue): (seconds, message size in bytes)."""
    db = Database(cfg.database_url)
    t0 = time.perf_counter()
    d = digests.build(db, cfg, digests.manual_slot(datetime.now(UTC)))
    queue_s = time.perf_counter() - t0
    assert d is not None
    template = MessageTemplate(cfg, d.id, d.subject, d.html, d.text)
    size = len(template.render(Recipient(1, "reader1@example.com", "Reader 1", "x" * 80)))
    db.dispose()
    return queue_s, size


def bench_mailer(n: int, tmp: Path, kind: str = "sqlite") -> dict[str, float]:
    """One instance into smtp-sink: rate from process start to exit, and its own figures."""
    sink = Sink()
    folder = tmp / f"mailer-{kind}-{n}"
    try:
        with Store(kind, folder) as store:
            config, cfg = make_db(store, folder, sink.port, n)
            queue_s, size = build_queue(cfg)
            t0 = time.perf_counter()
            sent = finish_send(start_send(config, folder / "rss"), folder / "rss")
            wall = time.perf_counter() - t0
        time.sleep(0.3)
        return {
            "n": n,
            "rate": n / wall,
            "wall": wall,
            "rss": sent.rss_mb,
            "queue_s": queue_s,
            "send_rate": sent.send_rate,
            "received": sink.messages(),
            "size": size,
        }
    finally:
        sink.stop()


def bench_instances(k: int, n: int, delay: float, tmp: Path) -> dict[str, Any]:
    """k `digest send --now` processes started together on one digest (PostgreSQL) into a
    relay holding each message `delay` s: n / (first start to last exit), and each
    instance's share and peak RSS."""
    sink = SlowSink(delay)
    folder = tmp / f"instances-{k}"
    received = 0
    try:
        with Store("postgresql", folder) as store:
            config, cfg = make_db(store, folder, sink.port, n)
            build_queue(cfg)
            rss = [folder / f"rss-{i}" for i in range(k)]
            t0 = time.perf_counter()
            procs = [start_send(config, rss[i]) for i in range(k)]
            try:
                runs = [finish_send(p, r) for p, r in zip(procs, rss, strict=True)]
            finally:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
            wall = time.perf_counter() - t0
    finally:
        received = sink.stop()
    return {"k": k, "rate": n / wall, "wall": wall, "runs": runs, "received": received}


def bench_queue(kind: str, n: int, tmp: Path) -> float:
    """Seconds to build the digest (its delivery queue) for n subscribers."""
    folder = tmp / f"queue-{kind}-{n}"
    with Store(kind, folder) as store:
        _, cfg = make_db(store, folder, free_port(), n)
        return build_queue(cfg)[0]


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
        store = Store("sqlite", tmp / "naive")
        _, cfg = make_db(store, tmp / "naive", sink.port, 1)
        db = Database(cfg.database_url)
        renderer = render.Renderer(cfg)
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
        store = Store("sqlite", tmp / "limit")
        _, cfg = make_db(store, tmp / "limit", sink.port, n, smtp={"max_per_second": limit})
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


def suite_sizes(args: argparse.Namespace, kinds: list[str], tmp: Path) -> None:
    """The original suite: mailer for each N (on each database), smtp-source, naive, limit."""
    sizes = [int(x) for x in args.sizes.split(",")]
    results = []
    for kind in kinds:
        for n in sizes:
            r = bench_mailer(n, tmp, kind)
            results.append((kind, r))
            print(
                f"mailer {kind:<10} N={n:>7,}: {r['rate']:7.0f} msg/s  ({r['wall']:.1f} s, process start "
                f"included; delivery phase {r['send_rate']:.0f} msg/s)  peak RSS {r['rss']:.0f} MB  "
                f"queue built in {r['queue_s']:.2f} s  sink counted {r['received']:,}  "
                f"message {r['size'] / 1024:.0f} KB"
            )
            if r["received"] != n:
                raise SystemExit(f"smtp-sink counted {r['received']} messages, expected {n}")
    size = int(results[0][1]["size"])
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
    for kind, r in results:
        print(
            f"  {kind:<10} N={r['n']:>7,}: mailer / smtp-source = {r['rate'] / source:.2f} (target >= 0.5); "
            f"mailer / naive = {r['rate'] / naive:.0f}x (target >= 30x)"
        )
    for kind in kinds:
        own = [r for k, r in results if k == kind]
        if len(own) > 1:
            print(
                f"  {kind:<10} peak memory N={own[-1]['n']:,} / N={own[0]['n']:,} = "
                f"{own[-1]['rss'] / own[0]['rss']:.2f} (target <= 1.2; and < 100 MB)"
            )
        print(f"  {kind:<10} queue for N={own[-1]['n']:,}: {own[-1]['queue_s']:.2f} s (target < 2 s)")


def side_by_side(n: int, kinds: list[str], tmp: Path) -> dict[str, dict[str, float]]:
    """Item 1: one instance per database and smtp-source, all into smtp-sink."""
    target = {"postgresql": 0.6, "sqlite": 0.7}
    print(
        f"1. one instance per database, and smtp-source; {CONNECTIONS} connections each; smtp-sink; N={n:,}"
    )
    runs = {kind: bench_mailer(n, tmp, kind) for kind in kinds}
    size = int(next(iter(runs.values()))["size"])
    source = bench_smtp_source(n, size)
    for kind, r in runs.items():
        print(
            f"   mailer on {kind:<10}: {r['rate']:6.0f} msg/s ({r['wall']:.1f} s, process start to exit; "
            f"delivery phase {r['send_rate']:.0f} msg/s)  peak RSS {r['rss']:.0f} MB  "
            f"sink counted {r['received']:,}"
        )
    print(f"   smtp-source -d -s {CONNECTIONS}, {n:,} x {size / 1024:.0f} KB: {source:6.0f} msg/s")
    for kind, r in runs.items():
        print(f"   {kind} / smtp-source = {r['rate'] / source:.2f} (target >= {target[kind]})")
    if len(runs) == 2:
        print(f"   postgresql / sqlite = {runs['postgresql']['rate'] / runs['sqlite']['rate']:.2f}")
    return runs


def one_against_two(m: int, delay: float, tmp: Path) -> dict[int, dict[str, Any]]:
    """Item 2: one instance against two on PostgreSQL when the relay is the bottleneck."""
    print(
        f"2. PostgreSQL, relay-bound (bench/slow_sink.py holds each message {delay * 1000:.0f} ms; "
        f"{CONNECTIONS} connections per instance), N={m:,}; first start to last exit"
    )
    by_k = {k: bench_instances(k, m, delay, tmp) for k in (1, 2)}
    for k, r in by_k.items():
        shares = " + ".join(f"{s.sent:,}" for s in r["runs"])
        peaks = ", ".join(f"{s.rss_mb:.0f}" for s in r["runs"])
        print(
            f"   {k} instance{'s' if k > 1 else ' '}: {r['rate']:6.0f} msg/s ({r['wall']:.1f} s)  "
            f"sent {shares}  sink counted {r['received']:,}  peak RSS {peaks} MB"
        )
    ceiling = CONNECTIONS / delay
    print(f"   one / its ceiling ({CONNECTIONS} connections / {delay} s = {ceiling:.0f} msg/s) = ", end="")
    print(f"{by_k[1]['rate'] / ceiling:.2f}")
    print(f"   two / one = {by_k[2]['rate'] / by_k[1]['rate']:.2f} (target >= 1.7)")
    return by_k


def suite_instances(args: argparse.Namespace, kinds: list[str], tmp: Path) -> None:
    """Issue 9's figures: databases side by side, one against two instances, the queue."""
    runs = side_by_side(args.n, kinds, tmp)
    peaks = [(f"{kind}, N={args.n:,}", r["rss"]) for kind, r in runs.items()]
    if "postgresql" in kinds and args.slow_n > 0:
        by_k = one_against_two(args.slow_n, args.delay, tmp)
        peaks += [(f"{k} on postgresql", s.rss_mb) for k, r in by_k.items() for s in r["runs"]]
    q = args.queue_n
    print(f"3. building the queue (digest build) for {q:,} subscribers; peak memory per sending instance")
    for kind in kinds if q > 0 else []:
        print(f"   {kind:<10}: {bench_queue(kind, q, tmp):.2f} s (target < 2 s)")
    if q <= 0:
        print("   (queue build skipped: --queue-n 0)")
    worst = max(peaks, key=lambda p: p[1])
    print(
        f"   peak RSS, largest of {len(peaks)} sending processes above: {worst[1]:.0f} MB ({worst[0]})",
        end="",
    )
    print(" (target < 100 MB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=("sizes", "instances"), default="sizes")
    ap.add_argument(
        "--database",
        choices=("sqlite", "postgresql", "both"),
        help="default: sqlite for sizes, both for instances",
    )
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--naive", type=int, default=200, help="recipients for the naive baseline")
    ap.add_argument("--limit", type=int, default=200, help="max_per_second for the rate-limit check")
    ap.add_argument("--limit-seconds", type=int, default=10)
    ap.add_argument("-n", "--n", type=int, default=10000, help="instances: readers for the side-by-side run")
    ap.add_argument("--slow-n", type=int, default=6000, help="instances: readers for one against two")
    ap.add_argument(
        "--delay", type=float, default=0.02, help="instances: seconds the slow relay holds each message"
    )
    ap.add_argument("--queue-n", type=int, default=100000, help="instances: subscribers for the queue build")
    ap.add_argument(
        "--pg-synchronous-commit",
        choices=("on", "off"),
        default="on",
        help="the throw-away PostgreSQL databases' synchronous_commit (default on, as in production)",
    )
    args = ap.parse_args()
    Store.synchronous_commit = args.pg_synchronous_commit
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    # Alembic's comparison on SQLite, harmless here: keep it out of the figures.
    warnings.filterwarnings("ignore", message="Skipped unsupported reflection")
    for tool in ("smtp-sink", "smtp-source"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install postfix (the daemon is not needed)")
    database = args.database or ("sqlite" if args.suite == "sizes" else "both")
    kinds = ["postgresql", "sqlite"] if database == "both" else [database]
    if "postgresql" in kinds:
        try:
            _admin().close()
        except psycopg.Error as exc:
            raise SystemExit(f"PostgreSQL on 127.0.0.1:5432 (user postgres) unreachable: {exc}") from exc
    with tempfile.TemporaryDirectory(prefix="mailer-bench-") as t:
        print(
            f"machine: {os.cpu_count()} cores; {CONNECTIONS} SMTP connections per instance; "
            "sink: Postfix smtp-sink unless said"
        )
        if args.suite == "sizes":
            suite_sizes(args, kinds, Path(t))
        else:
            suite_instances(args, kinds, Path(t))


if __name__ == "__main__":
    main()
