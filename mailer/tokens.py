"""Unsubscribe and resubscribe tokens, and the secret key that signs them.

Unsubscribe tokens (`<id>.<mac>`) are HMAC-SHA256 over the purpose, the subscriber id and
their per-subscriber nonce. They sit in mail for years, so they never expire; rotating a
subscriber's nonce revokes their old links and forgetting them makes every link invalid.
The id is inside the MAC (not only in front of it), so one reader's MAC under another id
is refused even if two nonces were ever equal.

A resubscribe token is different: it only ever appears on the page that confirms an
unsubscribe, is an itsdangerous timed signature (RESUBSCRIBE_MAX_AGE) whose salt holds the
purpose, the id and the nonce, and so cannot be made from anything in a mail. A sign-up's
confirm token is made the same way with its own purpose, so neither can stand for the
other. Holding an
old mail therefore lets anyone unsubscribe its reader (which only does what they asked
for at some point), never resubscribe them.

The secret comes from MAILER_SECRET_KEY or, in the embedded default, from `var/secret.key`,
generated once with owner-only permissions. The file is written under a temporary name,
fsync'd and then hard-linked into place: link() fails if the name exists, so among
processes starting at once exactly one key wins, and every process reads a complete key
(the name never points at a half-written file). A key shorter than MIN_SECRET_CHARS (an
empty file, a truncated copy, a toy value in the environment) is refused with one line.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from itsdangerous import BadData, URLSafeTimedSerializer

from mailer.errors import ConfigError

_TOKEN = re.compile(r"^([1-9][0-9]{0,17})\.([A-Za-z0-9_-]{43})$")
_VERP = re.compile(r"^([1-9][0-9]{0,17})-([a-z2-7]{16})$")
_FRESH = re.compile(r"^([1-9][0-9]{0,17})\.([A-Za-z0-9_.-]{20,200})$")
MIN_SECRET_CHARS = 24
RESUBSCRIBE_MAX_AGE = 3600  # seconds


def load_secret(var_dir: Path) -> bytes:
    env = os.environ.get("MAILER_SECRET_KEY", "")
    if env:
        return _checked(env, "MAILER_SECRET_KEY", "set a longer one")
    path = var_dir / "secret.key"
    try:
        if not path.exists():
            _create_key(path)
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(f"{path}: cannot read or create the secret key: {reason}") from None
    return _checked(key, str(path), "delete the file to generate a new one, or set MAILER_SECRET_KEY")


def _checked(key: str, where: str, fix: str) -> bytes:
    if len(key.strip()) < MIN_SECRET_CHARS:
        state = "empty" if not key.strip() else "too short"
        raise ConfigError(
            f"{where}: the secret key is {state} (at least {MIN_SECRET_CHARS} characters; {fix})"
        )
    return key.encode("utf-8")


def _create_key(path: Path) -> None:
    """Make `path` hold a new key, unless another process gets there first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        # Atomic and never overwrites: the loser of a race keeps the winner's key.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the new name survives a power cut too
    finally:
        os.close(dir_fd)


class Tokens:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, subscriber_id: int, nonce: str, purpose: str = "unsubscribe") -> str:
        digest = hmac.new(
            self._secret, f"{purpose}:{subscriber_id}:{nonce}".encode(), hashlib.sha256
        ).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def make(self, subscriber_id: int, nonce: str) -> str:
        return f"{subscriber_id}.{self._mac(subscriber_id, nonce)}"

    def preferences(self, subscriber_id: int, nonce: str) -> str:
        """The preferences page's link: made and revoked like the unsubscribe token (the
        same nonce), under a purpose of its own so neither can stand for the other."""
        return f"{subscriber_id}.{self._mac(subscriber_id, nonce, 'preferences')}"

    def verify_preferences(self, token: str, subscriber_id: int, nonce: str) -> bool:
        return hmac.compare_digest(token.encode(), self.preferences(subscriber_id, nonce).encode())

    @staticmethod
    def subscriber_id(token: str) -> int | None:
        """The id a well-formed token claims (not yet verified)."""
        m = _TOKEN.match(token)
        return int(m.group(1)) if m else None

    def verify(self, token: str, subscriber_id: int, nonce: str) -> bool:
        return hmac.compare_digest(token.encode(), self.make(subscriber_id, nonce).encode())

    # ------------------------------------------------------------ resubscribe

    def _serializer(self, purpose: str, subscriber_id: int, nonce: str) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(self._secret, salt=f"mailer.{purpose}:{subscriber_id}:{nonce}")

    def _timed(self, purpose: str, subscriber_id: int, nonce: str) -> str:
        return f"{subscriber_id}.{self._serializer(purpose, subscriber_id, nonce).dumps(subscriber_id)}"

    def _verify_timed(self, purpose: str, token: str, subscriber_id: int, nonce: str, max_age: int) -> bool:
        prefix = f"{subscriber_id}."
        if not token.startswith(prefix):
            return False
        try:
            claimed = self._serializer(purpose, subscriber_id, nonce).loads(
                token[len(prefix) :], max_age=max_age
            )
        except BadData:
            return False
        return bool(claimed == subscriber_id)

    @staticmethod
    def timed_id(token: str) -> int | None:
        """The id a well-formed timed (resubscribe, confirm) token claims (not yet verified)."""
        m = _FRESH.match(token)
        return int(m.group(1)) if m else None

    def resubscribe(self, subscriber_id: int, nonce: str) -> str:
        """A token for the confirmation page's "subscribe again" button (RESUBSCRIBE_MAX_AGE)."""
        return self._timed("resubscribe", subscriber_id, nonce)

    resubscribe_id = timed_id

    def verify_resubscribe(self, token: str, subscriber_id: int, nonce: str) -> bool:
        return self._verify_timed("resubscribe", token, subscriber_id, nonce, RESUBSCRIBE_MAX_AGE)

    # ------------------------------------------------------------ double opt-in

    def confirm(self, subscriber_id: int, nonce: str) -> str:
        """The link of a sign-up's confirmation mail. It expires (signup.confirm_days) but
        stays valid after use, so a second click only says "you are confirmed"; a new
        nonce (the reader forgotten, or signed up afresh after leaving) revokes it."""
        return self._timed("confirm", subscriber_id, nonce)

    def verify_confirm(self, token: str, subscriber_id: int, nonce: str, max_age: int) -> bool:
        return self._verify_timed("confirm", token, subscriber_id, nonce, max_age)

    # ------------------------------------------------------------ VERP

    def verp(self, delivery_id: int) -> str:
        """The token of a delivery's envelope sender (bounces+<token>@domain): the id and an
        80-bit MAC, lower-case base32, because an MTA may fold the local part's case and a
        bounce must still map to exactly this delivery (never to one a forger names)."""
        digest = hmac.new(self._secret, f"verp:{delivery_id}".encode(), hashlib.sha256).digest()
        return f"{delivery_id}-{base64.b32encode(digest[:10]).decode().lower()}"

    def verp_delivery(self, token: str) -> int | None:
        """The delivery a VERP token names, or None when it is not one this key made."""
        m = _VERP.match(token.lower())
        if m is None:
            return None
        delivery_id = int(m.group(1))
        return delivery_id if hmac.compare_digest(self.verp(delivery_id), token.lower()) else None
