"""DKIM signing: real messages signed with throw-away keys, verified by two implementations
that share no code with the signer, dkimpy (Python) and Mail::DKIM (Perl), each with its key
lookup pointed at the test key, and refused by both once a header or a body byte is changed."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
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
from mailer.dkim import SIGNED_HEADERS, DkimSigner, _body_hash
from mailer.errors import ConfigError
from mailer.message import MessageTemplate, Recipient
from mailer.models import utcnow
from tests.conftest import SUBSCRIBERS, write_config

DNS_NAME = b"mail._domainkey.example.org."
ED25519_DNS_NAME = b"ed._domainkey.example.org."
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
    # The DNS p= value: RSA, DER SubjectPublicKeyInfo; Ed25519, the bare 32 bytes (RFC 8463).
    public_b64: str
    kind: str = "rsa"

    @property
    def record(self) -> str:
        return f"v=DKIM1; k={self.kind}; p={self.public_b64}"


def _openssl(*args: str, input: bytes | None = None) -> bytes:
    return subprocess.run(["openssl", *args], input=input, capture_output=True, check=True).stdout


def _make_key(folder: Path, bits: int = 2048) -> Key:
    path = folder / f"dkim-{bits}.pem"
    _openssl("genrsa", "-out", str(path), str(bits))
    path.chmod(0o600)
    der = _openssl("rsa", "-in", str(path), "-pubout", "-outform", "DER")
    return Key(path, path.read_bytes(), base64.b64encode(der).decode())


def _make_ed25519_key(folder: Path) -> Key:
    path = folder / "dkim-ed25519.pem"
    _openssl("genpkey", "-algorithm", "ed25519", "-out", str(path))
    path.chmod(0o600)
    der = _openssl("pkey", "-in", str(path), "-pubout", "-outform", "DER")
    return Key(path, path.read_bytes(), base64.b64encode(der[-32:]).decode(), kind="ed25519")


@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory: pytest.TempPathFactory) -> Key:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test key")
    return _make_key(tmp_path_factory.mktemp("dkim-key"))


@pytest.fixture(scope="module")
def ed25519_key(tmp_path_factory: pytest.TempPathFactory) -> Key:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test key")
    return _make_ed25519_key(tmp_path_factory.mktemp("dkim-ed25519-key"))


@pytest.fixture
def config_path(tmp_path: Path, rsa_key: Key, database_url: str) -> Path:
    """Overrides conftest's: DKIM on, and no SMTP server (nothing is sent here)."""
    return write_config(
        tmp_path, database_url=database_url, dkim={**DKIM_SECTION, "key_file": str(rsa_key.path)}
    )


def dns_stub(
    key: Key, queried: list[bytes] | None = None, ed25519: Key | None = None
) -> Callable[..., bytes | None]:
    records = {DNS_NAME: key.record.encode()}
    if ed25519 is not None:
        records[ED25519_DNS_NAME] = ed25519.record.encode()

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        if queried is not None:
            queried.append(name)
        return records.get(name)

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


def signature_tags(signed: bytes, index: int = 0) -> dict[bytes, bytes]:
    fields = re.findall(rb"^DKIM-Signature:((?:[^\r\n]*\r\n[ \t])*[^\r\n]*)\r\n", signed, re.MULTILINE)
    return parse_tag_value(re.sub(rb"\r\n[ \t]", b" ", fields[index]).strip())


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


# --- a second implementation: Perl's Mail::DKIM -----------------------------------------

# Reads the message on stdin and prints one line per signature: "signature A S RESULT".
# The DNS is a stub resolver answering from the NAME=RECORD arguments (and printing each
# query), handed to Mail::DKIM through its documented hook, Mail::DKIM::DNS::resolver.
PERL_VERIFIER = r"""
use strict;
use warnings;
use MIME::Base64 qw(decode_base64);
use Mail::DKIM::Verifier;
use Mail::DKIM::DNS;
use Net::DNS;

my %txt = map { my ($name, $record) = split /=/, $_, 2; (lc $name => $record) } @ARGV;

package StubResolver {
    sub new { return bless {}, shift }
    sub errorstring { return 'NOERROR' }
    sub send {
        my ($self, $name, $type) = @_;
        print "query $name $type\n";
        my $packet = Net::DNS::Packet->new($name, $type);
        my $record = $txt{lc $name};
        if (defined $record && $type eq 'TXT') {
            # A TXT record is strings of at most 255 octets, which DKIM joins.
            my @strings = unpack '(a255)*', $record;
            $packet->push(answer => Net::DNS::RR->new(name => $name, type => 'TXT', txtdata => [@strings]));
        }
        else {
            $packet->header->rcode('NXDOMAIN');
        }
        return $packet;
    }
}
Mail::DKIM::DNS::resolver(StubResolver->new);

# Mail::DKIM before 1.20230630 (Debian 12 ships 1.20230212) checks RSA only. Teach it RFC 8463
# as that release does: its own parsing, canonicalisation and SHA-256 hashing, exactly as for
# rsa-sha256; the Ed25519 check by CryptX (libtomcrypt, not OpenSSL); p= the bare 32 bytes.
package Ed25519Shim::Algorithm {
    our @ISA = ('Mail::DKIM::Algorithm::rsa_sha256');
    sub verify {
        my $self = shift;
        my $key = $self->signature->get_public_key;
        my $signature = MIME::Base64::decode_base64($self->signature->data);
        return unless $key->cork->verify_message($signature, $self->{header_digest}->digest);
        return $self->check_body_hash;
    }
}
package Ed25519Shim::Key {
    sub new {
        my ($class, $raw) = @_;
        my $key = Crypt::PK::Ed25519->new;
        $key->import_key_raw($raw, 'public');
        return bless { key => $key }, $class;
    }
    sub size { return 32 }
    sub verify_message { my $self = shift; return $self->{key}->verify_message(@_) }
}
if (!eval { require Mail::DKIM::Algorithm::ed25519_sha256; 1 }) {
    require Crypt::PK::Ed25519;
    require Mail::DKIM::Algorithm::rsa_sha256;
    no warnings 'redefine';
    my $class_of = \&Mail::DKIM::Signature::get_algorithm_class;
    *Mail::DKIM::Signature::get_algorithm_class = sub {
        return $_[1] eq 'ed25519-sha256' ? 'Ed25519Shim::Algorithm' : $class_of->(@_);
    };
    my $check = \&Mail::DKIM::PublicKey::check;
    *Mail::DKIM::PublicKey::check = sub {
        my $self = shift;
        return $check->($self) unless ($self->get_tag('k') // '') eq 'ed25519';
        my $raw = decode_base64($self->data // '');
        die "invalid data\n" unless length $raw == 32;
        $self->cork(Ed25519Shim::Key->new($raw));
        return 1;
    };
}

binmode STDIN;
my $message = do { local $/; <STDIN> };
my $dkim = Mail::DKIM::Verifier->new;
$dkim->PRINT($message);
$dkim->CLOSE;
for my $signature ($dkim->signatures) {
    printf "signature %s %s %s\n", $signature->algorithm, $signature->selector, $signature->result_detail;
}
"""


@dataclass(frozen=True)
class PerlVerdict:
    results: dict[str, str]  # algorithm -> Mail::DKIM's result: "pass", "fail (...)", ...
    queries: list[str]


def perl_verify(message: bytes, keys: dict[str, Key]) -> PerlVerdict:
    """Mail::DKIM's verdict on every signature of `message`; `keys` maps a selector of
    example.org to the key published there."""
    records = [f"{selector}._domainkey.example.org={key.record}" for selector, key in keys.items()]
    run = subprocess.run(
        ["perl", "-e", PERL_VERIFIER, *records], input=message, capture_output=True, check=True, timeout=60
    )
    results: dict[str, str] = {}
    queries: list[str] = []
    for line in run.stdout.decode().splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "signature":
            algorithm, _, detail = rest.partition(" ")
            assert algorithm not in results, line
            results[algorithm] = detail.partition(" ")[2]  # after the selector
        elif kind == "query":
            queries.append(rest)
    return PerlVerdict(results, queries)


def _perl_has(check: str) -> bool:
    if shutil.which("perl") is None:
        return False
    return subprocess.run(["perl", "-e", check], capture_output=True, timeout=60).returncode == 0


@pytest.fixture(scope="module")
def perl_dkim() -> None:
    if not _perl_has("use Mail::DKIM::Verifier; use Net::DNS;"):
        pytest.skip("perl with Mail::DKIM is needed (Debian: libmail-dkim-perl; make system-deps)")


@pytest.fixture(scope="module")
def perl_ed25519(perl_dkim: None) -> None:
    if not _perl_has(
        "eval { require Mail::DKIM::Algorithm::ed25519_sha256; 1 } or require Crypt::PK::Ed25519"
    ):
        pytest.skip(
            "Mail::DKIM checks ed25519 from 1.20230630 on; with an older one the test adds it and "
            "needs CryptX (Debian: libcryptx-perl)"
        )


@pytest.fixture
def dual_signer(tmp_path: Path, rsa_key: Key, ed25519_key: Key) -> DkimSigner:
    section = {
        **DKIM_SECTION,
        "key_file": str(rsa_key.path),
        "ed25519_selector": "ed",
        "ed25519_key_file": str(ed25519_key.path),
    }
    result = DkimSigner.from_config(load_config(str(write_config(tmp_path, dkim=section))))
    assert result is not None
    return result


def test_perl_mail_dkim_verifies_the_signature(
    message: bytes, signer: DkimSigner, rsa_key: Key, perl_dkim: None
) -> None:
    verdict = perl_verify(signer.sign(message), {"mail": rsa_key})
    assert verdict.results == {"rsa-sha256": "pass"}
    assert verdict.queries == ["mail._domainkey.example.org TXT"]


@pytest.mark.parametrize("change", list(TAMPERING))
def test_tampering_fails_in_perl_mail_dkim_too(
    message: bytes, signer: DkimSigner, rsa_key: Key, perl_dkim: None, change: str
) -> None:
    tampered = TAMPERING[change](signer.sign(message))
    assert perl_verify(tampered, {"mail": rsa_key}).results["rsa-sha256"].startswith("fail")


def test_a_wrong_published_key_fails_in_perl(
    message: bytes, signer: DkimSigner, tmp_path: Path, perl_dkim: None
) -> None:
    other = _make_key(tmp_path)
    assert perl_verify(signer.sign(message), {"mail": other}).results["rsa-sha256"].startswith("fail")


def test_two_signatures_rsa_then_ed25519_both_verify_in_perl(
    message: bytes, dual_signer: DkimSigner, rsa_key: Key, ed25519_key: Key, perl_ed25519: None
) -> None:
    signed = dual_signer.sign(message)

    assert signed.endswith(message)
    assert b"\n" not in signed.replace(b"\r\n", b""), "a bare LF in the signed message"
    rsa, ed = signature_tags(signed, 0), signature_tags(signed, 1)
    assert (rsa[b"a"], rsa[b"s"]) == (b"rsa-sha256", b"mail")
    assert (ed[b"a"], ed[b"s"], ed[b"c"], ed[b"d"]) == (
        b"ed25519-sha256",
        b"ed",
        b"relaxed/relaxed",
        b"example.org",
    )
    assert ed[b"h"] == rsa[b"h"] and ed[b"bh"] == rsa[b"bh"]
    assert len(base64.b64decode(re.sub(rb"\s", b"", ed[b"b"]))) == 64  # an Ed25519 signature

    verdict = perl_verify(signed, {"mail": rsa_key, "ed": ed25519_key})
    assert verdict.results == {"rsa-sha256": "pass", "ed25519-sha256": "pass"}
    assert sorted(verdict.queries) == ["ed._domainkey.example.org TXT", "mail._domainkey.example.org TXT"]
    # dkimpy checks the first (RSA) one, and its own index 1 needs PyNaCl (see below).
    assert dkim.verify(signed, dnsfunc=dns_stub(rsa_key, ed25519=ed25519_key)) is True


@pytest.mark.parametrize("change", ["subject", "one body byte", "a second subject"])
def test_tampering_fails_both_signatures_in_perl(
    message: bytes,
    dual_signer: DkimSigner,
    rsa_key: Key,
    ed25519_key: Key,
    perl_ed25519: None,
    change: str,
) -> None:
    verdict = perl_verify(TAMPERING[change](dual_signer.sign(message)), {"mail": rsa_key, "ed": ed25519_key})
    assert set(verdict.results) == {"rsa-sha256", "ed25519-sha256"}
    for algorithm, result in verdict.results.items():
        assert result.startswith("fail"), (algorithm, result)


def test_a_wrong_published_ed25519_key_fails_in_perl(
    message: bytes, dual_signer: DkimSigner, rsa_key: Key, tmp_path: Path, perl_ed25519: None
) -> None:
    verdict = perl_verify(dual_signer.sign(message), {"mail": rsa_key, "ed": _make_ed25519_key(tmp_path)})
    assert verdict.results["rsa-sha256"] == "pass"
    assert verdict.results["ed25519-sha256"].startswith("fail")


@pytest.mark.skipif(importlib.util.find_spec("nacl") is None, reason="dkimpy checks ed25519 only with PyNaCl")
def test_dkimpy_verifies_the_ed25519_signature(
    message: bytes, dual_signer: DkimSigner, rsa_key: Key, ed25519_key: Key
) -> None:
    signed = dual_signer.sign(message)
    stub = dns_stub(rsa_key, ed25519=ed25519_key)
    assert dkim.DKIM(signed).verify(idx=1, dnsfunc=stub) is True
    tampered = TAMPERING["subject"](signed)
    assert dkim.DKIM(tampered).verify(idx=1, dnsfunc=stub) is False


# --- canonicalisation off the fast path -------------------------------------------------

# Bodies that MessageTemplate never writes, so that the general path is checked against
# both verifiers: runs of spaces and tabs, spaces before line ends, empty lines at the end,
# a bare LF, a body without a final line end, an empty body.
ODD_BODIES = {
    "spaces and tabs": b"Hello  there,\t\tworld \t \r\n\tindented  line\r\n",
    "trailing spaces": b"line one   \r\nline two\t\r\n \r\n",
    "empty lines at the end": b"text\r\n\r\n\r\n\r\n",
    "a bare LF": b"first\nsecond\r\nthird  \n",
    "no final line end": b"no line end",
    "spaces, no final line end": b"last line \t ",
    "only empty lines": b"\r\n\r\n",
    "empty": b"",
    "a bare CR": b"a\rb \rc\r\n",
}


def _odd_message(body: bytes) -> bytes:
    head = (
        b"From: Editor <digest@example.org>\r\n"
        b"To: reader@example.com\r\n"
        b"Subject:  Folded\r\n\t and   spaced  \r\n"
        b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        b"Message-ID: <odd@example.org>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=us-ascii\r\n"
    )
    return head + b"\r\n" + body


@pytest.mark.parametrize("name", list(ODD_BODIES))
def test_odd_bodies_and_headers_verify_in_dkimpy_and_perl(
    name: str, signer: DkimSigner, rsa_key: Key, perl_dkim: None
) -> None:
    signed = signer.sign(_odd_message(ODD_BODIES[name]))
    # What a receiver gets: SMTP ends the data with a line end, and a relay stores and passes
    # on lines, so a bare LF arrives as CRLF (dkimpy reads it so anyway; Mail::DKIM, given
    # raw bytes, does not).
    signed = re.sub(rb"\r?\n", b"\r\n", signed)
    signed += b"" if signed.endswith(b"\r\n") else b"\r\n"
    assert dkim.verify(signed, dnsfunc=dns_stub(rsa_key)) is True
    assert perl_verify(signed, {"mail": rsa_key}).results == {"rsa-sha256": "pass"}


@pytest.mark.parametrize("name", [n for n in ODD_BODIES if n != "spaces, no final line end"])
def test_the_body_hash_is_dkimpys(name: str) -> None:
    """The fast path and the general one against dkimpy's canonicalisation. (Not for spaces
    ending a last line without a line end: dkimpy keeps them; RFC 6376 drops them, and so
    does the receiver, since SMTP ends the data with a line end.)"""
    from dkim.canonicalization import CanonicalizationPolicy

    for body in (ODD_BODIES[name], b"QUJD\r\nREVG\r\n" + ODD_BODIES[name]):
        message = _odd_message(body)
        _, dkimpy_body = dkim.rfc822_parse(message)
        expected = hashlib.sha256(
            CanonicalizationPolicy.from_c_value(b"relaxed/relaxed").canonicalize_body(dkimpy_body)
        )
        text = re.sub(rb"\r?\n", b"\r\n", message)
        assert _body_hash(text, text.index(b"\r\n\r\n") + 4) == expected.digest()


# --- the ed25519 settings and key file --------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"ed25519_key_file": "ed.pem"}, "dkim.ed25519_selector"),
        ({"ed25519_selector": "ed"}, "dkim.ed25519_key_file"),
        ({"ed25519_selector": "MAIL", "ed25519_key_file": "ed.pem"}, "dkim.ed25519_selector"),
        ({"ed25519_selector": "ed;x=1", "ed25519_key_file": "ed.pem"}, "dkim.ed25519_selector"),
    ],
)
def test_an_incomplete_ed25519_setting_is_refused_naming_the_key(
    tmp_path: Path, extra: dict[str, str], key: str
) -> None:
    path = write_config(tmp_path, dkim={**DKIM_SECTION, "key_file": "dkim.pem", **extra})
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    line = str(err.value)
    assert "\n" not in line
    assert str(path) in line and key in line


def test_the_ed25519_keys_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rsa_key: Key, ed25519_key: Key, message: bytes
) -> None:
    path = write_config(tmp_path, dkim={**DKIM_SECTION, "key_file": str(rsa_key.path)})
    monkeypatch.setenv("MAILER_DKIM_ED25519_SELECTOR", "ed")
    monkeypatch.setenv("MAILER_DKIM_ED25519_KEY_FILE", str(ed25519_key.path))
    cfg = load_config(str(path))
    assert (cfg.dkim.ed25519_selector, cfg.dkim.ed25519_key_file) == ("ed", str(ed25519_key.path))
    signer = DkimSigner.from_config(cfg)
    assert signer is not None and "ed25519_selector='ed'" in repr(signer)
    assert signed_algorithms(signer.sign(message)) == [b"rsa-sha256", b"ed25519-sha256"]


def signed_algorithms(signed: bytes) -> list[bytes]:
    count = len(re.findall(rb"^DKIM-Signature:", signed, re.MULTILINE))
    return [signature_tags(signed, i)[b"a"] for i in range(count)]


@pytest.mark.parametrize("name", ["garbage", "rsa key", "public key", "encrypted", "missing"])
def test_a_bad_ed25519_key_file_is_a_config_error_naming_it(
    tmp_path: Path, rsa_key: Key, ed25519_key: Key, name: str
) -> None:
    bad = tmp_path / "bad.pem"
    expect = "not a PEM Ed25519 private key"
    if name == "garbage":
        bad.write_bytes(b"this is not a key\n")
    elif name == "rsa key":
        bad.write_bytes(rsa_key.pem)
    elif name == "public key":
        bad.write_bytes(_openssl("pkey", "-in", str(ed25519_key.path), "-pubout"))
    elif name == "encrypted":
        bad.write_bytes(
            _openssl("pkcs8", "-topk8", "-v2", "aes-256-cbc", "-passout", "pass:x", input=ed25519_key.pem)
        )
        expect = "encrypted"
    else:
        bad = tmp_path / "nowhere.pem"
        expect = "cannot read"
    if bad.exists():
        bad.chmod(0o600)
    section = {
        **DKIM_SECTION,
        "key_file": str(rsa_key.path),
        "ed25519_selector": "ed",
        "ed25519_key_file": str(bad),
    }
    cfg = load_config(str(write_config(tmp_path, dkim=section)))
    with pytest.raises(ConfigError) as err:
        DkimSigner.from_config(cfg)
    line = str(err.value)
    assert line.startswith(f"dkim.ed25519_key_file: {bad}: ") and expect in line
    for chunk in re.findall(
        rb"[A-Za-z0-9+/=]{16,}", ed25519_key.pem + (bad.read_bytes() if bad.exists() else b"")
    ):
        assert chunk.decode() not in line
