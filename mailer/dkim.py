"""DKIM signing (RFC 6376) of the rendered messages: rsa-sha256, and optionally a second
signature with ed25519-sha256 (RFC 8463), both relaxed/relaxed, signed by OpenSSL through
the `cryptography` package.

Keys: each key file is read and checked once, when the signer is built: a missing,
unreadable, encrypted, too short, broken or damaged key is a ConfigError naming the setting
(`dkim.key_file`, `dkim.ed25519_key_file`) and the path, never the key.

What is signed: the fields in SIGNED_HEADERS, each named twice in h= (oversigning: the
second, absent instance breaks the signature if anyone adds a second From, Subject,
List-Unsubscribe... on the way), and the whole body (no l=). Both signatures cover the same
fields and body; neither covers the other, so a receiver that does not know ed25519 ignores
that one and checks the RSA one, which comes first.

Cost per 78 KB digest message, 2048-bit key, one thread (bench/dkim.py measures it): dkimpy
took ~9.5 ms, all pure Python under the GIL: ~6.3 ms the RSA operation, ~1.5 ms the relaxed
body canonicalisation (regular expressions over the whole body), ~0.8 ms splitting the message
into lines, ~0.15 ms re-parsing the PEM key. Swapping only its RSA for OpenSSL's still left
~3.2 ms of dkimpy's Python per message (at most ~300 messages/s), more than the whole message
costs without DKIM; hence the canonicalisation here. Now ~0.40 ms: ~0.25 ms the RSA signature
and ~0.045 ms hashing the body, both in C without the GIL (cryptography detaches around
OpenSSL's sign; hashlib for 2 KB and more), so the engine's threads sign in parallel; and
~0.1 ms under the GIL: ~0.035 ms the bare-LF scan, ~0.02 ms the body's fast-path scan,
~0.02 ms the header fields, the rest building the field. An Ed25519 signature adds ~0.04 ms.

Why the fast path is exact: relaxed body canonicalisation (RFC 6376 3.4.4) only (a) turns a
run of spaces and tabs into one space, (b) drops spaces and tabs at line ends and (c) drops
empty lines at the end. A body with no tab, no space before a space, a CR or its end, and no
bare LF leaves nothing for (a) and (b), so only (c) remains, done by slicing; the checks are
single scans in C. MessageTemplate's bodies (base64 parts, CRLF) always qualify; any other
body takes the general path, the same regular expressions as dkimpy's. A bare LF anywhere is
read as CRLF, as the relay and dkimpy read it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mailer.config import Config
from mailer.errors import ConfigError

# `cryptography` is imported where a key is loaded: its OpenSSL bindings cost every
# sending process ~8 MB of memory, needed only with DKIM on.
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

log = logging.getLogger(__name__)

# Every header MessageTemplate writes. List-Unsubscribe and List-Unsubscribe-Post must be
# covered for one-click unsubscribe (RFC 8058 section 4).
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
MIN_KEY_BITS = 1024  # receivers (dkimpy included) reject signatures made with shorter keys
_MAX_KEY_FILE = 64 * 1024
_ENCRYPTED = re.compile(rb"-----BEGIN ENCRYPTED |^Proc-Type: *4, *ENCRYPTED", re.MULTILINE)
_KEY_CHECK = b"mailer DKIM key check"

_WSP = re.compile(rb"[ \t]+")
_WSP_AT_LINE_END = re.compile(rb"[ \t]+(?=\r\n|\Z)")
# Each begins with a literal byte, so that re skips to its occurrences at C speed.
_BARE_LF = re.compile(rb"\n(?<!\r\n)")
_SPACE_TO_DROP = re.compile(rb" [ \r]| \Z")
_LINE_END = re.compile(rb"\r?\n")
_FIELD_END = re.compile(rb"\r\n(?![ \t])")  # a line end not followed by a continuation line
_B64_LINE = 72  # base64 characters per line of b=


def _fold_names(names: list[bytes], used: int) -> bytes:
    """`a:b:c...` with a line break after a colon wherever a line would pass 78 characters;
    `used` is the length of the line before it. (h= allows folding around its colons.)"""
    out = bytearray()
    for i, name in enumerate(names):
        piece = name + (b":" if i < len(names) - 1 else b";")
        if used + len(piece) > 78:
            out += b"\r\n "
            used = 1
        out += piece
        used += len(piece)
    return bytes(out)


@dataclass(frozen=True)
class _Key:
    """One signature: what precedes its t= value, what follows it up to bh=, and the signer."""

    head: bytes  # "DKIM-Signature: v=1; a=...; s=...;\r\n t="
    names: bytes  # "; h=from:to:...;\r\n bh="
    sign: Callable[[bytes], bytes]  # the canonical header data -> the raw signature

    def field(self, stamp: bytes, body_hash: bytes, headers: bytes) -> bytes:
        unsigned = self.head + stamp + self.names + body_hash + b";\r\n b="
        # The signature covers its own field with b= empty, canonical and without its CRLF.
        name, _, value = unsigned.partition(b":")
        signature = base64.b64encode(self.sign(headers + _relaxed_field(name.lower(), value)[:-2]))
        lines = [signature[i : i + _B64_LINE] for i in range(0, len(signature), _B64_LINE)]
        return unsigned + b"\r\n ".join(lines) + b"\r\n"


def _make_key(domain: str, selector: str, algorithm: bytes, sign: Callable[[bytes], bytes]) -> _Key:
    head = (
        f"DKIM-Signature: v=1; a={algorithm.decode()}; c=relaxed/relaxed; d={domain}; s={selector};\r\n t="
    ).encode("ascii")
    # The line of h= starts after " t=" and ten digits of time.
    names = b"; h=" + _fold_names(_INCLUDE, len(" t=1234567890; h=")) + b"\r\n bh="
    return _Key(head, names, sign)


class DkimSigner:
    """Prepends DKIM-Signature fields to rendered messages. Thread-safe (immutable; the
    `cryptography` keys may sign from several threads at once)."""

    def __init__(
        self,
        domain: str,
        selector: str,
        key: rsa.RSAPrivateKey,
        ed25519_selector: str = "",
        ed25519_key: ed25519.Ed25519PrivateKey | None = None,
    ) -> None:
        """The keys must already be checked (load_key, load_ed25519_key); use from_config."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        self.domain = domain
        self.selector = selector
        self.ed25519_selector = ed25519_selector if ed25519_key is not None else ""
        rsa_pad, sha256 = padding.PKCS1v15(), hashes.SHA256()
        self._keys = [
            _make_key(domain, selector, b"rsa-sha256", lambda data: key.sign(data, rsa_pad, sha256))
        ]
        if ed25519_key is not None:
            ed_key = ed25519_key

            def ed25519_sign(data: bytes) -> bytes:
                # RFC 8463 section 3: (pure) Ed25519 signs the SHA-256 hash of the header data.
                return ed_key.sign(hashlib.sha256(data).digest())

            self._keys.append(_make_key(domain, ed25519_selector, b"ed25519-sha256", ed25519_sign))

    @classmethod
    def from_config(cls, cfg: Config) -> DkimSigner | None:
        """The signer for `[dkim]`, or None when signing is disabled."""
        conf = cfg.dkim
        if not conf.enabled:
            return None
        key = load_key(cfg.resolve(conf.key_file))
        if not conf.ed25519_key_file.strip():
            return cls(conf.domain, conf.selector, key)
        ed_key = load_ed25519_key(cfg.resolve(conf.ed25519_key_file))
        return cls(conf.domain, conf.selector, key, conf.ed25519_selector, ed_key)

    def sign(self, message: bytes) -> bytes:
        """`message` (CRLF line ends) with its DKIM-Signature fields prepended."""
        text = message if _BARE_LF.search(message) is None else _LINE_END.sub(b"\r\n", message)
        end = text.find(b"\r\n\r\n")
        head, body_start = (text, len(text)) if end < 0 else (text[: end + 2], end + 4)
        headers = _signed_headers(head)
        body_hash = base64.b64encode(_body_hash(text, body_start))
        stamp = str(int(time.time())).encode("ascii")
        return b"".join(key.field(stamp, body_hash, headers) for key in self._keys) + message

    def __repr__(self) -> str:
        ed = f", ed25519_selector={self.ed25519_selector!r}" if self.ed25519_selector else ""
        return f"DkimSigner(domain={self.domain!r}, selector={self.selector!r}{ed})"


def _relaxed_field(name: bytes, value: bytes) -> bytes:
    """RFC 6376 3.4.2: `name` already lower-case; the value unfolded, each run of spaces and
    tabs one space, none at either end."""
    return name.rstrip(b" \t") + b":" + _WSP.sub(b" ", value.replace(b"\r\n", b"")).strip(b" ") + b"\r\n"


def _signed_headers(head: bytes) -> bytes:
    """The fields named in h=, canonical, in h= order: for a name listed n times, its last n
    instances from the bottom up, and nothing for instances that are not there."""
    found: dict[bytes, list[bytes]] = {}
    for field in _FIELD_END.split(head):
        name, colon, value = field.partition(b":")
        if colon:  # (the split leaves an empty piece after the last field)
            found.setdefault(name.rstrip(b" \t").lower(), []).append(value)
    selected = []
    for name in _INCLUDE:
        values = found.get(name)
        if values:
            selected.append(_relaxed_field(name, values.pop()))
    return b"".join(selected)


def _body_hash(text: bytes, start: int) -> bytes:
    """SHA-256 of the relaxed canonical form of text[start:] (see the module docstring)."""
    if text.find(b"\t", start) >= 0 or _SPACE_TO_DROP.search(text, start) is not None:
        text = _WSP.sub(b" ", _WSP_AT_LINE_END.sub(b"", text[start:]))
        start = 0
    end = len(text)
    while end > start and text.endswith(b"\r\n", start, end):
        end -= 2
    digest = hashlib.sha256(memoryview(text)[start:end])  # no copy; hashlib drops the GIL
    if end > start:
        digest.update(b"\r\n")  # an empty body stays empty
    return digest.digest()


# --- keys -----------------------------------------------------------------------------


def _read_key_file(path: Path, setting: str) -> bytes:
    def fail(reason: str) -> ConfigError:
        return ConfigError(f"{setting}: {path}: {reason}")

    try:
        info = path.stat()
        if stat.S_ISREG(info.st_mode) and info.st_size > _MAX_KEY_FILE:
            raise fail(f"{info.st_size} bytes is too large for a private key file")
        data = path.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read the private key: {exc.strerror or type(exc).__name__}") from None
    if os.name == "posix" and info.st_mode & 0o077:
        log.warning(
            "%s %s can be read by other users (mode %o); restrict it with chmod 600",
            setting,
            path,
            stat.S_IMODE(info.st_mode),
        )
    # Told apart before parsing: cryptography would only say that no password was given.
    if _ENCRYPTED.search(data):
        raise fail("the private key is encrypted; DKIM needs it unencrypted (and chmod 600)")
    return data


def load_key(path: Path) -> rsa.RSAPrivateKey:
    """The PEM RSA private key at `path` (dkim.key_file), checked; ConfigError otherwise.

    Error messages name the file, never its content."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    pem = _read_key_file(path, "dkim.key_file")

    def fail(reason: str) -> ConfigError:
        return ConfigError(f"dkim.key_file: {path}: {reason}")

    # Anything in arbitrary bytes can trip the parser; its exception text may quote key
    # bytes, so it is never shown. The parts' consistency is checked apart (below), so that
    # a damaged key is told from one that is no key at all.
    try:
        key = serialization.load_pem_private_key(pem, None, unsafe_skip_rsa_key_validation=True)
    except Exception:
        key = None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise fail("not a PEM RSA private key (PKCS#1 or PKCS#8, unencrypted)")
    if key.key_size < MIN_KEY_BITS:
        raise fail(
            f"the RSA key has {key.key_size} bits; DKIM needs at least {MIN_KEY_BITS} (2048 recommended)"
        )
    try:
        # OpenSSL's RSA_check_key: a key whose parts do not match parses fine, and its
        # signatures are wrong or (where OpenSSL catches its own fault) slow. Then one
        # signature, verified.
        checked = serialization.load_pem_private_key(pem, None)
        assert isinstance(checked, rsa.RSAPrivateKey)
        pad, sha256 = padding.PKCS1v15(), hashes.SHA256()
        key.public_key().verify(key.sign(_KEY_CHECK, pad, sha256), _KEY_CHECK, pad, sha256)
    except Exception:
        raise fail("the RSA private key is damaged: its parts do not agree") from None
    return checked


def load_ed25519_key(path: Path) -> ed25519.Ed25519PrivateKey:
    """The PEM Ed25519 private key at `path` (dkim.ed25519_key_file); ConfigError otherwise.

    An Ed25519 private key is a 32-byte seed from which the rest is derived, so one that
    parses cannot be inconsistent."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pem = _read_key_file(path, "dkim.ed25519_key_file")
    try:
        key = serialization.load_pem_private_key(pem, None)
    except Exception:  # see load_key
        key = None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(
            f"dkim.ed25519_key_file: {path}: not a PEM Ed25519 private key (PKCS#8, unencrypted; "
            "openssl genpkey -algorithm ed25519)"
        )
    return key
