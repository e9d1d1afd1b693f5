"""Throughput benchmark (issue 13, target 3): mailer against smtp-source, 4 connections
against 16, and peak memory at 100,000 readers, each figure beside its baseline from the
same run.

1. Into Postfix's smtp-sink, 4 sessions each: Postfix's smtp-source (-d: one session per
   connection, reused) sending -n messages of the digest's size, and a real
   `mailer digest send --now` process delivering the same digest to -n readers (SQLite,
   queue built beforehand). --rounds rounds, the two alternating; each rate is from the
   process's start to its exit (mailer's start-up counts), the sink counting every message.
   Target: mailer >= 0.85 x smtp-source (the median of the rounds' ratios).
2. Relay-bound: bench/slow_sink.py holds each message --delay (20 ms) before its 250, so a
   connection carries at most 1 / delay messages a second. The same digest to --slow-n
   readers with smtp.connections = 4, then 16 (rotating order over --rounds rounds; the
   command's own delivery-phase rate, and the whole command's). Target: 16 >= 0.8 x 4 x
   the rate of 4, i.e. a ratio >= 3.2.
3. Peak memory: GNU time's maximum RSS (%M) of the sending process at --memory-n
   (100,000) readers into smtp-sink, beside the same at 1,000 readers (what the process
   costs before any reader) and a bare `python -c pass`. Target: under 80 MB.

Only ratios from the same run mean anything on a shared machine; nothing here asserts a
time. Usage: python bench/throughput.py [-n 30000] [--rounds 3] [--slow-n 8000]
             [--delay 0.02] [--memory-n 100000]
Needs smtp-sink and smtp-source (Debian package postfix; the daemon is not needed).
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
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.delivery import (  # noqa: E402
    Sent,
    Sink,
    SlowSink,
    Store,
    bench_smtp_source,
    build_queue,
    finish_send,
    make_db,
    start_send,
)

SOURCE_TARGET = 0.85
SCALING_TARGET = 0.8 * 4
MEMORY_TARGET_MB = 80


def send(folder: Path, n: int, port: int, connections: int) -> tuple[Sent, float, int]:
    """A fresh SQLite database of n readers, its digest built, then one timed
    `mailer digest send --now`: (its figures, n / wall seconds, message size)."""
    with Store("sqlite", folder) as store:
        config, cfg = make_db(store, folder, port, n, smtp={"connections": connections})
        _, size = build_queue(cfg)
        t0 = time.perf_counter()
        sent = finish_send(start_send(config, folder / "rss"), folder / "rss")
        wall = time.perf_counter() - t0
    if sent.sent != n:
        raise SystemExit(f"mailer sent {sent.sent} of {n}")
    return sent, n / wall, size


def against_smtp_source(n: int, rounds: int, tmp: Path) -> None:
    print(f"1. into smtp-sink, 4 sessions each, {n:,} messages; process start to exit")
    ratios = []
    for r in range(rounds):
        sink = Sink()
        try:
            sent, rate, size = send(tmp / f"source-{r}", n, sink.port, 4)
            time.sleep(0.3)
            counted = sink.messages()
        finally:
            sink.stop()
        if counted != n:
            raise SystemExit(f"smtp-sink counted {counted} of {n} mailer messages")
        source = bench_smtp_source(n, size)
        ratios.append(rate / source)
        print(
            f"   round {r + 1}: mailer {rate:6,.0f} msg/s (delivery phase {sent.send_rate:,.0f}; "
            f"peak RSS {sent.rss_mb:.0f} MB)  smtp-source {source:6,.0f} msg/s  "
            f"({size / 1024:.0f} KB messages)  ratio {rate / source:.2f}"
        )
    print(
        f"   mailer / smtp-source, median of {rounds}: {statistics.median(ratios):.2f} "
        f"(target >= {SOURCE_TARGET})"
    )


def scaling(n: int, rounds: int, delay: float, tmp: Path) -> None:
    print(
        f"2. relay-bound: bench/slow_sink.py holds each message {delay * 1000:.0f} ms "
        f"(a connection's ceiling {1 / delay:.0f} msg/s); {n:,} readers"
    )
    figures: dict[int, list[tuple[float, float]]] = {4: [], 16: []}
    for r in range(rounds):
        order = (4, 16) if r % 2 == 0 else (16, 4)
        line = []
        for connections in order:
            sink = SlowSink(delay)
            try:
                sent, rate, _ = send(tmp / f"slow-{r}-{connections}", n, sink.port, connections)
            finally:
                received = sink.stop()
            if received != n:
                raise SystemExit(f"the slow sink counted {received} of {n}")
            figures[connections].append((sent.send_rate, rate))
            line.append(f"{connections} connections {sent.send_rate:5,.0f} ({rate:5,.0f} whole)")
        print(f"   round {r + 1}: " + " | ".join(line) + " msg/s")
    phase = {k: statistics.median(v[0] for v in runs) for k, runs in figures.items()}
    whole = {k: statistics.median(v[1] for v in runs) for k, runs in figures.items()}
    for k in (4, 16):
        print(
            f"   {k:>2} connections, median: {phase[k]:6,.0f} msg/s delivery phase, "
            f"{whole[k]:6,.0f} whole command"
        )
    print(
        f"   16 / 4 = {phase[16] / phase[4]:.2f} delivery phase, {whole[16] / whole[4]:.2f} whole command "
        f"(target >= {SCALING_TARGET:.1f}, i.e. 0.8 x 4)"
    )


def peak_memory(n: int, tmp: Path) -> None:
    print("3. peak RSS of the sending process (GNU time %M), into smtp-sink")
    rss_file = tmp / "bare-rss"
    subprocess.run(
        ["/usr/bin/time", "-f", "%M", "-o", str(rss_file), sys.executable, "-c", "pass"], check=True
    )
    bare = int(rss_file.read_text().split()[-1]) / 1024
    rows: list[tuple[int, Any]] = []
    for readers in (1000, n):
        sink = Sink()
        try:
            sent, rate, _ = send(tmp / f"memory-{readers}", readers, sink.port, 4)
        finally:
            sink.stop()
        rows.append((readers, sent))
        print(f"   {readers:>7,} readers: {sent.rss_mb:5.1f} MB  ({rate:,.0f} msg/s)")
    print(f"   python -c pass: {bare:5.1f} MB")
    big = rows[-1][1].rss_mb
    print(
        f"   {n:,} readers / 1,000 readers = {big / rows[0][1].rss_mb:.2f}; "
        f"{n:,} readers: {big:.1f} MB (target < {MEMORY_TARGET_MB} MB)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=30000, help="readers and messages for the smtp-source comparison")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--slow-n", type=int, default=8000, help="readers for 4 against 16 connections")
    ap.add_argument("--delay", type=float, default=0.02, help="seconds the slow relay holds each message")
    ap.add_argument("--memory-n", type=int, default=100000, help="readers for the peak-memory figure")
    ap.add_argument("--only", choices=("source", "scaling", "memory"), help="run one part")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    warnings.filterwarnings("ignore", message="Skipped unsupported reflection")
    for tool in ("smtp-sink", "smtp-source"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install postfix (the daemon is not needed)")
    with tempfile.TemporaryDirectory(prefix="mailer-bench-") as t:
        tmp = Path(t)
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the start")
        if args.only in (None, "source"):
            against_smtp_source(args.n, args.rounds, tmp)
        if args.only in (None, "scaling"):
            scaling(args.slow_n, args.rounds, args.delay, tmp)
        if args.only in (None, "memory"):
            peak_memory(args.memory_n, tmp)


if __name__ == "__main__":
    main()
