"""DKIM signing: real messages signed with a throw-away key, verified by dkimpy against a
stubbed DNS record, and refused once a header or a body byte is changed."""

from __future__ import annotations

import base64
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from pathlib import Path

import dkim
import pytest
from dkim.util import parse_tag_value

from mailer.config import Config, load_config
from mailer.db import Database
from mailer.digest import build, manual_slot
from mailer.dkim import SIGNED_HEADERS, DkimSigner
from mailer.errors import ConfigError
from mailer.message import MessageTemplate, Recipient
from mailer.models import utcnow
from tests.conftest import SUBSCRIBERS, write_config

DNS_NAME = b"mail._domainkey.example.org."
DKIM_SECTION = {"enabled": True, "domain": "example.org", "selector": "mail"}
REQUIRED = [
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "mime-version",
    "content-type",
]
UNSUBSCRIBE_URL = "http://127.0.0.1:8080/unsubscribe/tok-zoe"


@dataclass(frozen=True)
class Key:
    path: Path
    pem: bytes
    public_b64: str  # the DNS p= value: DER SubjectPublicKeyInfo, base64


def _openssl(*args: str, input: bytes | None = None) -> bytes:
    return subprocess.run(["openssl", *args], input=input, capture_output=True, check=True).stdout


def _make_key(folder: Path, bits: int = 2048) -> Key:
    path = folder / f"dkim-{bits}.pem"
    _openssl("genrsa", "-out", str(path), str(bits))
    path.chmod(0o600)
    der = _openssl("rsa", "-in", str(path), "-pubout", "-outform", "DER")
    return Key(path, path.read_bytes(), base64.b64encode(der).decode())


@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory: pytest.TempPathFactory) -> Key:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test key")
    return _make_key(tmp_path_factory.mktemp("dkim-key"))


@pytest.fixture
def config_path(tmp_path: Path, rsa_key: Key, database_url: str) -> Path:
    """Overrides conftest's: DKIM on, and no SMTP server (nothing is sent here)."""
    return write_config(
        tmp_path, database_url=database_url, dkim={**DKIM_SECTION, "key_file": str(rsa_key.path)}
    )


def dns_stub(key: Key, queried: list[bytes] | None = None) -> Callable[..., bytes | None]:
    record = f"v=DKIM1; k=rsa; p={key.public_b64}".encode()

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        if queried is not None:
            queried.append(name)
        return record if name == DNS_NAME else None

    return lookup


@pytest.fixture
def message(seeded: Database, cfg: Config) -> bytes:
    """A real digest message for the subscriber with the non-ASCII name."""
    digest = build(seeded, cfg, manual_slot(utcnow()))
    assert digest is not None and digest.status == "sending"
    template = MessageTemplate(cfg, digest.id, digest.subject, digest.html, digest.text)
    email, name = SUBSCRIBERS[2]
    assert not name.isascii()
    return template.render(Recipient(3, email, name, UNSUBSCRIBE_URL))


@pytest.fixture
def signer(cfg: Config) -> DkimSigner:
    result = DkimSigner.from_config(cfg)
    assert result is not None
    return result


def signature_tags(signed: bytes) -> dict[bytes, bytes]:
    m = re.match(rb"DKIM-Signature:((?:[^\r\n]*\r\n[ \t])*[^\r\n]*)\r\n", signed)
    assert m is not None
    return parse_tag_value(re.sub(rb"\r\n[ \t]", b" ", m.group(1)).strip())


def test_a_signed_message_verifies_and_signs_every_required_header(
    message: bytes, signer: DkimSigner, rsa_key: Key
) -> None:
    signed = signer.sign(message)

    assert signed.startswith(b"DKIM-Signature: ")
    assert signed.endswith(message)
    assert b"\n" not in signed.replace(b"\r\n", b""), "a bare LF in the signed message"
    queried: list[bytes] = []
    assert dkim.verify(signed, dnsfunc=dns_stub(rsa_key, queried)) is True
    assert queried == [DNS_NAME]

    tags = signature_tags(signed)
    assert tags[b"a"] == b"rsa-sha256"
    assert tags[b"c"] == b"relaxed/relaxed"
    assert (tags[b"d"], tags[b"s"]) == (b"example.org", b"mail")
    signed_names = [h.strip().decode() for h in tags[b"h"].split(b":")]
    for name in REQUIRED:
        # Once for the header, once more so that a second instance cannot be added.
        assert signed_names.count(name) == 2, name


def test_every_header_of_a_rendered_message_is_signed(message: bytes) -> None:
    """Catches a header added to MessageTemplate but not to SIGNED_HEADERS."""
    headers = BytesHeaderParser().parsebytes(message)
    assert {k.lower() for k in headers} <= {h.lower() for h in SIGNED_HEADERS}
    assert sorted(h.lower() for h in SIGNED_HEADERS) == sorted(REQUIRED)


def _flip_body_byte(signed: bytes) -> bytes:
    start = signed.index(b"\r\n\r\n") + 4
    pos = start + (len(signed) - start) // 2
    while not signed[pos : pos + 1].isalnum():
        pos += 1
    new = b"B" if signed[pos : pos + 1] == b"A" else b"A"
    return signed[:pos] + new + signed[pos + 1 :]


TAMPERING: dict[str, Callable[[bytes], bytes]] = {
    "subject": lambda m: m.replace(b"\r\nSubject: ", b"\r\nSubject: FREE ", 1),
    "to": lambda m: m.replace(b"<zoe@example.com>", b"<eve@example.com>", 1),
    "list-unsubscribe": lambda m: m.replace(b"/unsubscribe/tok-zoe>", b"/unsubscribe/tok-eve>", 1),
    "one body byte": _flip_body_byte,
    # Added above the signed one, where clients look first; oversigning is what catches these.
    "a second subject": lambda m: m.replace(b"\r\nFrom: ", b"\r\nSubject: Act now\r\nFrom: ", 1),
    "a second list-unsubscribe": lambda m: m.replace(
        b"\r\nFrom: ", b"\r\nList-Unsubscribe: <https://evil.example/>\r\nFrom: ", 1
    ),
}


@pytest.mark.parametrize("change", list(TAMPERING))
def test_tampering_breaks_the_signature(
    message: bytes, signer: DkimSigner, rsa_key: Key, change: str
) -> None:
    signed = signer.sign(message)
    assert dkim.verify(signed, dnsfunc=dns_stub(rsa_key))
    tampered = TAMPERING[change](signed)
    assert tampered != signed and len(tampered) >= len(signed)
    assert dkim.verify(tampered, dnsfunc=dns_stub(rsa_key)) is False


def test_relaxed_canonicalization_survives_refolding_and_trailing_spaces(
    message: bytes, signer: DkimSigner, rsa_key: Key
) -> None:
    signed = signer.sign(message)
    relayed = signed.replace(b"\r\nSubject: ", b"\r\nSubject:\t  ", 1)
    head, sep, body = relayed.partition(b"\r\n\r\n")
    relayed = head + sep + body.replace(b"\r\n", b"  \r\n", 3)
    assert relayed != signed
    assert dkim.verify(relayed, dnsfunc=dns_stub(rsa_key)) is True


def test_a_wrong_published_key_fails_verification(
    message: bytes, signer: DkimSigner, tmp_path: Path, rsa_key: Key
) -> None:
    folder = tmp_path / "other"
    folder.mkdir()
    other = _make_key(folder)
    assert dkim.verify(signer.sign(message), dnsfunc=dns_stub(other)) is False
    assert dkim.verify(signer.sign(message), dnsfunc=dns_stub(rsa_key)) is True


def test_no_signer_when_dkim_is_disabled(tmp_path: Path) -> None:
    assert DkimSigner.from_config(load_config(str(write_config(tmp_path)))) is None
    cfg = load_config(str(write_config(tmp_path, dkim={"enabled": False, "domain": "example.org"})))
    assert DkimSigner.from_config(cfg) is None


def test_a_relative_key_file_is_relative_to_the_config_file(
    tmp_path: Path, rsa_key: Key, message: bytes
) -> None:
    folder = tmp_path / "elsewhere"
    (folder / "keys").mkdir(parents=True)
    key = folder / "keys" / "dkim.pem"
    key.write_bytes(rsa_key.pem)
    key.chmod(0o600)
    cfg = load_config(str(write_config(folder, dkim={**DKIM_SECTION, "key_file": "keys/dkim.pem"})))
    signer = DkimSigner.from_config(cfg)
    assert signer is not None
    assert dkim.verify(signer.sign(message), dnsfunc=dns_stub(rsa_key))


def test_a_key_file_with_crlf_line_ends_works(tmp_path: Path, rsa_key: Key, message: bytes) -> None:
    key = tmp_path / "crlf.pem"
    key.write_bytes(rsa_key.pem.replace(b"\n", b"\r\n"))
    key.chmod(0o600)
    cfg = load_config(str(write_config(tmp_path, dkim={**DKIM_SECTION, "key_file": str(key)})))
    signer = DkimSigner.from_config(cfg)
    assert signer is not None
    assert dkim.verify(signer.sign(message), dnsfunc=dns_stub(rsa_key))


def test_the_key_is_read_once(message: bytes, rsa_key: Key, tmp_path: Path) -> None:
    key = tmp_path / "moving.pem"
    key.write_bytes(rsa_key.pem)
    key.chmod(0o600)
    cfg = load_config(str(write_config(tmp_path, dkim={**DKIM_SECTION, "key_file": str(key)})))
    signer = DkimSigner.from_config(cfg)
    assert signer is not None
    key.unlink()
    assert dkim.verify(signer.sign(message), dnsfunc=dns_stub(rsa_key))
    assert "BEGIN" not in repr(signer) and "example.org" in repr(signer)


# --- configuration errors -------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"enabled": True, "domain": "example.org", "selector": "mail"}, "dkim.key_file"),
        ({"enabled": True, "selector": "mail", "key_file": "dkim.pem"}, "dkim.domain"),
        ({"enabled": True, "domain": "example.org", "key_file": "dkim.pem"}, "dkim.selector"),
        ({"enabled": True, "domain": "example.org", "selector": "  ", "key_file": "k"}, "dkim.selector"),
        ({"enabled": False, "domain": "example .org"}, "dkim.domain"),
        (
            {"enabled": True, "domain": "example.org", "selector": "mail;x=1", "key_file": "k"},
            "dkim.selector",
        ),
    ],
)
def test_an_incomplete_dkim_section_is_refused_with_one_line_naming_the_key(
    tmp_path: Path, section: dict[str, object], key: str
) -> None:
    path = write_config(tmp_path, dkim=section)
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    line = str(err.value)
    assert "\n" not in line
    assert str(path) in line and key in line
    others = {"dkim.domain", "dkim.selector", "dkim.key_file"} - {key}
    assert not any(other in line for other in others), line


def test_all_missing_keys_are_named_and_an_environment_culprit_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path)
    monkeypatch.setenv("MAILER_DKIM_ENABLED", "true")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    line = str(err.value)
    assert "\n" not in line
    assert "MAILER_DKIM_ENABLED" in line
    assert "dkim.domain, dkim.selector, dkim.key_file are required" in line


def test_the_dkim_keys_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rsa_key: Key
) -> None:
    path = write_config(tmp_path)
    monkeypatch.setenv("MAILER_DKIM_ENABLED", "true")
    monkeypatch.setenv("MAILER_DKIM_DOMAIN", "example.org")
    monkeypatch.setenv("MAILER_DKIM_SELECTOR", "mail")
    monkeypatch.setenv("MAILER_DKIM_KEY_FILE", str(rsa_key.path))
    cfg = load_config(str(path))
    assert (cfg.dkim.domain, cfg.dkim.selector, cfg.dkim.key_file) == (
        "example.org",
        "mail",
        str(rsa_key.path),
    )
    assert DkimSigner.from_config(cfg) is not None


def _damaged(pem: bytes) -> bytes:
    """The key with one byte of its last CRT component (qInv) changed: it still parses."""
    lines = pem.strip().splitlines()
    der = bytearray(base64.b64decode(b"".join(lines[1:-1])))
    der[-50] ^= 0x01
    b64 = base64.encodebytes(bytes(der))
    return lines[0] + b"\n" + b64 + lines[-1] + b"\n"


def _bad_key_files(folder: Path, key: Key) -> dict[str, tuple[Path, str]]:
    """name -> (path, expected words in the error)"""
    files: dict[str, tuple[Path, str]] = {}

    def add(name: str, content: bytes, expect: str) -> None:
        path = folder / f"{name}.pem"
        path.write_bytes(content)
        path.chmod(0o600)
        files[name] = (path, expect)

    lines = key.pem.splitlines(keepends=True)
    add("garbage", b"this is not a key\n", "not a PEM RSA private key")
    add("empty", b"", "not a PEM RSA private key")
    add("public key", _openssl("rsa", "-in", str(key.path), "-pubout"), "not a PEM RSA private key")
    add("truncated", b"".join(lines[: len(lines) // 2] + lines[-1:]), "not a PEM RSA private key")
    add(
        "encrypted",
        _openssl("pkcs8", "-topk8", "-v2", "aes-256-cbc", "-passout", "pass:secret", input=key.pem),
        "encrypted",
    )
    add("damaged", _damaged(key.pem), "damaged")
    add("short", _openssl("genrsa", "512"), "512 bits")
    add(
        "ec key",
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"),
        "not a PEM RSA",
    )
    files["missing"] = (folder / "nowhere.pem", "cannot read")
    files["a folder"] = (folder, "cannot read")
    return files


BAD_KEYS = [
    "garbage",
    "empty",
    "public key",
    "truncated",
    "encrypted",
    "damaged",
    "short",
    "ec key",
    "missing",
    "a folder",
]


@pytest.mark.parametrize("name", BAD_KEYS)
def test_a_bad_key_file_is_a_config_error_naming_dkim_key_file(
    tmp_path: Path, rsa_key: Key, name: str
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    path, expect = _bad_key_files(bad, rsa_key)[name]
    cfg = load_config(str(write_config(tmp_path, dkim={**DKIM_SECTION, "key_file": str(path)})))
    with pytest.raises(ConfigError) as err:
        DkimSigner.from_config(cfg)
    line = str(err.value)
    assert "\n" not in line
    assert line.startswith(f"dkim.key_file: {path}: ")
    assert expect in line
    # No key material: not one base64 run of the key files appears in the message.
    content = path.read_bytes() if path.is_file() else b""
    for chunk in re.findall(rb"[A-Za-z0-9+/=]{16,}", content + rsa_key.pem):
        assert chunk.decode() not in line


def test_a_key_readable_by_others_is_used_with_a_warning(
    tmp_path: Path, rsa_key: Key, caplog: pytest.LogCaptureFixture
) -> None:
    key = tmp_path / "open.pem"
    key.write_bytes(rsa_key.pem)
    cfg = load_config(str(write_config(tmp_path, dkim={**DKIM_SECTION, "key_file": str(key)})))
    key.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="mailer.dkim"):
        assert DkimSigner.from_config(cfg) is not None
    assert not caplog.records
    if os.name != "posix":
        return
    key.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="mailer.dkim"):
        assert DkimSigner.from_config(cfg) is not None
    assert "chmod 600" in caplog.text and str(key) in caplog.text


def test_delivered_mail_carries_a_valid_signature(
    seeded: Database, tmp_path: Path, smtp_server, rsa_key: Key
) -> None:
    from mailer import campaign

    # The same folder (so the same database), now pointed at a real SMTP server.
    sending = load_config(
        str(write_config(tmp_path, smtp_server.port, dkim={**DKIM_SECTION, "key_file": str(rsa_key.path)}))
    )
    [summary] = campaign.send_now(seeded, sending, utcnow())
    assert summary.finished and summary.sent == 3
    for received in smtp_server.received:
        assert received.data.startswith(b"DKIM-Signature:")
        assert dkim.verify(received.data, dnsfunc=dns_stub(rsa_key))
