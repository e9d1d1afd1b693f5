"""Unsubscribe tokens: HMAC-SHA256 over the subscriber id and their per-subscriber nonce.

The secret comes from MAILER_SECRET_KEY or, in the embedded default, from a key file
generated once with owner-only permissions. Rotating a subscriber's nonce revokes their
old links; forgetting them makes every link they hold invalid.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

_TOKEN = re.compile(r"^([1-9][0-9]{0,17})\.([A-Za-z0-9_-]{43})$")


def load_secret(var_dir: Path) -> bytes:
    env = os.environ.get("MAILER_SECRET_KEY", "")
    if env:
        return env.encode("utf-8")
    path = var_dir / "secret.key"
    if not path.exists():
        var_dir.mkdir(parents=True, exist_ok=True)
        # O_EXCL: two processes starting at once cannot both write a different key.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
    return path.read_text().strip().encode("utf-8")


class Tokens:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _mac(self, subscriber_id: int, nonce: str) -> str:
        digest = hmac.new(
            self._secret, f"unsubscribe:{subscriber_id}:{nonce}".encode(), hashlib.sha256
        ).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def make(self, subscriber_id: int, nonce: str) -> str:
        return f"{subscriber_id}.{self._mac(subscriber_id, nonce)}"

    @staticmethod
    def subscriber_id(token: str) -> int | None:
        """The id a well-formed token claims (not yet verified)."""
        m = _TOKEN.match(token)
        return int(m.group(1)) if m else None

    def verify(self, token: str, subscriber_id: int, nonce: str) -> bool:
        return hmac.compare_digest(token.encode(), self.make(subscriber_id, nonce).encode())
