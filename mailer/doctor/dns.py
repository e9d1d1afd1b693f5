"""DNS for the sending domains (dnspython): SPF, DMARC and the DKIM public keys.

* SPF is looked up where receivers evaluate it: the envelope sender's domain, which is
  that of `bounces.address` with VERP on, else that of `smtp.from_address`. Exactly one
  TXT record starting `v=spf1` must be there (two are a permanent error for receivers);
  `+all` authorises every server on the Internet and is a warning. Whether the relay's
  own addresses are in it is not evaluated (that needs the relay's outbound IPs).
* DMARC: one TXT record `v=DMARC1` with a valid `p=` at `_dmarc.<From domain>`, else at
  the `_dmarc.` of a parent domain (the organisational domain's record covers its
  subdomains, through `sp=` when set). p=none is enough for Gmail's and Yahoo's rules.
* DKIM, with `[dkim] enabled`: the TXT record at `<selector>._domainkey.<dkim.domain>`
  holds the public key of `dkim.key_file` (RSA, compared as keys, so PKCS#1 or SPKI
  encodings both match), and the ed25519 one at its own selector when configured
  (`k=ed25519`, the raw 32-byte key). When a key is missing or different, the fix is the
  exact record to publish. DKIM off is a warning: a relay may sign for the domain itself.

The resolver is the system's, or `Options.dns_server`; each query waits `Options.timeout`
at most, and once one has timed out the remaining lines say "not checked" at once.
"""

from __future__ import annotations

import base64
import binascii

import dns.exception
import dns.resolver

from mailer.config import Config
from mailer.doctor import Check, Options, error, ok, warning
from mailer.errors import ConfigError

NO_ANSWER = "not checked: DNS did not answer"
DNS_FIX = "check the DNS server (`--dns-server HOST[:PORT]` asks another one) and try again"


class DnsDown(Exception):
    """The DNS server does not answer (timeout, refused, SERVFAIL, no resolver)."""


class Lookup:
    """TXT queries through one resolver; after the first DnsDown every query fails at once."""

    def __init__(self, options: Options) -> None:
        self.down = ""
        self.resolver: dns.resolver.Resolver | None = None
        server = options.dns_server
        self.server = f"{server[0]}:{server[1]}" if server else "the system's resolver"
        try:
            resolver = dns.resolver.Resolver(configure=options.dns_server is None)
        except dns.resolver.NoResolverConfiguration:
            self.down = "no DNS resolver configured (/etc/resolv.conf)"
            return
        if options.dns_server is not None:
            resolver.nameservers = [options.dns_server[0]]
            resolver.port = options.dns_server[1]
        resolver.timeout = resolver.lifetime = options.timeout
        self.resolver = resolver

    def txt(self, name: str) -> list[str]:
        """The TXT records at `name` (each one's strings joined); [] when there are none."""
        if self.down or self.resolver is None:
            raise DnsDown(self.down)
        try:
            answer = self.resolver.resolve(name, "TXT", raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            return []
        except dns.exception.Timeout:
            self.down = f"no answer from {self.server} within {self.resolver.lifetime:g} s"
            raise DnsDown(self.down) from None
        except dns.exception.DNSException as exc:  # NoNameservers (SERVFAIL, REFUSED), ...
            self.down = f"{self.server}: {exc}"
            raise DnsDown(self.down) from None
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer.rrset or []]


def checks(cfg: Config, options: Options) -> list[Check]:
    lookup = Lookup(options)
    found = [spf(cfg, lookup), dmarc(cfg, lookup)]
    if not cfg.dkim.enabled:
        found.append(
            warning(
                "DKIM",
                "off: mailer does not sign",
                f"set [dkim] (config.toml says how), unless the relay signs with d={from_domain(cfg)}: "
                "Gmail and Yahoo require DKIM of bulk senders",
            )
        )
        return found
    found.append(dkim_key(cfg, lookup, "DKIM", cfg.dkim.selector))
    if cfg.dkim.ed25519_selector:
        found.append(dkim_key(cfg, lookup, "DKIM ed25519", cfg.dkim.ed25519_selector))
    return found


def from_domain(cfg: Config) -> str:
    return cfg.smtp.from_address.rpartition("@")[2].lower()


def envelope_domain(cfg: Config) -> str:
    """The MAIL FROM domain: the VERP bounce address's, else the From address's."""
    return (cfg.bounces.address or cfg.smtp.from_address).rpartition("@")[2].lower()


def spf(cfg: Config, lookup: Lookup) -> Check:
    domain = envelope_domain(cfg)
    try:
        records = [t for t in lookup.txt(domain) if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")]
    except DnsDown as exc:
        return error("SPF", f"{domain}: {NO_ANSWER} ({exc})", DNS_FIX)
    if not records:
        return error(
            "SPF",
            f"no SPF record at {domain}",
            f'publish a TXT record at {domain}: "v=spf1 include:<your relay\'s SPF domain> ~all" '
            "(the relay's documentation names it)",
        )
    if len(records) > 1:
        return error(
            "SPF",
            f"{len(records)} SPF records at {domain}: receivers treat that as an error (permerror)",
            "merge them into one v=spf1 record",
        )
    if records[0].lower().split()[-1] in ("+all", "all"):
        return warning(
            "SPF", f'{domain}: "{records[0]}" lets every server send as you', 'end it with "~all" or "-all"'
        )
    return ok("SPF", f'{domain}: "{records[0]}"')


def _tags(record: str) -> dict[str, str]:
    """`v=DMARC1; p=none` -> {"v": "DMARC1", "p": "none"} (RFC 6376 3.2 tag lists)."""
    tags = {}
    for part in record.split(";"):
        name, eq, value = part.partition("=")
        if eq:
            tags[name.strip().lower()] = "".join(value.split())
    return tags


def dmarc(cfg: Config, lookup: Lookup) -> Check:
    domain = from_domain(cfg)
    labels = domain.split(".")
    # The From domain's own record, else its parents' (at least two labels each).
    for i in range(max(len(labels) - 1, 1)):
        name = "_dmarc." + ".".join(labels[i:])
        try:
            records = [t for t in lookup.txt(name) if t.replace(" ", "").upper().startswith("V=DMARC1")]
        except DnsDown as exc:
            return error("DMARC", f"{name}: {NO_ANSWER} ({exc})", DNS_FIX)
        if records:
            return _dmarc_record(name, records, own=i == 0)
    return error(
        "DMARC",
        f"no DMARC record at _dmarc.{domain}",
        f'publish a TXT record at _dmarc.{domain}: "v=DMARC1; p=none; rua=mailto:dmarc@{domain}" '
        "(p=none at least: Gmail and Yahoo require one of bulk senders)",
    )


def _dmarc_record(name: str, records: list[str], own: bool) -> Check:
    if len(records) > 1:
        return error("DMARC", f"{len(records)} DMARC records at {name}: receivers ignore all", "keep one")
    tags = _tags(records[0])
    policy = tags.get("p", "").lower() if own else tags.get("sp", tags.get("p", "")).lower()
    which = "p" if own or "sp" not in tags else "sp"
    if policy not in ("none", "quarantine", "reject"):
        return error(
            "DMARC",
            f'{name}: "{records[0]}" has no valid p= (none, quarantine or reject)',
            'make it "v=DMARC1; p=none; ..." at least',
        )
    note = " (reports only; quarantine or reject also protect the domain)" if policy == "none" else ""
    return ok("DMARC", f"{name}: {which}={policy}{note}")


def expected_key(cfg: Config, ed25519: bool) -> tuple[str, str]:
    """The key type (k=) and the public key (p=, base64) of a configured private key."""
    from cryptography.hazmat.primitives import serialization

    from mailer.dkim import load_ed25519_key, load_key

    if ed25519:
        raw = (
            load_ed25519_key(cfg.resolve(cfg.dkim.ed25519_key_file))
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
        return "ed25519", base64.b64encode(raw).decode("ascii")
    der = (
        load_key(cfg.resolve(cfg.dkim.key_file))
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return "rsa", base64.b64encode(der).decode("ascii")


def dkim_key(cfg: Config, lookup: Lookup, label: str, selector: str) -> Check:
    ed25519 = label != "DKIM"
    try:
        kind, expected = expected_key(cfg, ed25519)
    except ConfigError as exc:
        setting = "dkim.ed25519_key_file" if ed25519 else "dkim.key_file"
        return error(label, str(exc), f"point {setting} at the private key (PEM, unencrypted, chmod 600)")
    name = f"{selector}._domainkey.{cfg.dkim.domain}"
    record = f"v=DKIM1; k={kind}; p={expected}"
    try:
        found = [t for t in lookup.txt(name) if "p=" in t.replace(" ", "")]
    except DnsDown as exc:
        return error(label, f"{name}: {NO_ANSWER} ({exc})", DNS_FIX)
    if not found:
        return error(label, f"no DKIM key at {name}", f'publish a TXT record at {name}: "{record}"')
    tags = _tags(found[0])
    published = tags.get("p", "")
    if len(found) > 1 or not published or tags.get("k", "rsa").lower() != kind:
        what = "revoked (empty p=)" if not published else f"not one {kind} key"
        return error(label, f"{name}: {what}", f'publish exactly this TXT record at {name}: "{record}"')
    if not _same_key(kind, published, expected):
        return error(
            label,
            f"{name}: the published key is not the public key of the configured private key",
            f'publish this TXT record at {name} instead: "{record}" (or configure the matching key file)',
        )
    return ok(label, f"{name}: the {kind} key matches the private key")


def _same_key(kind: str, published: str, expected: str) -> bool:
    from cryptography.hazmat.primitives import serialization

    try:
        raw = base64.b64decode(published, validate=True)
    except (binascii.Error, ValueError):
        return False
    if kind == "ed25519":
        return raw == base64.b64decode(expected)
    try:
        key = serialization.load_der_public_key(raw)
        der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    except (ValueError, TypeError):
        return False
    return der == base64.b64decode(expected)
