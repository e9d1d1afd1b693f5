"""Gmail's and Yahoo's bulk-sender rules (February 2024), from the other checks' lines.

Senders of 5,000 or more messages a day to their users must have (Gmail's "Email sender
guidelines", Yahoo's "Sender Best Practices"):

* SPF and DKIM for the sending domain;
* DMARC, p=none at least;
* the From domain aligned with SPF's (the envelope sender's) or DKIM's d= domain;
* one-click unsubscribe (RFC 8058: List-Unsubscribe with an https URL, and
  List-Unsubscribe-Post), which mailer puts in every message when base_url is https;
* TLS for the connection that hands the message over (here: to the relay).

(Also a spam-complaint rate under 0.3 %, which `mailer digest status` shows after a send,
and valid forward and reverse DNS for the sending IPs, which is the relay's.)

A requirement is met when its line is ok, missing when the line shows it absent, and not
verified when mailer cannot know it (DKIM off in mailer: the relay may sign; the relay did
not answer). Alignment is strict-or-subdomain (one domain equal to or under the other): a
sibling subdomain of the same organisation aligns for receivers too, but telling that
needs the public-suffix list, so it is reported as not verified rather than met.
"""

from __future__ import annotations

from mailer.config import Config
from mailer.doctor import Check, Verdict, error, ok, warning
from mailer.doctor.dns import envelope_domain, from_domain

NAME = "bulk senders"
# The lines that only matter when mail goes out through a real relay (see mailer.doctor).
REAL_RELAY_CHECKS = frozenset({"SPF", "DMARC", "DKIM", "DKIM ed25519", "unsubscribe", NAME})
MET, MISSING, UNKNOWN = "met", "missing", "not verified"


def aligned(a: str, b: str) -> bool:
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    return a == b or a.endswith("." + b) or b.endswith("." + a)


def requirements(cfg: Config, checks: list[Check]) -> dict[str, str]:
    """Each requirement and whether it is met, missing or not verified."""
    verdicts = {c.name: c.verdict for c in checks}

    def state(name: str) -> str:
        verdict = verdicts.get(name)
        return MET if verdict is Verdict.OK else UNKNOWN if verdict is None else MISSING

    dkim = state("DKIM") if cfg.dkim.enabled else UNKNOWN
    spf = state("SPF")
    by_dkim = dkim == MET and aligned(cfg.dkim.domain, from_domain(cfg))
    by_spf = spf == MET and aligned(envelope_domain(cfg), from_domain(cfg))
    alignment = MET if by_dkim or by_spf else UNKNOWN if dkim == UNKNOWN else MISSING
    relay_ok = verdicts.get("relay") is Verdict.OK
    tls = MISSING if cfg.smtp.security == "none" else MET if relay_ok else UNKNOWN
    return {
        "SPF": spf,
        "DKIM": dkim,
        "DMARC p=none at least": state("DMARC"),
        "From aligned with SPF or DKIM": alignment,
        "one-click List-Unsubscribe over https": state("unsubscribe"),
        "TLS to the relay": tls,
    }


def bulk_senders(cfg: Config, checks: list[Check]) -> Check:
    found = requirements(cfg, checks)
    groups = {s: [name for name, got in found.items() if got == s] for s in (MISSING, UNKNOWN, MET)}
    said = "; ".join(f"{s}: {', '.join(names)}" for s, names in groups.items() if names)
    if not groups[MISSING] and not groups[UNKNOWN]:
        return ok(NAME, f"Gmail's and Yahoo's rules (Feb 2024) all met: {', '.join(groups[MET])}")
    fix = "the lines above say how; without these Gmail and Yahoo refuse or junk bulk mail"
    if groups[MISSING]:
        return error(NAME, f"Gmail's and Yahoo's rules (Feb 2024): {said}", fix)
    return warning(NAME, f"Gmail's and Yahoo's rules (Feb 2024): {said}", fix)
