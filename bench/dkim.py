"""DKIM benchmark: the same digest delivered to the same readers with DKIM off, with an
rsa-sha256 signature, and with rsa-sha256 plus ed25519-sha256, in one run; and the cost of
signing one message, dkimpy (what mailer used before) against mailer.dkim, measured directly.

1. Delivery: for each variant, a database of its own (SQLite, the same sample articles and
   -n readers, so the same digest), its queue built beforehand, then a real
   `mailer digest send --now` process (4 SMTP connections) into Postfix's smtp-sink, which
   counts what it receives. Each figure is the command's own delivery-phase rate (its
   "msg/s over" line, without process start-up), the median of --rounds rounds whose
   variants run in a rotating order; beside it, the whole command's rate (start to exit)
   and its CPU time (user + system) per message. The issue's target: DKIM on >= 0.8 x DKIM
   off. Signing runs in the engine's threads without the GIL, so that ratio needs a core to
   spare; on a machine busy with other work it falls towards the ratio of the CPU costs.
2. Signing one rendered digest message (2048-bit RSA key, throw-away keys): dkimpy's
   dkim.sign as mailer called it; the same with only its RSA done by OpenSSL (the smallest
   change, which leaves dkimpy's pure-Python parsing and canonicalisation); DkimSigner.sign
   with one and with two signatures; then DkimSigner in one thread and in two at once.

Only ratios from the same run mean anything on a shared machine; nothing here asserts a
time. Usage: python bench/dkim.py [-n 10000] [--rounds 3] [--sign-n 300]
Needs smtp-sink (Debian package postfix; the daemon is not needed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Python puts this file's folder first on sys.path, where `dkim` is this file, not dkimpy.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import dkim as dkimpy  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils  # noqa: E402

from bench.delivery import CONNECTIONS, Sink, Store, build_queue, finish_send, make_db, start_send  # noqa: E402
from mailer import digest as digests  # noqa: E402
from mailer.config import Config  # noqa: E402
from mailer.db import Database  # noqa: E402
from mailer.dkim import SIGNED_HEADERS, DkimSigner, load_key  # noqa: E402
from mailer.message import MessageTemplate, Recipient  # noqa: E402

VARIANTS = ("off", "rsa", "rsa+ed25519")
LABELS = {"off": "DKIM off", "rsa": "DKIM rsa-sha256", "rsa+ed25519": "DKIM rsa + ed25519"}


def make_keys(folder: Path) -> tuple[Path, Path]:
    """A 2048-bit RSA and an Ed25519 private key, PEM, chmod 600."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    paths = (folder / "dkim-rsa.pem", folder / "dkim-ed25519.pem")
    for path, key in zip(paths, (rsa_key, ed_key), strict=True):
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path.write_bytes(pem)
        path.chmod(0o600)
    return paths


def dkim_section(variant: str, keys: tuple[Path, Path]) -> dict[str, Any]:
    if variant == "off":
        return {"enabled": False}
    section = {"enabled": True, "domain": "example.org", "selector": "mail", "key_file": str(keys[0])}
    if variant == "rsa+ed25519":
        section |= {"ed25519_selector": "ed", "ed25519_key_file": str(keys[1])}
    return section


def deliver(variant: str, n: int, keys: tuple[Path, Path], folder: Path) -> dict[str, float]:
    """One `mailer digest send --now` into smtp-sink: its rates, its CPU time per message,
    and the sink's count."""
    sink = Sink()
    try:
        with Store("sqlite", folder) as store:
            config, cfg = make_db(store, folder, sink.port, n, dkim=dkim_section(variant, keys))
            build_queue(cfg)
            t0 = time.perf_counter()
            proc = start_send(config, folder / "rss")
            # Beside start_send's GNU time (peak RSS): the process's user + system CPU time.
            cpu_before = os.times()
            sent = finish_send(proc, folder / "rss")
            cpu_after = os.times()
            wall = time.perf_counter() - t0
        time.sleep(0.3)
        received = sink.messages()
    finally:
        sink.stop()
    if received != n or sent.sent != n:
        raise SystemExit(f"{variant}: sent {sent.sent}, smtp-sink counted {received}, expected {n}")
    cpu = (cpu_after.children_user - cpu_before.children_user) + (
        cpu_after.children_system - cpu_before.children_system
    )
    return {"phase": sent.send_rate, "whole": n / wall, "rss": sent.rss_mb, "cpu_ms": cpu / n * 1000}


def sample_message(cfg: Config) -> bytes:
    """One rendered digest message, as the engine hands it to the signer."""
    db = Database(cfg.database_url)
    digest = digests.build(db, cfg, digests.manual_slot(datetime.now(UTC)))
    assert digest is not None
    template = MessageTemplate(cfg, digest.id, digest.subject, digest.html, digest.text)
    db.dispose()
    return template.render(Recipient(1, "reader1@example.com", "Zoë Reader", f"{cfg.digest.base_url}/u/x"))


def per_message(sign: Any, message: bytes, count: int) -> float:
    """Seconds per signature: the best of three batches."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(count):
            sign(message)
        best = min(best, (time.perf_counter() - t0) / count)
    return best


def threaded_rate(sign: Any, message: bytes, count: int, threads: int) -> float:
    """Signatures per second with `threads` threads signing `count` messages between them."""

    def work() -> None:
        for _ in range(count // threads):
            sign(message)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return (count // threads * threads) / (time.perf_counter() - t0)


def signing_costs(keys: tuple[Path, Path], folder: Path, count: int) -> None:
    with Store("sqlite", folder) as store:
        _, cfg = make_db(store, folder, 2525, 1, dkim=dkim_section("rsa+ed25519", keys))
    message = sample_message(cfg)
    both = DkimSigner.from_config(cfg)
    assert both is not None
    rsa_only = DkimSigner(both.domain, both.selector, load_key(keys[0]))
    pem = keys[0].read_bytes()
    include = [h.lower().encode() for h in SIGNED_HEADERS] * 2

    def old(m: bytes) -> bytes:  # what mailer.dkim did before: dkimpy with the PEM text
        return dkimpy.sign(
            m, b"mail", b"example.org", pem, canonicalize=(b"relaxed", b"relaxed"), include_headers=include
        )

    # The smallest change there was: dkimpy's parsing and canonicalisation kept, its RSA (and
    # its parsing of the PEM text) swapped for OpenSSL's, by replacing the two functions that
    # dkim.sign calls; what is left is dkimpy's pure-Python share.
    key = load_key(keys[0])
    pad, prehashed = padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())

    def dkimpy_with_openssl(m: bytes) -> bytes:
        swapped = {
            "parse_pem_private_key": lambda _pem: None,
            "RSASSA_PKCS1_v1_5_sign": lambda digest, _pk: key.sign(digest.digest(), pad, prehashed),
        }
        saved = {name: getattr(dkimpy, name) for name in swapped}
        try:
            for name, function in swapped.items():
                setattr(dkimpy, name, function)
            return old(m)
        finally:
            for name, function in saved.items():
                setattr(dkimpy, name, function)

    print(
        f"2. signing one {len(message) / 1024:.0f} KB digest message, 2048-bit RSA key, 1 thread (best of 3):"
    )
    figures = {}
    for label, sign, k in (
        ("dkimpy (before)", old, max(count // 20, 5)),
        ("dkimpy, RSA by OpenSSL", dkimpy_with_openssl, max(count // 5, 5)),
        ("mailer.dkim rsa-sha256", rsa_only.sign, count),
        ("mailer.dkim rsa + ed25519", both.sign, count),
    ):
        figures[label] = per_message(sign, message, k)
        print(f"   {label:<28} {figures[label] * 1000:7.3f} ms  ({1 / figures[label]:7,.0f} messages/s)")
    speedup = figures["dkimpy (before)"] / figures["mailer.dkim rsa-sha256"]
    print(f"   dkimpy / mailer.dkim rsa-sha256 = {speedup:.0f}x")
    one = threaded_rate(rsa_only.sign, message, count, 1)
    two = threaded_rate(rsa_only.sign, message, count, 2)
    print(
        f"   mailer.dkim rsa-sha256 in 1 thread {one:,.0f}/s, in 2 threads {two:,.0f}/s "
        f"(x{two / one:.2f}; ~x2 on 2 free cores if signing releases the GIL, ~x1 if it holds it)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--n", type=int, default=10000, help="readers")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the three variants")
    ap.add_argument("--sign-n", type=int, default=300, help="messages per batch for the signing costs")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    warnings.filterwarnings("ignore", message="Skipped unsupported reflection")
    if shutil.which("smtp-sink") is None:
        raise SystemExit("smtp-sink not found: apt-get install postfix (the daemon is not needed)")
    with tempfile.TemporaryDirectory(prefix="mailer-bench-dkim-") as t:
        tmp = Path(t)
        keys = make_keys(tmp)
        print(
            f"machine: {os.cpu_count()} cores; {CONNECTIONS} SMTP connections; N={args.n:,} readers; "
            "SQLite; sink: Postfix smtp-sink"
        )
        print("1. the same digest and readers, DKIM off and on; rate of the delivery phase (whole command)")
        runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
        for r in range(args.rounds):
            order = VARIANTS[r % 3 :] + VARIANTS[: r % 3]  # rotated: no variant always runs first
            line = []
            for variant in order:
                result = deliver(variant, args.n, keys, tmp / f"{variant}-{r}")
                runs[variant].append(result)
                line.append(f"{variant} {result['phase']:,.0f} ({result['whole']:,.0f})")
            print(f"   round {r + 1}: " + " | ".join(line) + " msg/s")
        median = {v: statistics.median(x["phase"] for x in runs[v]) for v in VARIANTS}
        whole = {v: statistics.median(x["whole"] for x in runs[v]) for v in VARIANTS}
        # Signing adds CPU (~0.5 ms a message in the process): where the machine has no core
        # to spare, the ratio is the two CPU costs' ratio, whatever runs in parallel.
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"   median of {args.rounds} rounds (load average now {load} on {os.cpu_count()} cores):")
        for v in VARIANTS:
            ratio = "" if v == "off" else f"   on/off = {median[v] / median['off']:.2f} (target >= 0.8)"
            whole_ratio = "" if v == "off" else f", on/off {whole[v] / whole['off']:.2f}"
            peak = max(x["rss"] for x in runs[v])
            cpu = statistics.median(x["cpu_ms"] for x in runs[v])
            print(
                f"   {LABELS[v]:<20} {median[v]:7,.0f} msg/s{ratio}   (whole command {whole[v]:,.0f} msg/s"
                f"{whole_ratio}; CPU {cpu:.2f} ms/message, start-up included; peak RSS {peak:.0f} MB)"
            )
        signing_costs(keys, tmp / "signing", args.sign_n)


if __name__ == "__main__":
    main()
