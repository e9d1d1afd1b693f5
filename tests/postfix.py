"""A private Postfix for tests: a real relay (PIPELINING, access maps, connection limits)
that shares nothing with the system's Postfix and sends nothing off the machine.

    with private_postfix(reject={"x@example.com"}, sink_port=sink.port) as relay:
        ... SMTP to 127.0.0.1:relay.port ...
        relay.wait_until_empty()

Why it is private:
* `postfix -c DIR start` reads DIR/main.cf and DIR/master.cf only, and the queue and data
  directories (with the master's pid and lock files) are under DIR too, so it neither
  sees nor disturbs the system instance in /var/spool/postfix; both can run at once. Run
  by root, `postfix -c` needs no alternate_config_directories entry in /etc/postfix/main.cf
  (that list guards the set-gid commands that users run, postdrop and postqueue).
* It listens on 127.0.0.1:<a free port> only (master.cf); the other services are UNIX
  sockets under DIR. No service is chrooted, so none needs a copy of /etc in the queue.
* Mail goes nowhere outside: mydestination is empty (nothing is local) and every message
  is relayed to `sink_port` on 127.0.0.1 (an aiosmtpd, say) or, without one, discarded by
  the `discard` transport. The relay host is an IP literal, so DNS is never asked.
* Clients on loopback are exempt from Postfix's per-client limits by default
  (smtpd_client_event_limit_exceptions = $mynetworks); here nobody is, so a limit set
  through `main_cf` (smtpd_client_connection_count_limit, ...) applies to the tests.

DIR is a short directory under /tmp (UNIX socket paths are limited to 108 bytes) and is
removed after `postfix stop`. Postfix's master is a daemon that outlives whoever started
it, so a watcher process stops it and removes DIR if the test process dies without its
teardown (kill -9, a timeout, a forked test runner that leaves with os._exit). Postfix's
master must start as root: without root or without Debian's postfix package the test is
skipped, saying so.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.smtp_server import free_port

POSTFIX = shutil.which("postfix", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))

# Every service Postfix needs to receive, queue, relay or discard, and bounce; none chrooted.
MASTER_CF = """\
{listen} inet n - n - - smtpd
cleanup   unix n - n - 0 cleanup
qmgr      unix n - n 300 1 qmgr
rewrite   unix - - n - - trivial-rewrite
bounce    unix - - n - 0 bounce
defer     unix - - n - 0 bounce
trace     unix - - n - 0 bounce
verify    unix - - n - 1 verify
flush     unix n - n 1000? 0 flush
proxymap  unix - - n - - proxymap
smtp      unix - - n - - smtp
relay     unix - - n - - smtp
error     unix - - n - - error
retry     unix - - n - - error
discard   unix - - n - - discard
anvil     unix - - n - 1 anvil
scache    unix - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""

HOSTNAME = "mx.mailer.test"

# Waits for the test process ($1) to end, then stops the instance and removes its folder.
WATCHER = 'while kill -0 "$1" 2>/dev/null; do sleep 1; done; "$2" -c "$3/conf" stop; rm -rf "$3"'


@dataclass
class Postfix:
    root: Path
    port: int

    @property
    def log(self) -> str:
        """Postfix's own log (maillog_file): what it received, refused and delivered."""
        path = self.root / "maillog"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def queued(self) -> int:
        """Messages still in the queue (neither relayed, discarded nor bounced yet)."""
        folders = ("maildrop", "incoming", "active", "deferred", "hold")
        return sum(len(files) for name in folders for _, _, files in os.walk(self.root / "queue" / name))

    def wait_until_empty(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.queued():
            if time.monotonic() > deadline:
                tail = self.log[-3000:]
                raise AssertionError(f"{self.queued()} message(s) still in Postfix's queue:\n{tail}")
            time.sleep(0.05)

    def delivered(self) -> dict[str, int]:
        """Recipient -> how many times Postfix relayed or discarded a message to it."""
        counts: dict[str, int] = {}
        for address in re.findall(r" to=<([^>]*)>,.* status=sent ", self.log):
            counts[address] = counts.get(address, 0) + 1
        return counts


def main_cf(root: Path, sink_port: int | None, extra: dict[str, str]) -> str:
    settings = {
        "compatibility_level": "3.6",
        "queue_directory": str(root / "queue"),
        "data_directory": str(root / "data"),
        "mail_owner": "postfix",
        "setgid_group": "postdrop",
        "myhostname": HOSTNAME,
        "mydestination": "",
        "inet_interfaces": "127.0.0.1",
        "inet_protocols": "ipv4",
        "mynetworks": "127.0.0.0/8",
        "smtpd_client_event_limit_exceptions": "",
        "smtpd_peername_lookup": "no",
        "alias_maps": "",
        "alias_database": "",
        "local_recipient_maps": "",
        "relay_domains": "",
        "maillog_file": str(root / "maillog"),
        "maillog_file_prefixes": str(root),
        "biff": "no",
        "smtpd_recipient_restrictions": f"check_recipient_access texthash:{root / 'access'}",
        "default_transport": "smtp" if sink_port else "discard:sink",
        "relayhost": f"[127.0.0.1]:{sink_port}" if sink_port else "",
    }
    settings.update(extra)
    return "".join(f"{key} = {value}\n" for key, value in settings.items())


def _postfix(root: Path, command: str) -> None:
    assert POSTFIX is not None
    done = subprocess.run(
        [POSTFIX, "-c", str(root / "conf"), command], capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        log = (root / "maillog").read_text(errors="replace") if (root / "maillog").exists() else ""
        raise RuntimeError(f"postfix {command} failed ({done.returncode}): {done.stderr}\n{log}")


@contextmanager
def private_postfix(
    *, reject: Iterable[str] = (), sink_port: int | None = None, main_cf_extra: dict[str, str] | None = None
) -> Iterator[Postfix]:
    """A running private Postfix. `reject`: recipients its access map refuses at RCPT
    (554 5.7.1 <addr>: Recipient address rejected: Access denied); `sink_port`: where on
    127.0.0.1 it relays mail (else it discards it); `main_cf_extra`: more main.cf settings."""
    if POSTFIX is None or os.geteuid() != 0:
        pytest.skip("needs Debian's postfix package (apt-get install postfix) and root to start it")
    root = Path(tempfile.mkdtemp(prefix="pf-", dir="/tmp"))
    root.chmod(0o755)  # the postfix user reaches its queue through it
    try:
        (root / "conf").mkdir()
        (root / "queue").mkdir(mode=0o755)
        (root / "access").write_text("".join(f"{address} REJECT\n" for address in reject))
        relay = Postfix(root, free_port())
        (root / "conf" / "main.cf").write_text(main_cf(root, sink_port, main_cf_extra or {}))
        (root / "conf" / "master.cf").write_text(MASTER_CF.format(listen=f"127.0.0.1:{relay.port}"))
        _postfix(root, "start")
        watcher = subprocess.Popen(
            ["sh", "-c", WATCHER, "postfix-watcher", str(os.getpid()), str(POSTFIX), str(root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # not killed with the test's process group
        )
        try:
            yield relay
        finally:
            watcher.kill()
            watcher.wait()
            _postfix(root, "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)
