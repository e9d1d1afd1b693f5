"""A private Dovecot for tests: a real IMAP server on loopback, TLS only, one user.

    with private_dovecot() as server:
        server.append(raw_message, flags=[b"\\Seen"])
        ... poll imaps://<server.user>@127.0.0.1:<server.port>/INBOX, trusting server.ca_path ...

Why it is private, and how it runs without privileges:
* `dovecot -c FILE` reads FILE only (no /etc/dovecot/conf.d), and every path it writes is
  under one temporary folder: base_dir (its sockets and master.pid), state_dir, the log
  (log_path), the mail (maildir:ROOT/mail/%u). instance_name is unique, so neither the
  system's Dovecot nor a parallel test run is seen or disturbed.
* It listens on 127.0.0.1:<a free port> with implicit TLS only (`imaps`, ssl = required;
  the plain `imap` listener is port 0, i.e. off), with a certificate from a trustme CA
  whose PEM is `ca_path`: clients verify it as they would a real server's.
* Every process runs as one unprivileged user: the current user, or `nobody` when the
  tests run as root (CI). Dovecot refuses root for its login processes ("imap-login:
  This process must not be run as root") and for mail access (first_valid_uid), so
  default_internal_user, default_login_user and the user's uid in the passwd-file are that
  user. chroot is off for imap-login and anvil, because only root can chroot; with that, the
  same config also runs when the master itself is not root. The temporary folder is 0755
  and the passwd-file 0644 so that user reads them when the master is root.
* The user and password are in a passwd-file (scheme PLAIN, a test secret), read by the
  auth process: no PAM, no system account.

Messages are put in the mailbox by APPEND, the protocol's own way (flags included), so the
files have the owner and the names Dovecot expects. The master runs in the foreground
(-F) as a child process; a watcher stops it and removes the folder if the test process dies
without its teardown, as tests/postfix.py does. Without Debian's dovecot-imapd (`make
system-deps` installs it) the test is skipped, saying so.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from imapclient import IMAPClient

from tests.smtp_server import free_port

DOVECOT = shutil.which("dovecot", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
USER = "bouncer"
PASSWORD = "test-password-not-secret"

CONFIG = """\
instance_name = {instance}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{root}/cert.pem
ssl_key = <{root}/key.pem
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
first_valid_uid = {uid}
first_valid_gid = {gid}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/passwd
}}
userdb {{
  driver = passwd-file
  args = {root}/passwd
}}
mail_location = maildir:{root}/mail/%u
service imap-login {{
  chroot =
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
"""

# Waits for the test process ($1) to end, then stops the master ($2) and removes its folder.
WATCHER = 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; kill "$2"; sleep 3; rm -rf "$3"'


@dataclass
class Dovecot:
    host: str
    port: int
    user: str
    password: str
    ca_path: Path
    maildir: Path  # the user's Maildir++ folder: INBOX at the top, other folders as .NAME
    root: Path

    @property
    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def url(self, folder: str = "INBOX") -> str:
        """What `[bounces] imap_url` says for this server."""
        return f"imaps://{self.user}@{self.host}:{self.port}/{folder}"

    def client(self) -> IMAPClient:
        """A logged-in client that verifies the server's certificate."""
        context = ssl.create_default_context(cafile=str(self.ca_path))
        imap = IMAPClient(self.host, self.port, ssl=True, ssl_context=context, timeout=10)
        imap.login(self.user, self.password)
        return imap

    def append(self, data: bytes, folder: str = "INBOX", flags: Iterable[bytes] = ()) -> None:
        imap = self.client()
        try:
            if not imap.folder_exists(folder):
                imap.create_folder(folder)
            imap.append(folder, data, flags=tuple(flags))
        finally:
            imap.logout()

    def messages(self, folder: str = "INBOX") -> dict[str, frozenset[bytes]]:
        """Message-ID -> flags of every message in `folder` ({} when there is no such folder),
        read with EXAMINE, so looking changes nothing. \\Recent is left out: it belongs to
        the session that first sees a message, not to the message."""
        imap = self.client()
        try:
            if not imap.folder_exists(folder):
                return {}
            imap.select_folder(folder, readonly=True)
            fetched = imap.fetch(imap.search("ALL"), ["FLAGS", "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
            out = {}
            for data in fetched.values():
                header = data[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"].decode("ascii", "replace")
                message_id = header.partition(":")[2].strip()
                out[message_id] = frozenset(flag for flag in data[b"FLAGS"] if flag != b"\\Recent")
            return out
        finally:
            imap.logout()


def _runs_as() -> pwd.struct_passwd:
    """The unprivileged user every Dovecot process runs as (see the module docstring)."""
    return pwd.getpwnam("nobody") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())


def _wait_until_ready(process: subprocess.Popen[bytes], server: Dovecot, timeout: float = 20.0) -> None:
    """Until the server's greeting comes over TLS: imap-login sends it once the auth process
    is ready too (a master stopped while those start takes seconds longer to stop)."""
    context = ssl.create_default_context(cafile=str(server.ca_path))
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"dovecot exited with status {process.returncode}:\n{server.log}")
        try:
            with (
                socket.create_connection((server.host, server.port), timeout=2) as raw,
                context.wrap_socket(raw, server_hostname=server.host) as tls,
            ):
                if tls.recv(200).startswith(b"* OK"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"dovecot did not greet on port {server.port}:\n{server.log}")
        time.sleep(0.05)


@contextmanager
def private_dovecot(*, extra_config: str = "") -> Iterator[Dovecot]:
    """A running private Dovecot with one user (USER, PASSWORD) and an empty INBOX.
    `extra_config`: more dovecot.conf lines (imap_capability = ..., say)."""
    if DOVECOT is None:
        pytest.skip("needs Debian's dovecot-imapd (make system-deps, or apt-get install dovecot-imapd)")
    root = Path(tempfile.mkdtemp(prefix="dc-", dir="/tmp"))  # short: socket paths are <108 bytes
    try:
        root.chmod(0o755)  # the unprivileged user reaches the passwd-file and the mail through it
        account = _runs_as()
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        ca.cert_pem.write_to_path(str(root / "ca.pem"))
        cert.private_key_pem.write_to_path(str(root / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
        # passwd-file: user:password:uid:gid:gecos:home:shell
        home = root / "home"
        (root / "passwd").write_text(
            f"{USER}:{{PLAIN}}{PASSWORD}:{account.pw_uid}:{account.pw_gid}::{home}::\n", encoding="utf-8"
        )
        (root / "passwd").chmod(0o644)
        for folder in (home, root / "mail"):
            folder.mkdir()
            os.chown(folder, account.pw_uid, account.pw_gid)
        server = Dovecot(
            "127.0.0.1", free_port(), USER, PASSWORD, root / "ca.pem", root / "mail" / USER, root
        )
        config = CONFIG.format(
            instance=root.name,
            root=root,
            user=account.pw_name,
            group=grp.getgrgid(account.pw_gid).gr_name,
            uid=account.pw_uid,
            gid=account.pw_gid,
            port=server.port,
        )
        (root / "dovecot.conf").write_text(config + extra_config, encoding="utf-8")
        process = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(root / "dovecot.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in the terminal reaches pytest, which stops it
        )
        watcher = subprocess.Popen(
            ["sh", "-c", WATCHER, "dovecot-watcher", str(os.getpid()), str(process.pid), str(root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # not killed with the test's process group
        )
        try:
            _wait_until_ready(process, server)
            yield server
        finally:
            watcher.kill()
            watcher.wait()
            process.send_signal(signal.SIGTERM)  # the master stops its children, then itself
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)
