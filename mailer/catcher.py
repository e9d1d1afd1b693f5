"""The built-in mail catcher: a real SMTP server on loopback (aiosmtpd) that keeps every
message it receives as an .eml file, so the embedded default needs no external server."""

from __future__ import annotations

import email
import email.policy
import os
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from mailer.errors import MailerError, NotFound

# Microseconds in the name make name order arrival order, also within one second (names
# from before they were added, with seconds only, still match and sort first in their second).
_NAME = re.compile(r"^[0-9]{8}T[0-9]{6}(?:[0-9]{6})?-[0-9a-f]{32}\.eml$")
MAX_MESSAGE_BYTES = 10 * 1024 * 1024


class _Handler:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data = envelope.original_content or envelope.content
        if isinstance(data, str):
            data = data.encode("utf-8")
        save(self.folder, data)
        return "250 2.0.0 Message accepted for delivery"


def save(folder: Path, data: bytes) -> Path:
    """Write atomically (temp file + rename): the web UI never sees half a message."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex}.eml"
    tmp = folder / f".{name}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, folder / name)
    return folder / name


class MailCatcher:
    def __init__(self, host: str, port: int, folder: Path) -> None:
        self.folder = folder
        self.controller = Controller(
            _Handler(folder),
            hostname=host,
            port=port,
            data_size_limit=MAX_MESSAGE_BYTES,
            ready_timeout=10,
        )

    def start(self) -> None:
        try:
            self.controller.start()
        except (OSError, RuntimeError) as exc:
            raise MailerError(
                f"mail catcher cannot listen on {self.controller.hostname}:{self.controller.port}: {exc}"
            ) from None

    def stop(self) -> None:
        self.controller.stop()


@dataclass
class CaughtMessage:
    name: str
    received: datetime
    sender: str
    to: str
    subject: str
    size: int


def list_messages(folder: Path, limit: int = 200) -> list[CaughtMessage]:
    if not folder.is_dir():
        return []
    names = sorted((p.name for p in folder.iterdir() if _NAME.match(p.name)), reverse=True)
    out = []
    for name in names[:limit]:
        path = folder / name
        with path.open("rb") as fh:
            msg = email.message_from_binary_file(fh, policy=email.policy.default, _class=EmailMessage)
        out.append(
            CaughtMessage(
                name,
                datetime.strptime(name[:15], "%Y%m%dT%H%M%S").replace(tzinfo=UTC),
                str(msg.get("From", "")),
                str(msg.get("To", "")),
                str(msg.get("Subject", "")),
                path.stat().st_size,
            )
        )
    return out


def read_message(folder: Path, name: str) -> EmailMessage:
    if not _NAME.match(name) or not (folder / name).is_file():
        raise NotFound(f"no caught message {name!r}")
    with (folder / name).open("rb") as fh:
        return email.message_from_binary_file(fh, policy=email.policy.default, _class=EmailMessage)
