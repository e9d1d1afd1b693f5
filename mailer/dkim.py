"""DKIM signing (RFC 6376) of the rendered messages, with dkimpy.

The key file is read and checked once, when the signer is built: a missing, unreadable,
encrypted, too short or broken key is a ConfigError naming `dkim.key_file` and the path,
never the key. Each message is then signed with rsa-sha256, relaxed/relaxed.

Signing costs about 15 ms per 75 KB digest message with a 2048-bit key, all of it pure
Python in dkimpy and under the GIL: ~10 ms the RSA operation, ~3 ms the relaxed body
canonicalisation, ~2 ms parsing the message, ~0.4 ms re-parsing the PEM key (dkim.sign
takes the PEM text, not a parsed key). That is ~400 times the cost of rendering, and
threads do not help: one process signs at most ~70-80 messages a second.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
from pathlib import Path

import dkim
from dkim.crypto import RSASSA_PKCS1_v1_5_sign, RSASSA_PKCS1_v1_5_verify, parse_pem_private_key

from mailer.config import Config
from mailer.errors import ConfigError

log = logging.getLogger(__name__)

# Every header MessageTemplate writes. List-Unsubscribe and List-Unsubscribe-Post must be
# covered for one-click unsubscribe (RFC 8058 section 4); dkimpy's default list lacks the latter.
SIGNED_HEADERS = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "MIME-Version",
    "Content-Type",
)
# Each name twice: the second, absent instance ("oversigning", RFC 6376 section 8.15) breaks
# the signature if anyone adds a second From, Subject, List-Unsubscribe... on the way.
_INCLUDE = [name.lower().encode("ascii") for name in SIGNED_HEADERS] * 2
_CANONICALIZE = (b"relaxed", b"relaxed")
MIN_KEY_BITS = 1024  # receivers (dkimpy included) reject signatures made with shorter keys
_MAX_KEY_FILE = 64 * 1024
_ENCRYPTED = re.compile(rb"-----BEGIN ENCRYPTED |^Proc-Type: *4, *ENCRYPTED", re.MULTILINE)


class DkimSigner:
    """Prepends a DKIM-Signature header to rendered messages. Thread-safe (immutable)."""

    def __init__(self, domain: str, selector: str, key_pem: bytes) -> None:
        """`key_pem` must already be checked (load_key); use from_config."""
        self.domain = domain
        self.selector = selector
        self._domain = domain.encode("ascii")
        self._selector = selector.encode("ascii")
        self._key = key_pem

    @classmethod
    def from_config(cls, cfg: Config) -> DkimSigner | None:
        """The signer for `[dkim]`, or None when signing is disabled."""
        conf = cfg.dkim
        if not conf.enabled:
            return None
        return cls(conf.domain, conf.selector, load_key(cfg.resolve(conf.key_file)))

    def sign(self, message: bytes) -> bytes:
        """`message` (CRLF line ends) with its DKIM-Signature header prepended."""
        header = dkim.sign(
            message,
            self._selector,
            self._domain,
            self._key,
            canonicalize=_CANONICALIZE,
            include_headers=_INCLUDE,
        )
        # dkimpy folds with CRLF and ends the field with CRLF; make sure of both, as a bare
        # LF in the header section gets a message rejected or rewritten by some MTAs.
        header = header.replace(b"\r\n", b"\n").rstrip(b"\n").replace(b"\n", b"\r\n") + b"\r\n"
        return header + message

    def __repr__(self) -> str:
        return f"DkimSigner(domain={self.domain!r}, selector={self.selector!r})"


def load_key(path: Path) -> bytes:
    """The PEM private key at `path`, checked to sign and verify; ConfigError otherwise.

    Error messages name the file, never its content."""

    def fail(reason: str) -> ConfigError:
        return ConfigError(f"dkim.key_file: {path}: {reason}")

    try:
        info = path.stat()
        if stat.S_ISREG(info.st_mode) and info.st_size > _MAX_KEY_FILE:
            raise fail(f"{info.st_size} bytes is too large for a private key file")
        data = path.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read the private key: {exc.strerror or type(exc).__name__}") from None
    if os.name == "posix" and info.st_mode & 0o077:
        log.warning(
            "dkim.key_file %s can be read by other users (mode %o); restrict it with chmod 600",
            path,
            stat.S_IMODE(info.st_mode),
        )
    # dkimpy finds the base64 between "--\n" and "\n--": a key saved with CRLF is not found.
    pem = data.replace(b"\r\n", b"\n")
    if _ENCRYPTED.search(pem):
        raise fail("the private key is encrypted; DKIM needs it unencrypted (and chmod 600)")
    try:
        key = parse_pem_private_key(pem)
        bits = key["modulus"].bit_length()
        if bits >= MIN_KEY_BITS:
            # A key whose parts do not match parses fine and signs garbage: try it once.
            digest = hashlib.sha256(b"mailer DKIM key check")
            public = {"modulus": key["modulus"], "publicExponent": key["publicExponent"]}
            consistent = RSASSA_PKCS1_v1_5_verify(digest, RSASSA_PKCS1_v1_5_sign(digest, key), public)
    # Anything in arbitrary bytes can trip the ASN.1 and RSA code; the exception text may
    # quote key bytes, so it is not shown.
    except Exception:
        raise fail("not a PEM RSA private key (PKCS#1 or PKCS#8, unencrypted)") from None
    if bits < MIN_KEY_BITS:
        raise fail(f"the RSA key has {bits} bits; DKIM needs at least {MIN_KEY_BITS} (2048 recommended)")
    if not consistent:
        raise fail("the RSA private key is damaged: its signatures do not verify")
    return pem
